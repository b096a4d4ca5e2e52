#!/usr/bin/env bash
# Builds Corral's guest image into ${CORRAL_CACHE:-<repo>/.cache}/guest/:
#
#   vmlinuz      kernel from Debian's linux-image-cloud-amd64
#   initrd.img   gzip'd newc initramfs: busybox, virtio/power-button modules,
#                guest/initramfs-init as /init
#   base.qcow2   template "base": ext4 root with busybox, guest/init as
#                /sbin/init and the static guest agent /usr/bin/corral-guest
#   base.json    template metadata
#
# Idempotent: each output is rebuilt only when it is missing or older than
# one of its inputs (this script included). Quiet on success.
#
# Environment:
#   CORRAL_CACHE         cache root (default <repo>/.cache)
#   CORRAL_KERNEL_PKG    kernel package to use instead of resolving
#                        linux-image-cloud-amd64 (e.g. linux-image-6.1.0-56-cloud-amd64)
#   CORRAL_BASE_SIZE     size of the base root filesystem (default 256M)
set -euo pipefail

PROG=build-guest
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$REPO/scripts/build-guest.sh"
CACHE=${CORRAL_CACHE:-$REPO/.cache}
OUT="$CACHE/guest"
WORK="$OUT/work"
META_PKG=linux-image-cloud-amd64
BASE_SIZE=${CORRAL_BASE_SIZE:-256M}
BUSYBOX=/bin/busybox
GUEST_INIT="$REPO/guest/init"
INITRAMFS_INIT="$REPO/guest/initramfs-init"
RUST_TARGET=x86_64-unknown-linux-gnu
AGENT_TARGET_DIR="$REPO/target/guest"
AGENT="$AGENT_TARGET_DIR/$RUST_TARGET/release/corral-guest"

# Modules wanted in the guest (dependencies are added automatically). Names
# that are built into the kernel are skipped.
# 8021q lets a test guest send 802.1Q-tagged frames, which the host's filter must drop.
WANT_MODULES=(virtio_pci virtio_blk virtio_net virtio_console button evdev 8021q)
# Kernel config symbol -> module needed to mount the ext4 root, if =m.
EXT4_CONFIG_MODULES=(
	CONFIG_CRC16:crc16
	CONFIG_CRC32:crc32
	CONFIG_CRYPTO_CRC32C:crc32c_generic
	CONFIG_FS_MBCACHE:mbcache
	CONFIG_JBD2:jbd2
	CONFIG_EXT4_FS:ext4
)

die() {
	echo "$PROG: error: $*" >&2
	exit 1
}

# Runs a command, showing its output only if it fails.
quiet() {
	local out
	if ! out=$("$@" 2>&1); then
		[ -n "$out" ] && printf '%s\n' "$out" >&2
		die "command failed: $*"
	fi
}

# fresh OUTPUT INPUT...: true if OUTPUT exists and is newer than every INPUT.
fresh() {
	local out=$1 in
	shift
	[ -e "$out" ] || return 1
	for in in "$@"; do
		[ "$in" -nt "$out" ] && return 1
	done
	return 0
}

for cmd in apt-cache apt-get dpkg-deb cpio gzip mkfs.ext4 qemu-img cargo file flock find sort; do
	command -v "$cmd" >/dev/null 2>&1 || die "required command '$cmd' not found"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (install busybox-static)"
case "$(file -L "$BUSYBOX")" in
*"statically linked"*) ;;
*) die "$BUSYBOX is not statically linked (install busybox-static)" ;;
esac
for f in "$GUEST_INIT" "$INITRAMFS_INIT"; do
	[ -r "$f" ] || die "missing $f"
done

mkdir -p "$OUT" "$WORK/debs" "$WORK/kernel" || die "cannot create $OUT"
exec 9>"$OUT/.lock"
flock 9 || die "cannot lock $OUT/.lock"

TMP=$(mktemp -d "$WORK/tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- 1. kernel ---------------------------------------------------------------

resolve_kernel_pkg() {
	apt-cache depends "$META_PKG" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# apt-cache takes ~1 s, so its answer is cached until the apt lists change.
APT_LISTS=/var/lib/apt/lists
RESOLVED="$WORK/kernel-pkg.resolved"
cached_kernel_pkg() {
	if [ -s "$RESOLVED" ] && fresh "$RESOLVED" "$APT_LISTS"; then
		cat "$RESOLVED"
		return 0
	fi
	local pkg
	pkg=$(resolve_kernel_pkg || true)
	[ -n "$pkg" ] || return 0
	echo "$pkg" >"$RESOLVED"
	echo "$pkg"
}

KPKG=${CORRAL_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
	KPKG=$(cached_kernel_pkg)
fi
if [ -z "$KPKG" ]; then
	# Offline and no package lists: reuse an already extracted kernel.
	KPKG=$(find "$WORK/kernel" -mindepth 1 -maxdepth 1 -type d -name 'linux-image-*' -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
fi
if [ -z "$KPKG" ]; then
	quiet apt-get update
	KPKG=$(cached_kernel_pkg)
fi
[ -n "$KPKG" ] || die "cannot resolve the kernel package behind $META_PKG (apt-cache depends $META_PKG)"

KDIR="$WORK/kernel/$KPKG"
if [ ! -e "$KDIR/.extracted" ]; then
	deb=$(find "$WORK/debs" -maxdepth 1 -name "${KPKG}_*.deb" | sort -V | tail -n1)
	if [ -z "$deb" ]; then
		# apt-get download writes into the current directory.
		if ! (cd "$WORK/debs" && apt-get download "$KPKG") >"$TMP/apt.log" 2>&1; then
			quiet apt-get update
			(cd "$WORK/debs" && apt-get download "$KPKG") >"$TMP/apt.log" 2>&1 || {
				cat "$TMP/apt.log" >&2
				die "cannot download $KPKG"
			}
		fi
		deb=$(find "$WORK/debs" -maxdepth 1 -name "${KPKG}_*.deb" | sort -V | tail -n1)
		[ -n "$deb" ] || die "apt-get download $KPKG produced no .deb in $WORK/debs"
	fi
	rm -rf "$KDIR.tmp"
	quiet dpkg-deb -x "$deb" "$KDIR.tmp"
	rm -rf "$KDIR"
	mv "$KDIR.tmp" "$KDIR"
	touch "$KDIR/.extracted"
fi

# bookworm ships modules in /lib/modules; merged-/usr packages in /usr/lib/modules.
MODROOT=
for d in "$KDIR/lib/modules" "$KDIR/usr/lib/modules"; do
	if [ -d "$d" ]; then
		MODROOT=$d
		break
	fi
done
[ -n "$MODROOT" ] || die "no lib/modules in $KPKG"
KVER=$(find "$MODROOT" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n1)
[ -n "$KVER" ] || die "no kernel version directory under $MODROOT"
KMODDIR="$MODROOT/$KVER"
VMLINUZ_SRC="$KDIR/boot/vmlinuz-$KVER"
KCONFIG="$KDIR/boot/config-$KVER"
[ -f "$VMLINUZ_SRC" ] || die "missing $VMLINUZ_SRC in $KPKG"
[ -f "$KCONFIG" ] || die "missing $KCONFIG in $KPKG"

# The .deb carries no modules.dep (its postinst runs depmod); generate one.
if [ ! -s "$KMODDIR/modules.dep" ]; then
	quiet "$BUSYBOX" depmod -b "$KDIR" "$KVER"
	[ -s "$KMODDIR/modules.dep" ] || die "busybox depmod produced no modules.dep for $KVER"
fi

# Switching kernels invalidates everything built from the old one.
if [ "$(cat "$OUT/.kernel-pkg" 2>/dev/null || true)" != "$KPKG" ]; then
	rm -f "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/base.qcow2" "$OUT/base.json"
	echo "$KPKG" >"$OUT/.kernel-pkg"
fi

if ! fresh "$OUT/vmlinuz" "$KDIR/.extracted"; then
	cp "$VMLINUZ_SRC" "$TMP/vmlinuz"
	mv "$TMP/vmlinuz" "$OUT/vmlinuz"
fi

# --- 2. module list in load order --------------------------------------------

declare -A DEPS=() PATH_OF=() SEEN=()
while IFS= read -r line; do
	mod=${line%%:*}
	name=${mod##*/}
	name=${name%%.ko*}
	name=${name//-/_}
	PATH_OF[$name]=$mod
	DEPS[$name]=${line#*:}
done <"$KMODDIR/modules.dep"

builtin() {
	# modules.builtin lists e.g. kernel/fs/ext4/ext4.ko
	sed -e 's#.*/##' -e 's/\.ko.*$//' -e 's/-/_/g' "$KMODDIR/modules.builtin" | grep -x "$1" >/dev/null
}

LOAD_ORDER=()
# Depth-first: every dependency is emitted before the module needing it.
# modules.dep lists the most basic dependencies last, so walk it backwards
# (gives the natural virtio_ring, virtio, ..., virtio_pci order).
visit() {
	local name=$1 dep dname i
	local -a deps
	[ -n "${SEEN[$name]:-}" ] && return 0
	SEEN[$name]=1
	read -r -a deps <<<"${DEPS[$name]}"
	for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
		dep=${deps[i]}
		dname=${dep##*/}
		dname=${dname%%.ko*}
		visit "${dname//-/_}"
	done
	LOAD_ORDER+=("${PATH_OF[$name]}")
}

wanted=("${WANT_MODULES[@]}")
for pair in "${EXT4_CONFIG_MODULES[@]}"; do
	if grep -qx "${pair%%:*}=m" "$KCONFIG"; then
		wanted+=("${pair#*:}")
	fi
done
for name in "${wanted[@]}"; do
	if [ -n "${PATH_OF[$name]:-}" ]; then
		visit "$name"
	elif ! builtin "$name"; then
		die "kernel $KVER has neither a module nor a built-in driver named $name"
	fi
done

# stage_modules DESTROOT: copies LOAD_ORDER modules to DESTROOT/lib/modules/KVER,
# decompressing .ko.xz / .ko.zst (busybox insmod cannot load those).
stage_modules() {
	local dest=$1/lib/modules/$KVER rel src out
	for rel in "${LOAD_ORDER[@]}"; do
		src="$KMODDIR/$rel"
		out="$dest/${rel%.ko*}.ko"
		mkdir -p "${out%/*}"
		case "$rel" in
		*.ko) cp "$src" "$out" ;;
		*.ko.xz) xz -dc "$src" >"$out" || die "cannot decompress $src" ;;
		*.ko.zst) zstd -qdc "$src" >"$out" || die "cannot decompress $src" ;;
		*.ko.gz) gzip -dc "$src" >"$out" || die "cannot decompress $src" ;;
		*) die "unexpected module file $rel" ;;
		esac
	done
	cp "$KMODDIR/modules.builtin" "$KMODDIR/modules.order" "$dest/" 2>/dev/null || true
}

# install_busybox ROOT: busybox plus one symlink per applet.
install_busybox() {
	local root=$1 applet
	mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
	cp "$BUSYBOX" "$root/bin/busybox"
	while IFS= read -r applet; do
		case "$applet" in
		*/*) ;;
		*) continue ;; # top-level "linuxrc"
		esac
		[ "$applet" = bin/busybox ] && continue
		ln -sf /bin/busybox "$root/$applet"
	done < <("$BUSYBOX" --list-full)
}

# --- 3. initramfs --------------------------------------------------------------

if ! fresh "$OUT/initrd.img" "$SCRIPT" "$INITRAMFS_INIT" "$BUSYBOX" "$KDIR/.extracted" "$KMODDIR/modules.dep"; then
	R="$TMP/initramfs"
	mkdir -p "$R"/{dev,proc,sys,run,tmp,newroot,etc,lib/modules}
	install_busybox "$R"
	install -m 0755 "$INITRAMFS_INIT" "$R/init"
	stage_modules "$R"
	quiet "$BUSYBOX" depmod -b "$R" "$KVER"
	for rel in "${LOAD_ORDER[@]}"; do
		echo "/lib/modules/$KVER/${rel%.ko*}.ko"
	done >"$R/etc/corral-modules"
	# Lets the kernel open the console before /init runs (needs root; /init
	# copes without it).
	mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
	(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) |
		gzip -9n >"$TMP/initrd.img" || die "cannot create the initramfs archive"
	mv "$TMP/initrd.img" "$OUT/initrd.img"
fi

# --- 4. guest agent --------------------------------------------------------------

# Cargo's own incremental build makes this a ~0.2 s no-op when nothing changed.
# --target keeps RUSTFLAGS (crt-static) away from build scripts and proc-macros.
if ! out=$(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build --quiet --release -p corral-guest --target "$RUST_TARGET" \
	--target-dir "$AGENT_TARGET_DIR" 2>&1); then
	printf '%s\n' "$out" >&2
	die "building the guest agent (cargo build -p corral-guest --target $RUST_TARGET) failed, see above"
fi
[ -x "$AGENT" ] || die "guest agent binary $AGENT missing after build"
case "$(file -L "$AGENT")" in
*"statically linked"* | *"static-pie linked"*) ;;
*) die "guest agent $AGENT is not statically linked: $(file -L "$AGENT")" ;;
esac

# --- 5. base template --------------------------------------------------------------

if ! fresh "$OUT/base.qcow2" "$SCRIPT" "$GUEST_INIT" "$AGENT" "$BUSYBOX" "$KDIR/.extracted" "$KMODDIR/modules.dep"; then
	R="$TMP/rootfs"
	mkdir -p "$R"/{dev,proc,sys,run,tmp,root,etc,mnt,var/log,lib/modules}
	chmod 1777 "$R/tmp"
	chmod 0700 "$R/root"
	install_busybox "$R"
	install -m 0755 "$GUEST_INIT" "$R/sbin/init"
	install -m 0755 "$AGENT" "$R/usr/bin/corral-guest"
	cat >"$R/etc/passwd" <<-'EOF'
		root:x:0:0:root:/root:/bin/sh
		nobody:x:65534:65534:nobody:/nonexistent:/bin/false
	EOF
	cat >"$R/etc/group" <<-'EOF'
		root:x:0:
		tty:x:5:
		nogroup:x:65534:
	EOF
	cat >"$R/etc/shadow" <<-'EOF'
		root:*:19000:0:99999:7:::
		nobody:*:19000:0:99999:7:::
	EOF
	chmod 0600 "$R/etc/shadow"
	printf '127.0.0.1\tlocalhost\n' >"$R/etc/hosts"
	printf 'corral\n' >"$R/etc/hostname"
	printf 'Corral guest (Debian busybox, kernel %s)\n' "$KVER" >"$R/etc/issue"
	# busybox acpid runs /etc/acpi/PWRF/00000080 on a power-button press.
	mkdir -p "$R/etc/acpi/PWRF"
	cat >"$R/etc/acpi/PWRF/00000080" <<-'EOF'
		#!/bin/sh
		# ACPI power button (QMP system_powerdown): graceful power-off.
		echo "corral-guest: power button pressed, powering off" >/dev/console
		sync
		mount -o remount,ro / 2>/dev/null
		poweroff -f
	EOF
	chmod 0755 "$R/etc/acpi/PWRF/00000080"
	stage_modules "$R"
	quiet "$BUSYBOX" depmod -b "$R" "$KVER"
	quiet mkfs.ext4 -q -F -d "$R" -L corral-root "$TMP/base.raw" "$BASE_SIZE"
	quiet qemu-img convert -f raw -O qcow2 "$TMP/base.raw" "$TMP/base.qcow2"
	rm -f "$TMP/base.raw"
	mv "$TMP/base.qcow2" "$OUT/base.qcow2"
fi

# --- 6. metadata ---------------------------------------------------------------------

if ! fresh "$OUT/base.json" "$OUT/base.qcow2"; then
	size=$(qemu-img info --output=json "$OUT/base.qcow2" | sed -n 's/^ *"virtual-size": *\([0-9][0-9]*\).*/\1/p')
	[ -n "$size" ] || die "cannot read the virtual size of $OUT/base.qcow2"
	cat >"$TMP/base.json" <<-EOF
		{"name":"base","kernel":"vmlinuz","initrd":"initrd.img","disk":"base.qcow2","kernel_version":"$KVER","os":"Debian busybox","size_bytes":$size}
	EOF
	mv "$TMP/base.json" "$OUT/base.json"
fi
