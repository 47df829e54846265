#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) for a given time each, starting from
# the checked-in seeds, and prints the executions and executions per second of each.
#
#   scripts/fuzz.sh                          every target, 60 s each
#   scripts/fuzz.sh 300                      every target, 300 s each
#   scripts/fuzz.sh 60 tdx_dispatcher        one target
#
# Installs the nightly toolchain (rustup) and cargo-fuzz (cargo install) when they are
# missing. When that is impossible (no rustup, no network) it says so and exits 0 with a
# "skipped: ..." line. A target that fails a check stops with libFuzzer's crash report; the
# input is under fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/ to keep it:
# `cargo test --manifest-path fuzz/Cargo.toml` replays that folder), and the script exits 1.
#
# Environment: FUZZ_SANITIZER (default none: every crate the targets link is safe Rust; set
# address for ASan), FUZZ_JOBS (cargo build jobs), FUZZ_ARGS (more libFuzzer flags).
set -u
cd "$(dirname "$0")/.."

skip() {
	echo "skipped: $*"
	exit 0
}

seconds=${1:-60}
shift $(($# > 0 ? 1 : 0))
case $seconds in
'' | *[!0-9]*)
	echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
	exit 2
	;;
esac
all_targets=(tdx_dispatcher sev_dispatcher relay_answers tdisp_request tdisp_response tdisp_report report_portions)
if [ $# -gt 0 ]; then
	targets=("$@")
else
	targets=("${all_targets[@]}")
fi

command -v rustup >/dev/null 2>&1 || skip "rustup not found (cargo-fuzz needs a nightly toolchain from rustup)"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing the nightly toolchain (rustup toolchain install nightly --profile minimal)"
	rustup toolchain install nightly --profile minimal ||
		skip "could not install the nightly toolchain (no network?)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked; a minute or two)"
	cargo install cargo-fuzz --locked ||
		skip "could not install cargo-fuzz (no network?)"
fi

sanitizer=${FUZZ_SANITIZER:-none}
build_flags=(--fuzz-dir fuzz -s "$sanitizer")
if [ -n "${FUZZ_JOBS:-}" ]; then
	export CARGO_BUILD_JOBS=$FUZZ_JOBS
fi

echo "fuzz.sh: building ${targets[*]} (release, debug assertions, sanitizer $sanitizer)"
start=$(date +%s)
for t in "${targets[@]}"; do
	cargo +nightly fuzz build "${build_flags[@]}" "$t" || {
		echo "fuzz.sh: building $t failed" >&2
		exit 1
	}
done
echo "fuzz.sh: built in $(($(date +%s) - start)) s"

summary=()
status=0
for t in "${targets[@]}"; do
	corpus=fuzz/corpus/$t
	mkdir -p "$corpus" "fuzz/artifacts/$t"
	log=fuzz/artifacts/$t/last-run.log
	echo "fuzz.sh: $t for $seconds s (corpus $corpus, seeds fuzz/seeds/$t)"
	# shellcheck disable=SC2086
	cargo +nightly fuzz run "${build_flags[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- \
		-max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
		-artifact_prefix="fuzz/artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	units=$(find "$corpus" -type f | wc -l)
	line=$(printf '%-16s %10s executions %8s exec/s  %6s edges  %5s corpus files' \
		"$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$units")
	if [ "$rc" -ne 0 ]; then
		status=1
		line="$line  FAILED (exit $rc)"
		echo "fuzz.sh: $t failed (whole log: $log):" >&2
		grep -A 4 -m 1 'panicked at' "$log" >&2 || tail -20 "$log" >&2
		echo "fuzz.sh: the input:" >&2
		ls -1 "fuzz/artifacts/$t"/crash-* "fuzz/artifacts/$t"/timeout-* \
			"fuzz/artifacts/$t"/oom-* >&2 2>/dev/null
	fi
	echo "$line"
	summary+=("$line")
done

echo
echo "fuzz.sh: $seconds s per target, sanitizer $sanitizer"
printf '%s\n' "${summary[@]}"
exit "$status"
