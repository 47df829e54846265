#!/usr/bin/env bash
# Runs platform-tdx's tests under Miri, which checks every memory access they make for
# undefined behaviour: data races between the firmware and a host thread writing the memory
# it reads, out-of-bounds or misaligned accesses, use of memory it does not own.
#
#   scripts/miri.sh                 every Miri-able test of platform-tdx
#   scripts/miri.sh capi            only those whose name contains "capi" (cargo test filter)
#
# Installs the nightly toolchain with the miri and rust-src components through rustup when
# they are missing. When that is impossible (no rustup, no network) it says so and exits 0
# with a "skipped: ..." line. Tests that spawn processes (QEMU, cargo, the C compiler) are
# `#[cfg_attr(miri, ignore)]`.
set -u
cd "$(dirname "$0")/.."

skip() {
	echo "skipped: $*"
	exit 0
}

command -v rustup >/dev/null 2>&1 || skip "rustup not found (Miri needs a nightly toolchain from rustup)"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	echo "miri.sh: installing the nightly toolchain with miri and rust-src"
	rustup toolchain install nightly --profile minimal --component miri,rust-src ||
		skip "could not install the nightly toolchain (no network?)"
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri'; then
	echo "miri.sh: adding the miri and rust-src components to nightly"
	rustup component add miri rust-src --toolchain nightly ||
		skip "could not add the miri component to nightly (no network?)"
fi
cargo +nightly miri setup >/dev/null 2>&1 ||
	skip "cargo miri setup failed (it builds Miri's sysroot from rust-src)"

# The C entry point's contract keeps the memory handed to it for the rest of the program, so
# its tests leak that memory on purpose.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-ignore-leaks}"
start=$(date +%s)
cargo +nightly miri test -p platform-tdx -- "$@"
rc=$?
echo "miri.sh: cargo miri test -p platform-tdx took $(($(date +%s) - start)) s, exit status $rc"
exit "$rc"
