#!/usr/bin/env bash
# Installs the Debian packages dmagate builds and runs with. Idempotent: a
# second run with everything present touches nothing and takes well under a
# second. The apt source entries it needs (deb-src, bookworm-backports) live
# in a sources file of its own so the system's own entries are never edited.
set -euo pipefail

die() { echo "deps: $*" >&2; exit 1; }

readonly SOURCES=/etc/apt/sources.list.d/dmagate.sources
readonly PACKAGES=(
	# QEMU from source
	build-essential ninja-build pkg-config flex bison
	libglib2.0-dev libpixman-1-dev libslirp-dev libfdt-dev zlib1g-dev
	xz-utils
	# make qemu-asan: gcc 12's ASan and UBSan runtimes (build-essential brings
	# them through libgcc-12-dev; named so the dependency is not an accident)
	libasan8 libubsan1
	# firmware and option ROMs QEMU's +ds tarball does not carry
	qemu-system-data seabios
	# guest image
	busybox-static dropbear-bin cpio kmod
	# debugging a guest through QEMU's gdb stub (dmagate boot --gdb)
	gdb
	# kernel modules against Debian's headers; static guest tools
	libc6-dev libelf-dev bc dwarves zstd lz4
	# KERNEL=7.3: its modules build in a Debian 13 build root (images/trixie_root.py)
	debootstrap
	# KERNEL=debug: its source patches (images/kernel-debug-patches)
	patch
)

[ -r /etc/debian_version ] || die "needs Debian 12 (bookworm); this is not Debian"
case "$(cat /etc/debian_version)" in
12.*|bookworm*) ;;
*) echo "deps: warning: tested on Debian 12, this is $(cat /etc/debian_version)" >&2 ;;
esac

# Prints "<main URI> <security URI>" of the configured bookworm archive, read
# from deb822 .sources files or one-line sources.list entries.
apt_uris() {
	local main="" security=""
	while read -r uri suite; do
		case "$suite" in
		bookworm-security*) [ -n "$security" ] || security=$uri ;;
		bookworm) [ -n "$main" ] || main=$uri ;;
		esac
	done < <(
		awk '/^URIs:/ {u=$2} /^Suites:/ {for (i = 2; i <= NF; i++) print u, $i}
		     /^$/ {u=""}' /etc/apt/sources.list.d/*.sources 2>/dev/null
		awk '$1 == "deb" {i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++;
		     if ($2 ~ /^\[/) i++; print $i, $(i + 1)}' \
			/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
	)
	[ -n "$main" ] || return 1
	[ -n "$security" ] || security=${main%/debian}/debian-security
	echo "$main $security"
}

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
		missing+=("$p")
done

need_sources=0
[ -f "$SOURCES" ] || need_sources=1
if [ "$need_sources" = 0 ] && [ "${#missing[@]}" = 0 ]; then
	exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || die "run as root, or install sudo: missing ${missing[*]}"
	sudo=(sudo)
fi

if [ "$need_sources" = 1 ]; then
	# Reuse the mirrors this machine is already configured with, so the
	# project never names an archive host of its own.
	read -r main_uri security_uri < <(apt_uris) ||
		die "no Debian bookworm entry in /etc/apt/sources.list{,.d}; add one, then re-run make deps"
	echo "deps: adding $SOURCES (deb-src, bookworm-backports)"
	"${sudo[@]}" tee "$SOURCES" >/dev/null <<SRC
# Added by dmagate (scripts/deps.sh): Debian sources for QEMU and the kernel,
# and bookworm-backports for QEMU 10.
Types: deb deb-src
URIs: $main_uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $main_uri
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $security_uri
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

echo "deps: apt-get update"
"${sudo[@]}" apt-get update -qq >/dev/null ||
	die "apt-get update failed; check the network path to deb.debian.org and $SOURCES"
if [ "${#missing[@]}" != 0 ]; then
	echo "deps: installing ${missing[*]}"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "${missing[@]}" >/dev/null ||
		die "apt-get install failed for: ${missing[*]} (run it by hand to see why)"
fi
