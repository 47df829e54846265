#!/usr/bin/env bash
# Boots the tsm PVH kernel in QEMU and turns the run into an exit status.
#
#   boot/run-qemu.sh <kernel-elf> [cmdline words...]
#
# Used as the cargo runner for x86_64-unknown-none (.cargo/config.toml), so `cargo boot [words]`
# builds and boots. Words go to the kernel command line: `fault`, `overflow`, `fail`, `hang`,
# `deadline=MS`, `log=LEVEL`. The verdict line gives the boot's wall time (QEMU start to exit).
# Exit status: 0 iff the kernel wrote PASS to isa-debug-exit (QEMU status 33); 1 for a failing
# run (including a triple fault), 2 for a timeout, 127 if QEMU is missing.
# Environment: BOOT_TIMEOUT (seconds, default 60), BOOT_SMP (default 4), QEMU (binary name).
set -u

if [ $# -lt 1 ]; then
    echo "usage: $0 <kernel-elf> [cmdline words...]" >&2
    exit 64
fi
kernel=$1
shift
append="$*"
timeout_s=${BOOT_TIMEOUT:-60}
qemu=${QEMU:-qemu-system-x86_64}

if ! command -v "$qemu" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-qemu: $qemu not found, installing qemu-system-x86 with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86 >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86 >&2; }
    fi
    if ! command -v "$qemu" >/dev/null 2>&1; then
        echo "run-qemu: $qemu not found; install it with: sudo apt-get install -y qemu-system-x86" >&2
        exit 127
    fi
fi

log=$(mktemp "${TMPDIR:-/tmp}/tsm-boot.XXXXXX")
trap 'rm -f "$log"' EXIT

echo "run-qemu: booting $kernel (cmdline: \"$append\", timeout ${timeout_s}s)" >&2
started=$(date +%s%N)
# TCG, not KVM: the same behaviour everywhere, and the kernel is tiny.
timeout --kill-after=5 "$timeout_s" "$qemu" \
    -machine q35,accel=tcg -cpu max -m 256M -smp "${BOOT_SMP:-4}" \
    -display none -monitor none -serial stdio -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$kernel" -append "$append" </dev/null | tee "$log"
status=${PIPESTATUS[0]}
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
took=$(printf '%d.%03d s' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))

case $status in
    33)
        echo "run-qemu: PASS in $took" >&2
        exit 0
        ;;
    124 | 137)
        echo "TIMEOUT: no verdict from the kernel within ${timeout_s}s ($took); serial log:" >&2
        cat "$log" >&2
        exit 2
        ;;
    35)
        echo "run-qemu: FAIL (kernel reported failure) in $took" >&2
        exit 1
        ;;
    *)
        echo "run-qemu: FAIL (qemu exit status $status: no verdict from the kernel) in $took" >&2
        exit 1
        ;;
esac
