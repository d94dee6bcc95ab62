#!/usr/bin/env bash
# Boots the writewatch guest kernel under QEMU instead of writewatch: the
# kernel is a plain PVH ELF (docs/GUEST_ABI.md, "Under QEMU").
#
#   resources/qemu-boot.sh [--smp N] [--mem SIZE] [guest command-line words...]
#   resources/qemu-boot.sh --smp 4 mode=selftest
#
# Builds the guest first. Exits with the guest's exit code (QEMU's
# isa-debug-exit reports (code << 1) | 1; this script undoes that).
set -euo pipefail
cd "$(dirname "$0")/.."

smp=1 mem=256M
while [ $# -gt 0 ]; do
    case "$1" in
        --smp) smp=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        *) break ;;
    esac
done

(cd guest-kernel && cargo build --release --target x86_64-unknown-none -p guest-kernel -q)
kernel=guest-kernel/target/x86_64-unknown-none/release/guest-kernel

set +e
qemu-system-x86_64 -accel tcg -cpu max -smp "$smp" -m "$mem" \
    -nodefaults -display none -no-reboot -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=4 \
    -append "$*" -kernel "$kernel"
status=$?
set -e
# A guest that wrote v to port 0xf4 made QEMU exit with (v << 1) | 1.
if [ $((status & 1)) -eq 1 ]; then exit $((status >> 1)); fi
echo "qemu-boot: QEMU stopped without the guest's exit code (status $status)" >&2
exit 125
