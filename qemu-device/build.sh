#!/usr/bin/env bash
# Builds qemu-system-x86_64 with dmagate's device from Debian's QEMU source.
#
#   qemu-device/build.sh [--sanitize] OUTPUT_BINARY
#
# --sanitize builds the same QEMU with AddressSanitizer and UBSan
# (configure --enable-asan --enable-ubsan), for `make device-test-asan`.
# The flags are part of the tree key, so the variant has a tree and binary
# cache of its own and never disturbs the plain build's incremental state.
#
# Inputs: qemu.lock (tarball and its sha256), patches/ (applied once to a
# fresh tree), overlay/ and the shared register header
# guest-driver/include/dmagate_hw.h (copied into the tree on every run;
# files that did not change keep their mtime, so ninja rebuilds only what
# did).
#
# Cache ($DMAGATE_CACHE, default ~/.cache/dmagate), shared by every clone:
#   downloads/              the verified tarball
#   qemu/tree-<T>/          unpacked, patched source and its build dir; T
#                           hashes the tarball, patches and configure flags
#   qemu/bin-<B>/           finished binaries; B hashes T and overlay/, so
#                           a clone whose inputs were built before copies
#                           the result without running ninja at all
set -euo pipefail

die() { echo "qemu: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
shared_header=$here/../guest-driver/include/dmagate_hw.h
sanitize=0
if [ "${1:-}" = --sanitize ]; then
	sanitize=1
	shift
fi
[ $# = 1 ] || die "usage: build.sh [--sanitize] OUTPUT_BINARY"
out=$1
cache=${DMAGATE_CACHE:-$HOME/.cache/dmagate}
jobs=${JOBS:-$(nproc)}

# shellcheck source=qemu.lock
. "$here/qemu.lock"

configure_flags=(
	--target-list=x86_64-softmmu
	--without-default-features --without-default-devices
	--with-devices-x86_64=dmagate
	--enable-tcg --enable-kvm --enable-slirp
	--disable-docs --disable-rust --disable-user --disable-tools
	--disable-install-blobs
)
sanitizers_json='[]' # recorded in build-info.json
if [ "$sanitize" = 1 ]; then
	# Frame pointers let ASan's fast unwinder record whole allocation and
	# free stacks (and LeakSanitizer's), which -O2 would otherwise cut short.
	configure_flags+=(--enable-asan --enable-ubsan --extra-cflags=-fno-omit-frame-pointer)
	sanitizers_json='["address", "undefined"]'
fi

hash_of() { sha256sum | cut -c1-16; }

tree_key=$({
	echo "$QEMU_TARBALL_SHA256 $MESON_VERSION $PYCOTAP_VERSION"
	echo "${configure_flags[*]}"
	cat "$here"/patches/*.patch
} | hash_of)
bin_key=$({
	echo "$tree_key"
	(cd "$here/overlay" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
	sha256sum <"$shared_header"
} | hash_of)

tree=$cache/qemu/tree-$tree_key
bindir=$cache/qemu/bin-$bin_key

install_result() {
	mkdir -p "$(dirname "$out")"
	# A hard link when the cache shares the clone's filesystem, else a copy.
	ln -f "$bindir/qemu-system-x86_64" "$out" 2>/dev/null ||
		cp -f "$bindir/qemu-system-x86_64" "$out"
	cp -f "$bindir/build-info.json" "$(dirname "$out")/build-info.json"
}

mkdir -p "$cache/qemu" "$cache/downloads"
exec 9>"$cache/qemu/lock"
flock 9

if [ -x "$bindir/qemu-system-x86_64" ]; then
	install_result
	echo "qemu: cached build $bin_key"
	exit 0
fi

tarball=$cache/downloads/$QEMU_TARBALL
verify() { echo "$QEMU_TARBALL_SHA256  $tarball" | sha256sum -c --status; }
if ! { [ -f "$tarball" ] && verify; }; then
	command -v apt-get >/dev/null || die "apt-get not found: run make deps on Debian 12"
	echo "qemu: fetching $QEMU_DEB_SOURCE=$QEMU_DEB_VERSION source"
	rm -f "$tarball"
	# The archive lacks this version's .dsc, so apt-get exits non-zero after
	# the tarball has arrived; the hash below is the real check.
	(cd "$cache/downloads" &&
		apt-get source --download-only -qq "$QEMU_DEB_SOURCE=$QEMU_DEB_VERSION" \
			>/dev/null 2>&1) || true
	[ -f "$tarball" ] ||
		die "could not download $QEMU_TARBALL: run make deps (it adds the deb-src entries)"
	verify || die "$QEMU_TARBALL does not match the sha256 in qemu-device/qemu.lock"
fi

if [ ! -f "$tree/.configured" ]; then
	echo "qemu: unpacking and configuring in $tree"
	rm -rf "$tree"
	mkdir -p "$tree"
	tar -xJf "$tarball" -C "$tree" --strip-components=1 --one-top-level=src
	for p in "$here"/patches/*.patch; do
		patch -d "$tree/src" -p1 -s <"$p" || die "patch $(basename "$p") does not apply"
	done
	python3 -m venv "$tree/tools" || die "python3 venv missing: run make deps"
	"$tree/tools/bin/pip" install -q "meson==$MESON_VERSION" "pycotap==$PYCOTAP_VERSION" ||
		die "pip could not install meson and pycotap (is PyPI reachable?)"
fi

# The overlay goes in before configure (it carries the device config file).
copy_if_changed() {
	mkdir -p "$(dirname "$2")"
	cmp -s "$1" "$2" || cp "$1" "$2"
}
(cd "$here/overlay" && find . -type f) | while read -r f; do
	copy_if_changed "$here/overlay/$f" "$tree/src/$f"
done
copy_if_changed "$shared_header" "$tree/src/hw/dmagate/dmagate_hw.h"

if [ ! -f "$tree/.configured" ]; then
	mkdir -p "$tree/build"
	(cd "$tree/build" && "$tree/src/configure" --python="$tree/tools/bin/python3" \
		"${configure_flags[@]}" >configure.log 2>&1) ||
		die "configure failed; see $tree/build/configure.log"
	touch "$tree/.configured"
fi

echo "qemu: building (ninja -j$jobs)"
ninja -C "$tree/build" -j "$jobs" qemu-system-x86_64 >"$tree/build/ninja.log" 2>&1 || {
	tail -30 "$tree/build/ninja.log" >&2
	die "build failed; full log: $tree/build/ninja.log"
}

tmp=$(mktemp -d "$cache/qemu/.bin-XXXXXX")
cp "$tree/build/qemu-system-x86_64" "$tmp/"
cat >"$tmp/build-info.json" <<JSON
{
  "source_package": "$QEMU_DEB_SOURCE=$QEMU_DEB_VERSION",
  "tarball": "$QEMU_TARBALL",
  "tarball_sha256": "$QEMU_TARBALL_SHA256",
  "tree_key": "$tree_key",
  "build_key": "$bin_key",
  "sanitizers": $sanitizers_json,
  "binary_sha256": "$(sha256sum "$tmp/qemu-system-x86_64" | cut -d' ' -f1)"
}
JSON
rm -rf "$bindir"
mv "$tmp" "$bindir"
install_result
echo "qemu: built $bin_key"
