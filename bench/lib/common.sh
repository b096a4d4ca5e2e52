# The helpers every benchmark script shares (sourced, never run: bench/run.sh runs only
# bench/*.sh): logging, timing, medians, waiting for a quiet machine, machine facts, and
# starting, using and stopping labs. Sourcing it only sets REPO, LOG_TAG and JQ_MED and defines
# functions; a script calls what it needs.
#
# The functions read these variables of the script, where they use them:
#   BIN           the corral binary the labs run (lab_up, lab_down_checked, finish_labs, corral)
#   URL           the controller corral talks to (corral; set by use_lab)
#   WORK          the run's scratch directory for raw measurements (wait_quiet, finish_labs)
#   SCRATCH       removed by finish_labs
#   RESULTS       named in finish_labs' failure message
#   GUEST         the guest assets (machine_facts, need_bin_and_guest)
#   QUIET_PCT     how busy the CPUs may be, in %, for the machine to count as quiet (await_quiet)
#   QUIET_WAIT    how long, in seconds, to wait for that at most (await_quiet)
# shellcheck shell=bash

# The repository.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# What log lines start with: the script's name (bench/ha.sh logs as "[ha HH:MM:SS]").
LOG_TAG=$(basename "${BASH_SOURCE[1]}" .sh)

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%T)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

now_ms() {
	local t=${EPOCHREALTIME//[.,]/}
	echo $((t / 1000))
}

# jq's `med`, the median of an array of numbers (null for none): put it before a jq program
# that uses it ("$JQ_MED"'...').
JQ_MED='def med: sort | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end; '

# Numbers on stdin, one a line -> {"runs":[...],"median":..,"min":..,"max":..}; with DECIMALS,
# the median is rounded to that many decimals.
# shellcheck disable=SC2120 # DECIMALS is optional
stats() { # [DECIMALS]
	jq -s --argjson d "${1:-null}" "$JQ_MED"'{runs: ., median: (med | if $d == null or . == null then . else . * pow(10; $d) | round / pow(10; $d) end),
		min: min, max: max}'
}

# --- the run's setting ------------------------------------------------------------------------

# Never act on a lab or controller named by the caller's environment; the cache root.
forget_caller_lab() {
	unset CORRAL_URL CORRAL_TOKEN CORRAL_LAB_DIR
	export CORRAL_CACHE=${CORRAL_CACHE:-$REPO/.cache}
}

need_root() {
	[ "$(id -u)" -eq 0 ] || die "run as root (the labs make network namespaces and bridges)"
}

need_commands() { # COMMAND...
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || die "required command '$c' not found (bench/run.sh installs jq; make setup the rest)"
	done
}

# Run alone (no CORRAL_BIN), a benchmark builds what bench/run.sh would have: every binary and
# the guest assets. Run from the repository.
build_unless_given() {
	[ -z "${CORRAL_BIN:-}" ] || return 0
	log "building the corral binary (cargo build --release --bins)"
	cargo build --quiet --release --bins || die "cargo build --release --bins failed"
	log "building the guest assets if needed (scripts/build-guest.sh)"
	bash scripts/build-guest.sh >&2 || die "scripts/build-guest.sh failed"
}

# The corral binary (PATH) and the guest assets must be there.
need_bin_and_guest() { # PATH
	[ -x "$1" ] || die "$1 not found: build it with \`cargo build --release --bins\` or run bench/run.sh"
	if [ ! -f "$GUEST/base.json" ] || [ ! -f "$GUEST/base.qcow2" ]; then
		die "no guest assets in $GUEST: run \`make guest\`"
	fi
}

# CORRAL_BIN, built now if not given (the corral-cli package only), is also BIN; C runs it.
cli_bin() {
	if [ -z "${CORRAL_BIN:-}" ]; then
		(cd "$REPO" && cargo build --quiet --release -p corral-cli)
		CORRAL_BIN=$REPO/target/release/corral
	fi
	BIN=$CORRAL_BIN
}
C() { "$CORRAL_BIN" "$@"; }

# The commit measured: BENCH_COMMIT, else git's HEAD, "+dirty" if tracked files changed.
bench_commit() {
	local commit
	if [ -n "${BENCH_COMMIT:-}" ]; then
		commit=$BENCH_COMMIT
	else
		commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
		[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit+dirty"
	fi
	echo "$commit"
}

# The machine, QEMU and the guest, as JSON.
machine_facts() {
	jq -n \
		--arg nproc "$(nproc)" \
		--arg mem "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)" \
		--arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
		--arg hk "$(uname -r)" \
		--arg qemu "$(qemu-system-x86_64 --version | head -1)" \
		--argjson base "$(cat "$GUEST/base.json")" \
		--arg kvm "$([ -e /dev/kvm ] && echo present || echo absent)" \
		'{nproc: ($nproc | tonumber), memory_gib: (($mem | tonumber) / 1048576 * 10 | round / 10), cpu_model: $cpu,
		  host_kernel: $hk, qemu_version: $qemu, guest_kernel: $base.kernel_version, guest_os: $base.os,
		  dev_kvm: $kvm}'
}

# --- a quiet machine --------------------------------------------------------------------------

# Percent of all CPUs busy over 2 s.
cpu_busy_pct() {
	local a b
	a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	sleep 2
	b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; all = busy + y[2] - x[2];
		printf "%d\n", (all > 0 ? 100 * busy / all : 0) }'
}

# QEMU processes running on the machine (started by anyone: they compete for the CPUs).
qemu_count() { pgrep -c -f '^qemu-system-' || true; }

# Waits, at most QUIET_WAIT s, until the CPUs are at most QUIET_PCT % busy, so that other work
# does not skew what follows. Leaves the last reading in QUIET_BUSY and the seconds waited in
# QUIET_SPENT_S. Log lines start with PREFIX and count the QEMU processes with COUNT, said to be
# WHOSE.
await_quiet() { # PREFIX COUNT WHOSE
	local t0=$EPOCHSECONDS
	while :; do
		QUIET_BUSY=$(cpu_busy_pct)
		[ "$QUIET_BUSY" -le "$QUIET_PCT" ] && break
		if [ $((EPOCHSECONDS - t0)) -ge "$QUIET_WAIT" ]; then
			log "${1}warning: CPUs still ${QUIET_BUSY}% busy after ${QUIET_WAIT} s; measuring anyway (results are skewed)"
			break
		fi
		log "${1}waiting for a quiet machine: CPUs ${QUIET_BUSY}% busy, $("$2") QEMU process(es) $3"
	done
	QUIET_SPENT_S=$((EPOCHSECONDS - t0))
}

# await_quiet before part NAME, then the conditions it runs under -> $WORK/cond-NAME.json.
wait_quiet() { # NAME
	await_quiet "$1: " qemu_count running
	jq -n --argjson busy "$QUIET_BUSY" --argjson q "$(qemu_count)" --argjson w "$QUIET_SPENT_S" --arg l "$(cut -d' ' -f1-3 /proc/loadavg)" \
		'{cpu_busy_pct: $busy, qemu_processes: $q, waited_s: $w, loadavg: $l}' >"$WORK/cond-$1.json"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# --- labs -------------------------------------------------------------------------------------

corral() { "$BIN" --url "$URL" "$@"; }

# Points the client (and anything it runs under xargs/timeout) at a lab: its URL, its
# directory (the CLI finds the lab's API token there) and the token itself, if the lab has one.
use_lab() { # DIR URL
	URL=$2
	export CORRAL_URL=$2 CORRAL_LAB_DIR=$1
	if [ -f "$1/token" ]; then
		CORRAL_TOKEN=$(tr -d '[:space:]' <"$1/token")
		export CORRAL_TOKEN
	else
		unset CORRAL_TOKEN
	fi
}

# A fresh lab of HOSTS hosts (a lab left in DIR is taken down first), balancing and
# consolidation off so that nothing moves under the measurements; its daemons must be $BIN.
lab_up() { # DIR INDEX HOSTS [ACCEL]
	local p
	"$BIN" lab down --dir "$1" >/dev/null 2>&1 || true
	log "lab up: $3 host(s), index $2${4:+, --accel $4} ($1)"
	"$BIN" lab up --hosts "$3" --index "$2" --dir "$1" ${4:+--accel "$4"} >/dev/null
	env -u CORRAL_URL -u CORRAL_TOKEN CORRAL_LAB_DIR="$1" "$BIN" drs set --mode off >/dev/null
	for p in $(jq -r '.controller_pid, .hosts[].agent_pid' "$1/lab.json"); do
		[ "$(readlink "/proc/$p/exe")" = "$(readlink -f "$BIN")" ] || die "PID $p from $1/lab.json is not $BIN"
	done
}

# Takes a lab down and checks that it left nothing: network namespaces, devices, daemons, QEMU
# processes, its directory.
lab_down_checked() { # DIR INDEX
	local dir=$1 idx=$2 qpids=() daemons=() f p left cmd out
	for f in "$dir"/lab-*/vms/*/qemu.pid; do
		[ -f "$f" ] && qpids+=("$(cat "$f")")
	done
	mapfile -t daemons < <(jq -r '.controller_pid, .hosts[].agent_pid' "$dir/lab.json")
	out=$("$BIN" lab down --dir "$dir" 2>&1) || die "lab down failed: $out"
	left=$(ip netns list | awk -v p="^corral$idx-" '$1 ~ p { printf "%s ", $1 }')
	[ -z "$left" ] || die "lab down left namespaces: $left"
	left=$(ip -o link | awk -v p="crl$idx" '$2 ~ p { printf "%s ", $2 }')
	[ -z "$left" ] || die "lab down left devices: $left"
	for p in ${qpids[@]+"${qpids[@]}"}; do
		cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
		case "$cmd" in *qemu-system*"$dir/"*) die "lab down left QEMU process $p running" ;; esac
	done
	for p in ${daemons[@]+"${daemons[@]}"}; do
		[ "$(readlink "/proc/$p/exe" 2>/dev/null)" != "$(readlink -f "$BIN")" ] || die "lab down left daemon $p running"
	done
	left=$(pgrep -f "^qemu-system-.*$dir/" || true)
	[ -z "$left" ] || die "QEMU processes of this lab still run: $left"
	[ ! -e "$dir" ] || die "lab down left $dir behind"
}

# The end of a run (from its EXIT trap, with the exit status RC): takes every lab DIR still up
# down (after a failure, first keeping its daemons' logs, its guests' consoles and $WORK in a
# new directory), removes $SCRATCH and exits with RC.
finish_labs() { # RC DIR...
	local rc=$1 keep="" d f
	shift
	for d in "$@"; do
		[ -e "$d/lab.json" ] || continue
		if [ "$rc" -ne 0 ]; then
			# Keep the daemons' logs and the guests' consoles for the post-mortem.
			[ -n "$keep" ] || keep=$(mktemp -d "${TMPDIR:-/tmp}/corral-bench-failure.XXXXXX")
			mkdir -p "$keep/$(basename "$d")" && (cd "$d" && for f in *.log lab-*/vms/*/console.log; do [ -f "$f" ] && cp --parents "$f" "$keep/$(basename "$d")/"; done) 2>/dev/null
		fi
		log "cleanup: taking the lab in $d down"
		"$BIN" lab down --dir "$d" >/dev/null 2>&1 || "$BIN" lab down --dir "$d" >&2
	done
	[ -n "$keep" ] && cp -r "$WORK" "$keep/work" 2>/dev/null
	rm -rf "$SCRATCH"
	[ -n "$keep" ] && log "the labs' logs and the raw measurements are kept in $keep"
	[ "$rc" -ne 0 ] && log "FAILED (exit $rc); results in $RESULTS were not updated"
	exit "$rc"
}
