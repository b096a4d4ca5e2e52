# The preamble the lab benchmarks share (sourced, never run; bench/run.sh runs only
# bench/*.sh): the repository, the cache, the corral binary (built if CORRAL_BIN is not
# given), a clean environment, and small helpers.
REPO=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
# Never act on a lab or controller named by the caller's environment.
unset CORRAL_URL CORRAL_TOKEN CORRAL_LAB_DIR
export CORRAL_CACHE=${CORRAL_CACHE:-$REPO/.cache}
if [ -z "${CORRAL_BIN:-}" ]; then
	(cd "$REPO" && cargo build --quiet --release -p corral-cli)
	CORRAL_BIN=$REPO/target/release/corral
fi
C() { "$CORRAL_BIN" "$@"; }
now_ms() { date +%s%3N; }
