#!/usr/bin/env bash
# Builds the guest Linux kernel (vmlinux + bzImage) from Debian's linux-source package with the
# config fragment and the kernel changes in patches/ beside this script (see emulating-host.json),
# and a busybox initramfs from Debian's busybox-static.
# Artifacts are cached outside git (FC_RUN_CACHE, default ~/.cache/fc-run) keyed by the kernel
# version and the fragment's hash, then copied to guest/linux/build/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build"
cache="${FC_RUN_CACHE:-$HOME/.cache/fc-run}"
series=6.1

need=()
dpkg -s "linux-source-$series" >/dev/null 2>&1 || need+=("linux-source-$series")
for pkg in build-essential bc bison flex libelf-dev libssl-dev busybox-static cpio xz-utils patch; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

tarball=$(ls /usr/src/linux-source-$series.tar.xz)
version=$(dpkg-query -W -f='${Version}' "linux-source-$series")
# The kernel changes in patches/ (boot options that only act when given) are part of the key.
patches=$(ls "$here"/patches/*.patch 2>/dev/null | sort || true)
phash=$( (cat "$here/microvm.config"; for p in $patches; do cat "$p"; done) | sha256sum | cut -c1-12)
key="$version-$phash"
kdir="$cache/linux-$key"

if [ ! -f "$kdir/vmlinux" ] || [ ! -f "$kdir/bzImage" ]; then
  src="$cache/src-$version-$phash"
  if [ ! -d "$src" ]; then
    echo "extracting $tarball"
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xf "$tarball" -C "$src.tmp" --strip-components=1
    for p in $patches; do
      echo "applying $(basename "$p")"
      patch -s -p1 -d "$src.tmp" < "$p"
    done
    mv "$src.tmp" "$src"
  fi
  obj="$cache/obj-$key"
  mkdir -p "$obj"
  make -s -C "$src" O="$obj" allnoconfig
  "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$here/microvm.config" >/dev/null
  make -s -C "$src" O="$obj" olddefconfig
  # Report fragment options the kernel dropped (a typo or a missing dependency).
  while IFS= read -r line; do
    opt="${line%%=*}"
    [[ "$opt" =~ ^CONFIG_ ]] || continue
    want="${line#*=}"
    if [ "$want" = "n" ]; then grep -q "^$opt=" "$obj/.config" && echo "warning: $opt is set, fragment wants n"; continue; fi
    grep -q "^$line\$" "$obj/.config" || echo "warning: $line did not stick"
  done < "$here/microvm.config"
  echo "building kernel $version in $obj (takes minutes)"
  make -s -C "$src" O="$obj" -j"$(nproc)" vmlinux bzImage
  mkdir -p "$kdir"
  cp "$obj/vmlinux" "$kdir/vmlinux"
  cp "$obj/arch/x86/boot/bzImage" "$kdir/bzImage"
  cp "$obj/.config" "$kdir/config"
fi

# initramfs: busybox and an /init that reports and powers the VM off (reboot=k resets it).
ird="$cache/initramfs-$(sha256sum "$here/init" | cut -c1-12)"
if [ ! -f "$ird/initramfs.cpio.gz" ]; then
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp}
  cp /bin/busybox "$root/bin/busybox"
  for app in sh mount echo cat reboot poweroff sleep ls uname; do ln -s busybox "$root/bin/$app"; done
  install -m 0755 "$here/init" "$root/init"
  mkdir -p "$ird"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$ird/initramfs.cpio.gz"
  rm -rf "$root"
fi

mkdir -p "$out"
cp "$kdir/vmlinux" "$kdir/bzImage" "$kdir/config" "$out/"
cp "$ird/initramfs.cpio.gz" "$out/"
# The /init of the root disk the device test builds (see spin-init.S).
gcc -nostdlib -static -o "$out/spin-init" "$here/spin-init.S"
# The root disk's programs where KVM runs guest code on the CPU: busybox with disk-init as /init,
# and a vsock echo server (static: the disk has no C library).
gcc -static -O2 -Wall -Wextra -Werror -o "$out/vsock-echo" "$here/vsock-echo.c"
cp /bin/busybox "$out/busybox"
install -m 0755 "$here/disk-init" "$out/disk-init"
echo "guest Linux ready in $out: $(ls "$out" | tr '\n' ' ')"
