#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) cloud image from Debian's packages with mmdebstrap and installs
# it as template "debian12" into ${CORRAL_CACHE:-<repo>/.cache}/guest/:
#
#   debian12.qcow2   2 GiB GPT disk (zstd-compressed qcow2) that boots under BIOS (GRUB in the
#                    MBR and a BIOS boot partition) and UEFI (standalone GRUB at the removable
#                    path EFI/BOOT/BOOTX64.EFI), root ext4 last so cloud-init can grow it;
#                    cloud-init (NoCloud), openssh-server, qemu-guest-agent, serial getty
#   debian12.json    template metadata
#
# The image is built once per content of its inputs (this script and guest/debian/, if present)
# into ${CORRAL_IMAGE_CACHE:-/var/cache/corral/images}/debian12-<hash>/, outside the repo so
# that every clone on the machine shares it; the newest two builds are kept. The template
# directory gets a hard link to it (a copy across filesystems). Idempotent, quiet on success.
#
# Needs root (mmdebstrap's root mode) and Debian's mirror. No loop device, mount or vfat
# module: the root filesystem is made with mkfs.ext4 -d and the ESP with mkfs.vfat + mtools.
#
# Environment:
#   CORRAL_CACHE                    cache root (default <repo>/.cache)
#   CORRAL_IMAGE_CACHE              built images (default /var/cache/corral/images)
#   CORRAL_DEBIAN_MIRROR            Debian mirror (default http://deb.debian.org/debian)
#   CORRAL_DEBIAN_SECURITY_MIRROR   security mirror (default http://deb.debian.org/debian-security)
set -euo pipefail

PROG=build-debian
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$REPO/scripts/build-debian.sh"
EXTRA="$REPO/guest/debian"
CACHE=${CORRAL_CACHE:-$REPO/.cache}
OUT="$CACHE/guest"
IMAGES=${CORRAL_IMAGE_CACHE:-/var/cache/corral/images}
MIRROR=${CORRAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${CORRAL_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
NAME=debian12
SUITE=bookworm
OS="Debian 12 (bookworm)"
KEEP=2 # image builds kept in $IMAGES

PACKAGES=(
	systemd-sysv udev dbus libpam-systemd
	linux-image-cloud-amd64 zstd
	grub-pc-bin grub-efi-amd64-bin
	cloud-init cloud-guest-utils fdisk e2fsprogs
	openssh-server openssh-sftp-server
	qemu-guest-agent
	ifupdown isc-dhcp-client resolvconf
	sudo iproute2 iputils-ping netbase procps
)

# Disk layout, in 512-byte sectors: BIOS boot partition (GRUB's core.img), EFI system
# partition, then the root filesystem up to the end of the disk so growpart can extend it.
DISK_SIZE=$((2 * 1024 * 1024 * 1024))
BIOS_START=2048
BIOS_SECTORS=2048 # 1 MiB
ESP_START=4096
ESP_SECTORS=131072 # 64 MiB
ROOT_START=135168

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

need_commands() {
	local cmd
	for cmd in "$@"; do
		command -v "$cmd" >/dev/null 2>&1 || die "required command '$cmd' not found (run scripts/setup.sh)"
	done
}
need_commands qemu-img jq sha256sum flock

inputs_hash() {
	{
		sha256sum <"$SCRIPT"
		if [ -d "$EXTRA" ]; then
			(cd "$EXTRA" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
		fi
	} | sha256sum | cut -c1-16
}
KEY="$NAME-$(inputs_hash)"
DIR="$IMAGES/$KEY"

mkdir -p "$IMAGES" "$OUT" || die "cannot create $IMAGES or $OUT"
# Lock order: the shared image cache, then this clone's template directory.
exec 8>"$IMAGES/.lock"
flock 8 || die "cannot lock $IMAGES/.lock"
exec 9>"$OUT/.lock"
flock 9 || die "cannot lock $OUT/.lock"

# remove DIR: deletes a build directory, first unmounting whatever a killed mmdebstrap left
# mounted below it (so rm never reaches into the host's /dev or /proc).
remove() {
	local d m
	[ -e "$1" ] || return 0
	d=$(realpath "$1")
	while IFS= read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v d="$d/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	rm -rf --one-file-system "$d"
}

TMP=
cleanup() {
	[ -z "$TMP" ] || remove "$TMP"
	rm -f "$OUT/.$NAME.qcow2.tmp" "$OUT/.$NAME.json.tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. build the image (once per input hash) --------------------------------------------

build() {
	local R="$TMP/root" D="$TMP/out" raw="$TMP/disk.raw" esp="$TMP/esp.img" uuid kver kernels
	local debs="$IMAGES/debs"
	mkdir -p "$D" "$debs"

	# Downloaded .debs are kept in $IMAGES/debs between builds (replaced by the set this
	# build used), so a rebuild only fetches what changed.
	# shellcheck disable=SC2016 # "$1" (the chroot) is for the hooks' shell
	quiet mmdebstrap --mode=root --variant=apt --format=directory \
		--skip=essential/unlink \
		--include="$(IFS=,; echo "${PACKAGES[*]}")" \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-include=/usr/share/locale/locale.alias' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
		--setup-hook="sync-in '$debs' /var/cache/apt/archives/" \
		--customize-hook="mkdir -p '$TMP/debs'" \
		--customize-hook="sync-out /var/cache/apt/archives '$TMP/debs'" \
		--customize-hook='chroot "$1" systemctl disable --quiet e2scrub_reap.service e2scrub_all.timer' \
		--customize-hook='chroot "$1" systemctl mask --quiet e2scrub_reap.service e2scrub_all.timer' \
		"$SUITE" "$R" \
		"deb $MIRROR $SUITE main" \
		"deb $MIRROR $SUITE-updates main" \
		"deb $SECURITY_MIRROR $SUITE-security main"
	rm -rf "$debs.new" "$debs.old"
	mv "$TMP/debs" "$debs.new"
	mv "$debs" "$debs.old"
	mv "$debs.new" "$debs"
	rm -rf "$debs.old"

	kernels=("$R"/boot/vmlinuz-*)
	if [ ${#kernels[@]} -ne 1 ] || [ ! -f "${kernels[0]}" ]; then
		die "expected one kernel in $R/boot, found: ${kernels[*]}"
	fi
	kver=${kernels[0]##*/vmlinuz-}
	[ -f "$R/boot/initrd.img-$kver" ] || die "no initrd for kernel $kver"
	if [ ! -L "$R/vmlinuz" ] || [ ! -L "$R/initrd.img" ]; then
		die "missing /vmlinuz or /initrd.img symlink in the image"
	fi
	uuid=$(cat /proc/sys/kernel/random/uuid)

	# --- configuration (nothing Corral-specific) ---
	printf 'debian\n' >"$R/etc/hostname"
	cat >"$R/etc/hosts" <<-'EOF'
		127.0.0.1	localhost
		::1		localhost ip6-localhost ip6-loopback
		ff02::1		ip6-allnodes
		ff02::2		ip6-allrouters
	EOF
	cat >"$R/etc/fstab" <<-EOF
		# <file system>	<mount point>	<type>	<options>	<dump>	<pass>
		UUID=$uuid	/	ext4	rw,discard,errors=remount-ro	0	1
	EOF
	# Without locales installed, only C.UTF-8 exists (cloud-init's locale module fails on
	# anything else).
	printf 'LANG=C.UTF-8\n' >"$R/etc/default/locale"
	cat >"$R/etc/cloud/cloud.cfg.d/10_image.cfg" <<-'EOF'
		# No slow probing of cloud metadata services: a NoCloud seed (a volume labelled cidata)
		# or nothing.
		datasource_list: [ NoCloud, None ]
		# /etc/hosts names the instance's hostname (sudo looks it up).
		manage_etc_hosts: true
		# No DSA host key: sshd does not use one.
		ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
	EOF
	# Networking is ifupdown's: cloud-init renders its network config to
	# /etc/network/interfaces.d/50-cloud-init, and resolvconf passes on the name servers there
	# and dhclient's.
	cat >"$R/etc/network/interfaces" <<-'EOF'
		# interfaces(5) file used by ifup(8) and ifdown(8); cloud-init writes interfaces.d/.
		source /etc/network/interfaces.d/*
	EOF
	ln -sfn ../run/resolvconf/resolv.conf "$R/etc/resolv.conf"
	# Made on first boot: SSH host keys by cloud-init, the machine id by systemd.
	rm -f "$R"/etc/ssh/ssh_host_*
	: >"$R/etc/machine-id"
	rm -f "$R/var/lib/dbus/machine-id"
	# Build leftovers.
	rm -rf "$R"/tmp/* "$R"/var/tmp/* "$R"/var/log/apt/* "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old
	rm -f "$R"/var/log/*.log
	find "$R/var/cache/apt" "$R/var/lib/apt/lists" -type f ! -name lock -delete

	# --- GRUB: modules and grub.cfg on the root filesystem, shared by BIOS and UEFI ---
	local p
	for p in i386-pc x86_64-efi; do
		mkdir -p "$R/boot/grub/$p"
		cp "$R/usr/lib/grub/$p"/*.mod "$R/usr/lib/grub/$p"/*.lst "$R/boot/grub/$p/"
	done
	cat >"$R/boot/grub/grub.cfg" <<-EOF
		set default=0
		set timeout=0
		insmod all_video
		search --no-floppy --fs-uuid --set=root $uuid
		menuentry '$OS' {
			linux /vmlinuz root=UUID=$uuid ro console=tty0 console=ttyS0,115200
			initrd /initrd.img
		}
	EOF
	# The images GRUB boots from embed a config that finds the root filesystem; the rest of
	# GRUB (normal mode, linux, ...) is loaded from there. Under SeaBIOS GRUB also talks on
	# the serial port (so its errors show there); under OVMF the firmware console already does.
	cat >"$TMP/early-efi.cfg" <<-EOF
		search --no-floppy --fs-uuid --set=root $uuid
		set prefix=(\$root)/boot/grub
	EOF
	cat - "$TMP/early-efi.cfg" >"$TMP/early-pc.cfg" <<-EOF
		serial --unit=0 --speed=115200
		terminal_input --append serial
		terminal_output --append serial
	EOF
	quiet grub-mkimage -d "$R/usr/lib/grub/i386-pc" -O i386-pc -p /boot/grub -c "$TMP/early-pc.cfg" \
		-o "$TMP/core.img" biosdisk part_gpt ext2 search serial terminal
	quiet grub-mkimage -d "$R/usr/lib/grub/x86_64-efi" -O x86_64-efi -p /boot/grub -c "$TMP/early-efi.cfg" \
		-o "$TMP/BOOTX64.EFI" part_gpt ext2 search

	# --- disk ---
	truncate -s "$DISK_SIZE" "$raw"
	# sfdisk numbers a partition after the suffix of the name before ':'.
	quiet sfdisk --no-tell-kernel --no-reread "$raw" <<-EOF
		label: gpt
		first-lba: 2048
		${raw}14 : start=$BIOS_START, size=$BIOS_SECTORS, type=21686148-6449-6E6F-744E-656564454649, name="bios"
		${raw}15 : start=$ESP_START, size=$ESP_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
		${raw}1 : start=$ROOT_START, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"
	EOF
	local root_sectors
	root_sectors=$(sfdisk -J "$raw" | jq -er '.partitiontable.partitions[] | select(.name == "root") | .size') ||
		die "cannot read the root partition back from $raw"
	# The image's own mke2fs.conf: only features its kernel and GRUB know.
	quiet env MKE2FS_CONFIG="$R/etc/mke2fs.conf" mkfs.ext4 -q -F -t ext4 -d "$R" -U "$uuid" -L root \
		-E "offset=$((ROOT_START * 512)),nodiscard" "$raw" "$((root_sectors / 2))k"

	# ESP: a FAT image filled with mtools (no mount), then placed into its partition.
	quiet mkfs.vfat -F 32 -n EFI -C "$esp" $((ESP_SECTORS / 2))
	quiet mmd -i "$esp" ::/EFI ::/EFI/BOOT
	quiet mcopy -i "$esp" "$TMP/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
	quiet dd if="$esp" of="$raw" bs=512 seek="$ESP_START" conv=notrunc,sparse status=none

	# BIOS: what grub-bios-setup --no-rs-codes does (it cannot run without the disk as a block
	# device under /dev): boot.img in the MBR keeping the partition table, pointing at core.img
	# in the BIOS boot partition, whose first sector lists the rest of it.
	local core_sectors
	core_sectors=$((($(stat -c %s "$TMP/core.img") + 511) / 512))
	[ "$core_sectors" -le "$BIOS_SECTORS" ] || die "GRUB core.img ($core_sectors sectors) does not fit the BIOS boot partition"
	cp "$R/usr/lib/grub/i386-pc/boot.img" "$TMP/boot.img"
	patch_le "$TMP/boot.img" 0x5c 8 "$BIOS_START" # kernel sector
	patch_bytes "$TMP/boot.img" 0x64 '\377'        # boot drive: the one the BIOS booted from
	patch_bytes "$TMP/boot.img" 0x66 '\220\220'    # nop the floppy check (hard disk)
	patch_le "$TMP/core.img" 0x1f4 8 $((BIOS_START + 1)) # blocklist: start,
	patch_le "$TMP/core.img" 0x1fc 2 $((core_sectors - 1)) # sector count,
	patch_le "$TMP/core.img" 0x1fe 2 $((0x820))            # load segment
	quiet dd if="$TMP/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
	quiet dd if="$TMP/core.img" of="$raw" bs=512 seek="$BIOS_START" conv=notrunc status=none

	quiet qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$raw" "$D/$NAME.qcow2"
	rm -f "$raw" "$esp"
	printf '%s\n' "$kver" >"$D/kernel-version"
	printf '%s\n' "$uuid" >"$D/root-uuid"
	remove "$DIR"
	mv "$D" "$DIR"
	touch "$DIR/.done"
}

# patch_le FILE OFFSET BYTES VALUE: writes VALUE little-endian over BYTES bytes at OFFSET.
patch_le() {
	local file=$1 off=$2 n=$3 v=$4 i s=
	for ((i = 0; i < n; i++)); do
		s+=$(printf '\\%03o' $(((v >> (8 * i)) & 255)))
	done
	patch_bytes "$file" "$off" "$s"
}

# patch_bytes FILE OFFSET PRINTF-ESCAPES
patch_bytes() {
	# shellcheck disable=SC2059 # the escapes are the format on purpose
	printf "$3" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none || die "cannot patch $1"
}

if [ ! -e "$DIR/.done" ] || [ ! -s "$DIR/$NAME.qcow2" ] || [ ! -s "$DIR/kernel-version" ]; then
	[ "$(id -u)" -eq 0 ] || die "building $KEY needs root (mmdebstrap's root mode)"
	need_commands mmdebstrap sfdisk mkfs.ext4 mkfs.vfat mmd mcopy grub-mkimage
	# Only builds hold the lock, so any temp directory left here is from a killed build.
	for old in "$IMAGES"/tmp.*; do
		[ -e "$old" ] && remove "$old"
	done
	TMP=$(mktemp -d "$IMAGES/tmp.XXXXXX")
	build
	remove "$TMP"
	TMP=
fi
touch "$DIR" # in use: newest

# Keep the newest $KEEP complete builds (this one included); incomplete ones are leftovers.
n=0
while IFS= read -r old; do
	[ "$old" = "$DIR" ] && continue
	if [ -e "$old/.done" ] && [ $((++n)) -lt "$KEEP" ]; then
		continue
	fi
	remove "$old"
done < <(find "$IMAGES" -mindepth 1 -maxdepth 1 -type d -name "$NAME-*" -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)

# --- 2. install into the template directory ----------------------------------------------

SRC="$DIR/$NAME.qcow2"
DST="$OUT/$NAME.qcow2"
changed=
if ! [ "$DST" -ef "$SRC" ] && ! { [ -s "$DST" ] && [ "$(cat "$OUT/.$NAME.key" 2>/dev/null)" = "$KEY" ]; }; then
	rm -f "$OUT/.$NAME.qcow2.tmp"
	if ! ln "$SRC" "$OUT/.$NAME.qcow2.tmp" 2>/dev/null; then
		cp --reflink=auto "$SRC" "$OUT/.$NAME.qcow2.tmp" || die "cannot copy $SRC to $OUT"
	fi
	mv -f "$OUT/.$NAME.qcow2.tmp" "$DST"
	printf '%s\n' "$KEY" >"$OUT/.$NAME.key"
	changed=1
fi

kver=$(cat "$DIR/kernel-version")
size=$(qemu-img info -U --output=json "$DST" | jq -er '."virtual-size"') ||
	die "cannot read the virtual size of $DST"
json=$(jq -cn --arg name "$NAME" --arg disk "$NAME.qcow2" --arg os "$OS" --arg kver "$kver" \
	--argjson size "$size" \
	'{name: $name, disk: $disk, boot: "bios", firmware: ["bios", "uefi"], guest_agent: "qemu",
	  default_user: "debian", os: $os, kernel_version: $kver, size_bytes: $size}')
if [ -n "$changed" ] || [ "$(cat "$OUT/$NAME.json" 2>/dev/null)" != "$json" ]; then
	printf '%s\n' "$json" >"$OUT/.$NAME.json.tmp"
	mv -f "$OUT/.$NAME.json.tmp" "$OUT/$NAME.json"
fi
