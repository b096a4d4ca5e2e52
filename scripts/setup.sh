#!/usr/bin/env bash
# Installs the Debian packages Corral's build, lab and tests need, idempotently and quietly.
# qemu-system-x86 and qemu-utils are installed at the same version: the machine image may carry
# a newer qemu-utils from backports that would otherwise block qemu-system-x86.
set -euo pipefail

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# The second line is for the Debian cloud image (scripts/build-debian.sh: mmdebstrap, GRUB for
# BIOS and UEFI, partitioning, the FAT ESP without mounting it) and for firmware-booted VMs
# (OVMF for UEFI, genisoimage for cloud-init's NoCloud seed); tmux drives the console trial, and
# ssh-keygen (openssh-client) makes its keys.
for p in qemu-system-x86 qemu-utils busybox-static iproute2 e2fsprogs cpio protobuf-compiler etcd-server xz-utils curl nftables iputils-ping jq \
  mmdebstrap fdisk dosfstools mtools grub-pc-bin grub-efi-amd64-bin zstd ovmf genisoimage tmux openssh-client; do
  have "$p" || need+=("$p")
done
# qemu-img and qemu-system must come from the same QEMU release.
if have qemu-system-x86 && have qemu-utils; then
  sv=$(dpkg-query -W -f='${Version}' qemu-system-x86); uv=$(dpkg-query -W -f='${Version}' qemu-utils)
  [ "$sv" = "$uv" ] || need+=(qemu-utils)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages: ${need[*]}; run as root or install them with apt-get" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup: installing ${need[*]}" >&2
apt-get update -qq >/dev/null || { echo "setup: apt-get update failed" >&2; exit 1; }
ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
  echo "setup: no installable qemu-system-x86 in the configured apt sources" >&2; exit 1
fi
pkgs=()
for p in "${need[@]}"; do
  case "$p" in
    qemu-system-x86|qemu-utils) ;;
    *) pkgs+=("$p") ;;
  esac
done
if ! apt-get install -y -qq --no-install-recommends --allow-downgrades \
     "qemu-system-x86=$ver" "qemu-utils=$ver" ${pkgs[@]+"${pkgs[@]}"} >/tmp/corral-setup.log 2>&1; then
  echo "setup: apt-get install failed; see /tmp/corral-setup.log" >&2
  tail -5 /tmp/corral-setup.log >&2
  exit 1
fi
