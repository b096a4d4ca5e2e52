#!/usr/bin/env bash
# The `make bench` entry point: builds the release binary and the guest assets when they are
# out of date, then runs every bench/*.sh script other than this one (in name order), each
# writing its results under bench/results/. Exits non-zero if any script fails; the others
# still run. Progress goes to stderr.
#
# Usage: bash bench/run.sh [NAME...]     NAME selects scripts (e.g. `skeleton`); default all.
#
# Environment passed on to the scripts:
#   CORRAL_CACHE     cache root (default <repo>/.cache), guest assets in $CORRAL_CACHE/guest
#   CORRAL_BIN       the corral binary (default <repo>/target/release/corral, built here)
#   BENCH_COMMAND    the command line recorded in the results
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_TAG=bench
SELF="$REPO/bench/run.sh"
export CORRAL_CACHE=${CORRAL_CACHE:-$REPO/.cache}
export CORRAL_BIN=${CORRAL_BIN:-$REPO/target/release/corral}

if [ -z "${BENCH_COMMAND:-}" ]; then
	if [ -n "${MAKELEVEL:-}" ]; then
		BENCH_COMMAND="make bench"
	else
		BENCH_COMMAND="bash bench/run.sh${*:+ $*}"
	fi
fi
export BENCH_COMMAND

[ "$(id -u)" -eq 0 ] || die "benchmarks make labs (network namespaces, bridges): run as root"

# Tools the benchmark scripts use beyond what scripts/setup.sh installs.
missing=()
for t in jq; do
	command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
		die "cannot install ${missing[*]}"
fi

cd "$REPO"
t0=$EPOCHSECONDS
if [ "$CORRAL_BIN" = "$REPO/target/release/corral" ]; then
	log "building the release binary (cargo build --release --bins)"
	cargo build --quiet --release --bins || die "cargo build --release failed"
fi
[ -x "$CORRAL_BIN" ] || die "$CORRAL_BIN is not an executable"
log "building the guest assets if needed (scripts/build-guest.sh)"
bash scripts/build-guest.sh || die "scripts/build-guest.sh failed"

scripts=()
for s in "$REPO"/bench/*.sh; do
	[ "$s" = "$SELF" ] && continue
	name=$(basename "$s" .sh)
	if [ $# -gt 0 ]; then
		want=0
		for a in "$@"; do [ "$a" = "$name" ] && want=1; done
		[ $want -eq 1 ] || continue
	fi
	scripts+=("$s")
done
[ ${#scripts[@]} -gt 0 ] || die "no benchmark scripts selected in bench/"

# Ctrl-C or a TERM stops the whole run, not just the script running (each script cleans up
# after itself on the same signal, then this exits).
interrupted=0
trap 'interrupted=130' INT
trap 'interrupted=143' TERM

failed=()
for s in "${scripts[@]}"; do
	name=$(basename "$s" .sh)
	log "running $name"
	s0=$EPOCHSECONDS
	if bash "$s"; then
		log "$name finished in $((EPOCHSECONDS - s0)) s"
	else
		rc=$?
		log "$name FAILED (exit $rc) after $((EPOCHSECONDS - s0)) s"
		failed+=("$name")
	fi
	if [ $interrupted -ne 0 ]; then
		log "interrupted: not running the remaining benchmarks"
		exit $interrupted
	fi
done

if [ ${#failed[@]} -gt 0 ]; then
	log "failed: ${failed[*]} (total $((EPOCHSECONDS - t0)) s)"
	exit 1
fi
log "all ${#scripts[@]} benchmark(s) passed in $((EPOCHSECONDS - t0)) s; results in bench/results/"
