#!/bin/bash
# Runs jest suites that need /dev/kvm on a host that has none (a host that is itself a guest
# without nested virtualisation): QEMU's TCG emulates AMD SVM with NPT for its guest, so Debian's
# kernel booted under `qemu-system-x86_64 -accel tcg -cpu max` loads kvm_amd and has a real
# /dev/kvm. The guest sees this machine's / read-only over 9p, with a tmpfs overlay on top
# (writes stay in the guest), switch_roots into it and runs jest in this checkout. Slow (guest
# code is emulated twice): the probe suite takes ~2 min, test/integration ~6-9 min.
#
# Usage: bash scripts/nested-kvm/run.sh [jest paths and options...]   (default: test/integration)
#        bash scripts/nested-kvm/run.sh --sh 'COMMAND'   (any command in the checkout, e.g. a bench)
# Needs root. Build the checkout first (npm ci && npm run setup): the guest builds nothing.
# Exit status: jest's. The guest's console log is in $FC_RUN_CACHE/nested-kvm/console.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${FC_RUN_CACHE:-$HOME/.cache/fc-run}/nested-kvm
mkdir -p "$work/scratch"
[ -e /dev/kvm ] && echo "note: this host has /dev/kvm; run the tests directly (npx jest ...)" >&2
[ -d "$repo/dist/bundle" ] && [ -f "$repo/guest/probe/build/probe.elf" ] || { echo "build first: npm ci && npm run setup" >&2; exit 1; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The guest's kernel and modules: Debian's newest installed amd64 kernel.
K=$(ls /boot | sed -n 's/^vmlinuz-\(.*-amd64\)$/\1/p' | sort -V | tail -1)
if [ ! -f "$work/initramfs-$K.cpio.gz" ] || [ "$here/init" -nt "$work/initramfs-$K.cpio.gz" ] || [ "$here/kvmtest.c" -nt "$work/initramfs-$K.cpio.gz" ]; then
  R=$(mktemp -d)
  mkdir -p "$R"/{bin,sbin,proc,sys,dev,lib/modules,tmp}
  cp /bin/busybox "$R/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
  resolve() { local d; for d in $(modinfo -k "$K" -F depends "$1" | tr , ' '); do resolve "$d"; done; echo "$1"; }
  : > "$R/modules.order"
  for m in $( (for m in virtio_pci 9pnet_virtio 9p overlay kvm-amd; do resolve $m; done) | awk '!s[$0]++'); do
    f=$(modinfo -k "$K" -F filename "$m"); n=$(basename "$f"); n=${n%%.ko*}
    case $f in *.xz) xz -dc "$f" > "$R/lib/modules/$n.ko" ;; *.zst) zstd -dc "$f" > "$R/lib/modules/$n.ko" ;; *) cp "$f" "$R/lib/modules/$n.ko" ;; esac
    echo "$n" >> "$R/modules.order"
  done
  gcc -O2 -static -o "$R/kvmtest" "$here/kvmtest.c"
  cp "$here/init" "$R/init"; chmod 755 "$R/init"
  (cd "$R" && find . | cpio -o -H newc --quiet) | gzip -1 > "$work/initramfs-$K.cpio.gz"
  rm -rf "$R"
fi

echo "$PATH" > "$work/scratch/host-path"
if [ "${1:-}" = "--sh" ]; then
  shift
  [ $# -ge 1 ] || { echo "--sh needs a command" >&2; exit 2; }
  printf '%s\n' "$*" > "$work/scratch/job-cmd"
  run='bash /mnt/nested-kvm/job-cmd 2>&1 | sed "s/^/JOB| /"; r=${PIPESTATUS[0]}; (exit $r)'
  marker='command'
else
  printf '%q ' "${@:-test/integration}" > "$work/scratch/jest-args"
  run='CI=true node node_modules/.bin/jest --ci --colors=false $(cat /mnt/nested-kvm/jest-args) 2>&1'
  marker='jest'
fi
cat > "$work/scratch/job.sh" <<JOB
cd $(printf '%q' "$repo")
modprobe -a tun veth bridge 2>&1 | head -3
t0=\$(date +%s)
eval $(printf '%q' "$run")
echo "$marker rc=\$?, took \$(( \$(date +%s) - t0 )) s"
JOB
log="$work/console.log"
timeout "${TIMEOUT:-5400}" qemu-system-x86_64 -accel tcg,thread=multi,tb-size=512 -cpu max -m "${MEM:-4096}" -smp "${SMP:-2}" \
  -nographic -no-reboot -serial file:"$log" -monitor none \
  -kernel "/boot/vmlinuz-$K" -initrd "$work/initramfs-$K.cpio.gz" \
  -append "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4 modopt.kvm-amd=nested=0 job=job.sh" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$work/scratch",mount_tag=scratch,security_model=none >/dev/null 2>&1 || true
sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' "$log" | grep -E "KVMTEST|^(PASS|FAIL)|✕|Tests:|^JOB\| |(jest|command) rc" | sed 's/^JOB| //' || true
rc=$(sed -n 's/.*\(jest\|command\) rc=\([0-9]*\).*/\2/p' "$log" | tail -1)
[ -n "$rc" ] || { echo "the guest did not finish the job: see $log" >&2; exit 1; }
exit "$rc"
