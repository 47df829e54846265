#!/usr/bin/env bash
# Runs the tests of platform-tdx and platform-sev under Miri, which checks every memory access
# they make for undefined behaviour: data races between the firmware and a host thread writing
# the memory it reads, out-of-bounds or misaligned accesses, use of memory it does not own,
# aliasing violations, leaks (platform-sev).
#
#   scripts/miri.sh                 CI's run (about 3 minutes): platform-tdx's own tests, where
#                                   its unsafe code is (the C entry point, the frame pool, the
#                                   S-EPT), the three racing C entry point tests again under 4
#                                   more scheduler seeds, and platform-sev's relay tests (the
#                                   host's SPDM buffers)
#   TSM_MIRI_FULL=1 scripts/miri.sh every Miri-able test of both crates, integration tests
#                                   included (about 11 minutes on a 2-vCPU machine)
#   scripts/miri.sh capi            only tests whose name contains "capi" (cargo test filter)
#   TSM_MIRI_CRATES=platform-sev scripts/miri.sh      one crate only
#
# platform-tdx holds the workspace's unsafe code (the C entry point, `capi.rs`) and the frame
# pool the entry point builds over caller memory (`frames.rs`); platform-sev has no unsafe code
# but parses host command buffers, aligned or not, with zerocopy and keeps its RMP in caller
# memory. Tests that spawn processes or are slow under Miri without touching anything unsafe
# are `#[cfg_attr(miri, ignore)]`, each with its reason.
#
# Installs the nightly toolchain with the miri and rust-src components through rustup when
# they are missing. When that is impossible (no rustup, no network) it says so and exits 0
# with a "skipped: ..." line; anything Miri finds, like any failing test, exits non-zero.
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
installed=$(rustup component list --toolchain nightly --installed 2>/dev/null)
if ! grep -q '^miri' <<<"$installed" || ! grep -q '^rust-src' <<<"$installed"; then
	echo "miri.sh: adding the miri and rust-src components to nightly"
	rustup component add miri rust-src --toolchain nightly ||
		skip "could not add the miri and rust-src components to nightly (no network?)"
fi
cargo +nightly miri setup >/dev/null 2>&1 ||
	skip "cargo miri setup failed (it builds Miri's sysroot from rust-src)"

# Miri flags per crate. The C entry point's contract keeps the memory handed to it for the rest
# of the program, so platform-tdx's tests leak that memory on purpose; platform-sev's leak
# nothing, and Miri checks that. MIRIFLAGS from the environment are added to both.
flags() {
	case "$1" in
	platform-tdx) echo "-Zmiri-ignore-leaks ${MIRIFLAGS:-}" ;;
	*) echo "${MIRIFLAGS:-}" ;;
	esac
}

status=0
total_start=$(date +%s)
for crate in ${TSM_MIRI_CRATES:-platform-tdx platform-sev}; do
	start=$(date +%s)
	if [ -n "${TSM_MIRI_FULL:-}" ] || [ $# -gt 0 ]; then
		MIRIFLAGS=$(flags "$crate") cargo +nightly miri test -p "$crate" -- "$@"
	elif [ "$crate" = platform-tdx ]; then
		MIRIFLAGS=$(flags "$crate") cargo +nightly miri test -p "$crate" --lib
	else
		MIRIFLAGS=$(flags "$crate") cargo +nightly miri test -p "$crate" --lib -- tests::relay
	fi
	rc=$?
	echo "miri.sh: cargo miri test -p $crate took $(($(date +%s) - start)) s, exit status $rc"
	[ "$rc" = 0 ] || status=$rc
	# Which thread wins init, and where the host's writes fall in a call, depend on Miri's
	# scheduler (seed 0 above): the three racing tests run again under seeds 1-4 (full runs only).
	if [ "$crate" = platform-tdx ] && [ $# = 0 ]; then
		start=$(date +%s)
		out=$(MIRIFLAGS="$(flags "$crate") -Zmiri-many-seeds=1..5" cargo +nightly miri test \
			-p platform-tdx --lib -- --exact \
			capi::tests::init_from_two_threads_exactly_one_wins_and_the_loser_is_untouched \
			capi::tests::host_memory_changing_under_a_read_gives_one_consistent_snapshot \
			capi::tests::a_response_page_rewritten_during_the_call_is_read_once 2>&1)
		rc=$?
		printf '%s\n' "$out"
		# Exact names: a renamed test must fail this run, not pass it with nothing run.
		if [ "$rc" = 0 ] && ! printf '%s\n' "$out" | grep -q "running 3 tests"; then
			echo "miri.sh: the three racing tests were not found (renamed?)" >&2
			rc=1
		fi
		echo "miri.sh: the racing tests under 4 more seeds took $(($(date +%s) - start)) s," \
			"exit status $rc"
		[ "$rc" = 0 ] || status=$rc
	fi
done
echo "miri.sh: $(($(date +%s) - total_start)) s in all, exit status $status"
exit "$status"
