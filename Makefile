# dmagate: `make demo` shows the bench working, `make test` proves it.
# Every target builds only what is stale; `make help` lists them.

# A flavour (6.12, 6.1, 7.3, debug) or the path of a built kernel tree.
KERNEL ?= 6.12
# Kernel flavours `make test` runs the VM suite on: Debian's 6.12, 6.1 and
# 7.3 cloud kernels, and 6.12 built with KASAN, lockdep, DMA-API debug,
# kmemleak and fault injection (debug: ~6 min to build cold, then cached).
TEST_KERNELS ?= 6.12 6.1 7.3 debug
# How many of make test's runs (VM suites, device tests, examples) go side by side.
# A stock kernel's suite keeps a quarter to half a core busy (its guests
# mostly wait on the device's timed faults and latencies), a debug one about
# 0.7. Five at once on two cores was fastest here, but loaded the host so
# that a 7.3 guest once oopsed in early boot (TCG); one more than the cores
# keeps the load near what every suite has passed under.
TEST_JOBS ?= $(shell echo $$(( $$(nproc) + 1 )))
PYTEST_ARGS ?=

VENV    := .venv
PY      := $(VENV)/bin/python
DMAGATE := $(VENV)/bin/dmagate
BUILD   := build
QEMU    := $(BUILD)/qemu/qemu-system-x86_64
# The same QEMU built with AddressSanitizer and UBSan, for device-test-asan.
QEMU_ASAN := $(BUILD)/qemu-asan/qemu-system-x86_64
# KERNEL=/path/to/linux (bring your own kernel): the harness and the image
# build agree on its image directory (dmagate.flavours), and it is rebuilt
# on every `make image`, since make cannot see the tree's own changes.
KERNEL_TREE = $(if $(findstring /,$(KERNEL)),$(abspath $(KERNEL)))
KERNEL_ARG  = $(or $(KERNEL_TREE),$(KERNEL))
IMAGE       = $(if $(KERNEL_TREE),,$(BUILD)/image-$(KERNEL))
IMAGE_OUT   = $(if $(IMAGE),--out $(IMAGE))

QEMU_INPUTS   := $(shell find qemu-device -type f -not -name README.md 2>/dev/null) \
                 guest-driver/include/dmagate_hw.h
DRIVER_INPUTS := $(shell find guest-driver -type f -not -name README.md 2>/dev/null)
IMAGE_INPUTS  := $(wildcard images/*.py) images/init images/kernel-debug.config \
                 $(DRIVER_INPUTS)

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: KERNEL=$(KERNEL) (6.12, 6.1, 7.3, debug or a kernel tree's path)," \
		"TEST_KERNELS=\"$(TEST_KERNELS)\""

deps: ## Debian packages and the project venv (.venv)
	@bash scripts/deps.sh
	@$(MAKE) --no-print-directory -s $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { echo "deps: python3 not found: apt-get install python3-venv"; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV) || { echo "deps: cannot make a venv: apt-get install python3-venv"; exit 1; }
	@echo "deps: pip install -e .[dev] into $(VENV)"
	@$(PY) -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import dmagate, paramiko, pexpect, qemu.qmp, pytest' || { echo "deps: pip install into $(VENV) failed"; exit 1; }
	@touch $@

qemu: deps $(QEMU) ## QEMU from Debian's source with the device built in

# The binary is stamped with the time its build started, so an input edited
# during the build leaves it stale for the next make.
$(QEMU): $(QEMU_INPUTS) | deps
	@start=$$(date +%s); qemu-device/build.sh $(QEMU) && touch -d @$$start $(QEMU)

qemu-asan: deps $(QEMU_ASAN) ## the same QEMU built with ASan and UBSan, for device-test-asan

$(QEMU_ASAN): $(QEMU_INPUTS) | deps
	@start=$$(date +%s); qemu-device/build.sh --sanitize $(QEMU_ASAN) && \
		touch -d @$$start $(QEMU_ASAN)

driver: deps ## the guest modules and tools, against KERNEL's headers
	@$(PY) images/build_image.py --flavour $(KERNEL_ARG) $(IMAGE_OUT) --driver-only

image: qemu $(if $(KERNEL_TREE),tree-image,$(IMAGE)/manifest.json) ## the bootable guest for KERNEL

tree-image: $(QEMU) | deps
	@$(PY) images/build_image.py --flavour $(KERNEL_TREE) \
		--qemu-build-info $(BUILD)/qemu/build-info.json

$(BUILD)/image-%/manifest.json: $(IMAGE_INPUTS) $(QEMU) | deps
	@$(PY) images/build_image.py --flavour $* --out $(BUILD)/image-$* \
		--qemu-build-info $(BUILD)/qemu/build-info.json

demo: image ## boot the guest, show the device, print boot time and manifest
	@$(DMAGATE) --kernel $(KERNEL_ARG) demo

shell: image ## boot and attach to the guest's serial console (Ctrl-] quits)
	@$(DMAGATE) --kernel $(KERNEL_ARG) boot

lint: deps ## ruff and mypy over the Python
	@$(VENV)/bin/ruff check harness images tests examples
	@$(VENV)/bin/mypy

unit-test: deps ## host-only tests (no QEMU)
	@$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# The test runs, one definition each for their own targets and make test's.
device_pytest = $(VENV)/bin/pytest tests/device $(PYTEST_ARGS) \
	--junitxml=$(BUILD)/test-results/device.xml
device_asan_pytest = env DMAGATE_QEMU=$(abspath $(QEMU_ASAN)) \
	$(VENV)/bin/pytest tests/device $(PYTEST_ARGS) \
	--junitxml=$(BUILD)/test-results/device-asan.xml
# vm_pytest KERNEL[,TESTS[,RESULTS NAME]]: the VM tests (all of tests/vm but
# the examples, by default) on KERNEL.
vm_pytest = $(VENV)/bin/pytest $(or $(2),tests/vm) --kernel $(1) $(PYTEST_ARGS) \
	--ignore=tests/vm/test_examples.py \
	--junitxml=$(BUILD)/test-results/$(or $(3),vm-$(notdir $(1))).xml
examples_pytest = $(VENV)/bin/pytest tests/vm/test_examples.py --kernel $(1) $(PYTEST_ARGS) -s \
	--junitxml=$(BUILD)/test-results/examples-$(notdir $(1)).xml

device-test: qemu ## the device model through qtest (no guest OS)
	@$(device_pytest)

device-test-asan: qemu-asan ## the device tests on the sanitizer QEMU; a report fails its test
	@$(device_asan_pytest)

FUZZ_RUNS ?= 10
fuzz: qemu-asan ## FUZZ_RUNS fuzz runs with fresh random seeds on the ASan/UBSan QEMU; stops at the first finding
	@for run in $$(seq $(FUZZ_RUNS)); do \
		echo "== fuzz run $$run of $(FUZZ_RUNS)"; \
		env -u CI DMAGATE_QEMU=$(abspath $(QEMU_ASAN)) $(VENV)/bin/pytest \
			tests/device/test_fuzz.py -q -s -p no:cacheprovider $(PYTEST_ARGS) || exit 1; \
	done

vm-test: image ## the VM tests on KERNEL
	@$(call vm_pytest,$(KERNEL_ARG))

examples: image ## run every script in examples/ against a VM of its own (KERNEL)
	@$(call examples_pytest,$(KERNEL_ARG))

test: qemu qemu-asan ## everything: lint, unit, device (plain, ASan/UBSan), VM tests (TEST_KERNELS), examples
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) -o deps run/lint run/unit $(TEST_IMAGES)
	@$(MAKE) --no-print-directory -k -j$(TEST_JOBS) -o deps $(TEST_RUNS)

# make test: lint, the unit tests and the images side by side, then the
# runs, TEST_JOBS at a time, the longest first (make starts them in this
# order when none has anything left to build: with images built as the
# runs' prerequisites, it gave the runs that need none the first slots),
# every one to its end even when another fails (-k). deps ran before: -o
# deps keeps the runs' own makes from running it again. Each prints its
# output whole when it ends (scripts/run-logged.sh) and leaves it in
# build/test-results/<run>.log.
# The debug suite (about 60 % of the VM suites' CPU time) runs in two halves
# of about equal length; the fault matrix and the rogue device tests, whose
# faults fire inside timed windows of the device, come last in their half.
DEBUG_HALF = tests/vm/test_driver_protocol.py tests/vm/test_driver_stress.py \
             tests/vm/test_driver_alloc_failures.py tests/vm/test_rogue_device.py \
             tests/vm/test_fault_matrix.py
VM_KERNELS = $(filter-out debug,$(TEST_KERNELS))
VM_RUNS    = $(if $(filter debug,$(TEST_KERNELS)),run/vm-debug-2 run/vm-debug-1) \
             $(addprefix run/vm-,$(VM_KERNELS))
TEST_RUNS  = $(VM_RUNS) run/device-asan run/device run/examples
RUN_LOGGED = scripts/run-logged.sh
TEST_IMAGES = $(foreach k,$(TEST_KERNELS),$(BUILD)/image-$(k)/manifest.json)
run/lint:
	@$(RUN_LOGGED) lint $(BUILD)/test-results/lint.log $(MAKE) --no-print-directory -o deps lint
run/unit:
	@$(RUN_LOGGED) unit-test $(BUILD)/test-results/unit.log \
		$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS) --junitxml=$(BUILD)/test-results/unit.xml
$(addprefix run/vm-,$(VM_KERNELS)): run/vm-%:
	@$(RUN_LOGGED) "vm-test KERNEL=$*" $(BUILD)/test-results/vm-$*.log \
		$(call vm_pytest,$*)
run/vm-debug-1:
	@$(RUN_LOGGED) "vm-test KERNEL=debug (1 of 2)" $(BUILD)/test-results/vm-debug-1.log \
		$(call vm_pytest,debug,$(DEBUG_HALF),vm-debug-1)
run/vm-debug-2:
	@$(RUN_LOGGED) "vm-test KERNEL=debug (2 of 2)" $(BUILD)/test-results/vm-debug-2.log \
		$(call vm_pytest,debug,tests/vm $(addprefix --ignore=,$(DEBUG_HALF)),vm-debug-2)
# The plain QEMU's run leaves the fuzz to the ASan/UBSan one: in CI both
# would play the same seed (the tree's), and a sanitizer sees all a plain
# build's crash would (`make fuzz` plays fresh seeds).
run/device:
	@$(RUN_LOGGED) device-test $(BUILD)/test-results/device.log $(device_pytest) \
		--deselect tests/device/test_fuzz.py::test_fuzz
run/examples:
	@$(RUN_LOGGED) "examples KERNEL=$(firstword $(TEST_KERNELS))" \
		$(BUILD)/test-results/examples.log $(call examples_pytest,$(firstword $(TEST_KERNELS)))
run/device-asan:
	@$(RUN_LOGGED) device-test-asan $(BUILD)/test-results/device-asan.log \
		$(device_asan_pytest)
.PHONY: $(TEST_RUNS) run/lint run/unit

bench: image ## boot vs its floor, device vs host memcpy/CRC-32, the cycle vs no protection and mprotect -> build/bench/ (JSON, PNG)
	@$(DMAGATE) --kernel $(KERNEL_ARG) bench --out $(BUILD)/bench

clean: ## remove build/ (the download and QEMU caches in ~/.cache/dmagate stay)
	rm -rf $(BUILD)

distclean: clean ## also remove .venv and ~/.cache/dmagate
	rm -rf $(VENV) $${DMAGATE_CACHE:-$$HOME/.cache/dmagate}

.PHONY: help deps qemu qemu-asan driver image tree-image demo shell lint unit-test device-test \
	device-test-asan fuzz vm-test examples test bench \
	clean distclean
