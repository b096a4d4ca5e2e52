#!/usr/bin/env bash
# Trace-driven simulation benchmarks (issue 6). Writes bench/results/sim.json (machine-readable)
# and bench/results/sim.md (tables for people):
#
#   1. every reference policy (THR 0.8, MAD 2.5, IQR 1.5, LR 1.2, LRR 1.2, each with MMT, MC and
#      RS selection) and Corral's default policy on the three PlanetLab days, standard
#      800-host experiment, CloudSim semantics (`corral-sim --trace DIR --policy P`);
#   2. the reproduction check: LR-MMT 1.2 on 20110303 against CloudSim 3.0.3's published run;
#   3. Corral against LR-MMT 1.2 per day: energy lower, ESV at most half, migrations at most a
#      fifth;
#   4. the same two policies with VMs kept when their demand drops to zero (--keep-idle-vms),
#      as a sensitivity check;
#   5. the scale benchmark: DRS planning for 10,000 hosts and 100,000 VMs (drs-scale).
#
# Needs cargo and jq; no root, no network. Runs in a few minutes on 2 cores.
#
# Environment:
#   BENCH_TRACES    directory holding the day directories (default /work/shared/data/planetlab,
#                   else <repo>/../shared/data/planetlab)
#   BENCH_DAYS      days to run (default "20110303 20110306 20110309")
#   BENCH_JOBS      simulations run in parallel (default: the number of CPUs)
#   BENCH_RESULTS   output directory (default <repo>/bench/results)
#   BENCH_COMMAND   the command line recorded in the results
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
RESULTS=${BENCH_RESULTS:-$REPO/bench/results}
DAYS=${BENCH_DAYS:-20110303 20110306 20110309}
JOBS=${BENCH_JOBS:-$(nproc)}
COMMAND=${BENCH_COMMAND:-bash bench/sim.sh}
if [ -z "${BENCH_TRACES:-}" ]; then
	for d in /work/shared/data/planetlab "$REPO/../shared/data/planetlab"; do
		[ -d "$d" ] && BENCH_TRACES=$d && break
	done
fi
TRACES=${BENCH_TRACES:-}

command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
[ -n "$TRACES" ] && [ -d "$TRACES" ] || die "no trace directory: set BENCH_TRACES to the directory holding the PlanetLab days"
for day in $DAYS; do
	[ -d "$TRACES/$day" ] || die "trace day $TRACES/$day is missing"
done

T0=$EPOCHSECONDS
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
cd "$REPO"
log "building (cargo build --release -p corral-sim)"
cargo build --quiet --release -p corral-sim || die "cargo build failed"
SIM="$REPO/target/release/corral-sim"
SCALE="$REPO/target/release/drs-scale"

WORK=$(mktemp -d /tmp/corral-sim-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

POLICIES="corral"
for det in thr-%-0.8 mad-%-2.5 iqr-%-1.5 lr-%-1.2 lrr-%-1.2; do
	for sel in mmt mc rs; do
		POLICIES="$POLICIES ${det/\%/$sel}"
	done
done

# One line per run: "<out file> <args...>".
{
	for day in $DAYS; do
		for p in $POLICIES; do
			echo "$WORK/run-$day-$p.json --trace $TRACES/$day --policy $p"
		done
		for p in lr-mmt-1.2 corral; do
			echo "$WORK/keep-$day-$p.json --trace $TRACES/$day --policy $p --keep-idle-vms"
		done
	done
} >"$WORK/jobs"
N=$(wc -l <"$WORK/jobs")
log "running $N simulations, $JOBS at a time"
export SIM
# shellcheck disable=SC2016
xargs -P "$JOBS" -L 1 sh -c 'out=$1; shift; "$SIM" "$@" --output json >"$out.tmp" 2>"$out.err" && mv "$out.tmp" "$out" || { echo "FAILED: $*" >&2; cat "$out.err" >&2; }' sh <"$WORK/jobs"
FAILED=$(grep -c '' <(for f in $(cut -d' ' -f1 "$WORK/jobs"); do [ -s "$f" ] || echo "$f"; done) || true)
[ "$FAILED" -eq 0 ] || die "$FAILED simulation(s) failed"
log "simulations done in $((EPOCHSECONDS - T0)) s"

log "scale benchmark (drs-scale: 10,000 hosts, 100,000 VMs)"
"$SCALE" >"$WORK/scale.json" 2>"$WORK/scale.log" || { cat "$WORK/scale.log" >&2; die "drs-scale failed"; }

LOAD_END=$(cut -d' ' -f1 /proc/loadavg)
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet 2>/dev/null || COMMIT="$COMMIT+dirty"
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
MEM_GIB=$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)

jq -n \
	--arg command "$COMMAND" \
	--arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
	--arg commit "$COMMIT" \
	--arg cpu "$CPU" \
	--argjson cores "$(nproc)" \
	--argjson mem "$MEM_GIB" \
	--arg load_start "$LOAD_START" \
	--arg load_end "$LOAD_END" \
	--arg kernel "$(uname -r)" \
	--arg rustc "$(rustc --version)" \
	--argjson seconds "$((EPOCHSECONDS - T0))" \
	--arg traces "$TRACES" \
	--slurpfile runs <(cat "$WORK"/run-*.json) \
	--slurpfile keep <(cat "$WORK"/keep-*.json) \
	--slurpfile scale "$WORK/scale.json" \
	'
	def pick: {policy, trace, vms, energy_kwh, slatah, pdm, slav, esv, migrations, migrations_overload,
		migrations_consolidate, superseded_placements, active_hosts_mean, wakes, standbys, vms_removed,
		policy_ms_mean, policy_ms_max, sla_overall};
	def goals($rs):
		[$rs | map(.trace) | unique[] as $d
		 | ($rs | map(select(.trace == $d and .policy == "lr-mmt-1.2"))[0]) as $lr
		 | ($rs | map(select(.trace == $d and .policy == "corral"))[0]) as $c
		 | {day: $d,
		    lr_mmt: ($lr | {energy_kwh, esv, migrations}), corral: ($c | {energy_kwh, esv, migrations}),
		    energy_ratio: ($c.energy_kwh / $lr.energy_kwh), esv_ratio: ($c.esv / $lr.esv),
		    migration_ratio: ($c.migrations / $lr.migrations),
		    pass: ($c.energy_kwh < $lr.energy_kwh and $c.esv <= 0.5 * $lr.esv and $c.migrations <= 0.2 * $lr.migrations)}];
	($runs | map(pick)) as $r
	| ($r | map(select(.trace == "20110303" and .policy == "lr-mmt-1.2"))[0]) as $lr3
	| {command: $command, date: $date, commit: $commit, seconds: $seconds, traces: $traces,
	   machine: {cpu: $cpu, cores: $cores, memory_gib: $mem, loadavg_1min_start: $load_start,
	             loadavg_1min_end: $load_end, kernel: $kernel, rustc: $rustc},
	   experiment: "standard: 800 hosts (HP ML110 G4 / G5 alternating), 4 VM types in equal blocks, 300 s intervals, CloudSim 3.0.3 semantics (VMs whose demand falls to exactly 0 end, as getCompletedVms does)",
	   reproduction: {day: "20110303", policy: "lr-mmt-1.2",
	     cloudsim: {energy_kwh: 167.83, migrations: 27649, slatah: 0.0572, pdm: 0.0008, slav: 0.0000432},
	     corral_sim: ($lr3 | {energy_kwh, migrations, superseded_placements, slatah, pdm, slav}),
	     deviation: {energy: ($lr3.energy_kwh / 167.83 - 1), migrations: ($lr3.migrations / 27649 - 1),
	                 migrations_with_superseded: (($lr3.migrations + $lr3.superseded_placements) / 27649 - 1),
	                 slav: ($lr3.slav / 0.0000432 - 1), slatah: ($lr3.slatah / 0.0572 - 1), pdm: ($lr3.pdm / 0.0008 - 1)},
	     within_tolerance: (($lr3.energy_kwh / 167.83 - 1 | fabs) <= 0.05 and ($lr3.migrations / 27649 - 1 | fabs) <= 0.15
	                        and ($lr3.slav / 0.0000432 - 1 | fabs) <= 0.15)},
	   goals: goals($r),
	   runs: $r,
	   keep_idle_vms: {note: "sensitivity: the same runs with VMs kept when their demand is 0 (--keep-idle-vms)",
	                   runs: ($keep | map(pick)), goals: goals($keep | map(pick))},
	   scale: $scale[0]}' >"$WORK/sim.json"

mkdir -p "$RESULTS"
cp "$WORK/sim.json" "$RESULTS/sim.json"

# The markdown report.
{
	jq -r '
	def fix($x; $d):
		if $d == 0 then ($x | round | tostring)
		else ($x * pow(10; $d) | round) as $n
			| ($n | fabs | tostring) as $a
			| (($d + 1 - ($a | length)) as $z | if $z > 0 then ([range(0; $z)] | map("0") | join("")) else "" end) + $a
			| .[:-$d] + "." + .[-$d:]
			| if $n < 0 then "-" + . else . end
		end;
	def pct($x; $d): fix($x * 100; $d) + "%";
	def sgn($x): (if $x >= 0 then "+" else "" end) + pct($x; 1);
	"# Trace-driven simulation (`corral-sim`)",
	"",
	"Command: `\(.command)` — \(.date), commit \(.commit), \(.seconds) s.",
	"Machine: \(.machine.cpu), \(.machine.cores) cores, \(.machine.memory_gib) GiB; 1-minute load average \(.machine.loadavg_1min_start) at the start, \(.machine.loadavg_1min_end) at the end (other work on the machine skews the wall times); \(.machine.rustc).",
	"",
	"Experiment: \(.experiment). Traces: `\(.traces)`. Each policy runs single-threaded; `ms/interval` is the wall time of `corral_sched::drs::plan` per scheduling round.",
	"",
	"## Reproduction: LR-MMT 1.2 on 20110303 against CloudSim 3.0.3",
	"",
	"| | energy kWh | migrations | SLATAH | PDM | SLAV |",
	"|---|---:|---:|---:|---:|---:|",
	(.reproduction as $p | "| CloudSim 3.0.3 | \($p.cloudsim.energy_kwh) | \($p.cloudsim.migrations) | \(pct($p.cloudsim.slatah; 2)) | \(pct($p.cloudsim.pdm; 3)) | \(pct($p.cloudsim.slav; 5)) |",
	 "| corral-sim | \(fix($p.corral_sim.energy_kwh; 2)) | \($p.corral_sim.migrations) (+\($p.corral_sim.superseded_placements) superseded = \($p.corral_sim.migrations + $p.corral_sim.superseded_placements)) | \(pct($p.corral_sim.slatah; 2)) | \(pct($p.corral_sim.pdm; 3)) | \(pct($p.corral_sim.slav; 5)) |",
	 "| difference | \(sgn($p.deviation.energy)) | \(sgn($p.deviation.migrations)) (\(sgn($p.deviation.migrations_with_superseded)) counting superseded placements) | \(sgn($p.deviation.slatah)) | \(sgn($p.deviation.pdm)) | \(sgn($p.deviation.slav)) |",
	 "",
	 "Within the issue'"'"'s tolerance (energy 5%, migrations and SLAV 15%): **\(if $p.within_tolerance then "yes" else "no" end)**. See docs/sim.md for the differences point by point."),
	"",
	"## Corral against LR-MMT 1.2",
	"",
	"| day | energy kWh (LR-MMT → Corral) | ESV ×10⁻³ (LR-MMT → Corral) | migrations (LR-MMT → Corral) | goals met |",
	"|---|---|---|---|---|",
	(.goals[] | "| \(.day) | \(fix(.lr_mmt.energy_kwh; 2)) → \(fix(.corral.energy_kwh; 2)) (\(sgn(.energy_ratio - 1))) | \(fix(.lr_mmt.esv * 1000; 3)) → \(fix(.corral.esv * 1000; 3)) (\(pct(.esv_ratio; 1)) of it) | \(.lr_mmt.migrations) → \(.corral.migrations) (\(pct(.migration_ratio; 1))) | \(if .pass then "yes" else "**no**" end) |"),
	"",
	"Goals: less energy than LR-MMT 1.2, ESV at most half of its, at most a fifth of its migrations.",
	"",
	"## All policies",
	"",
	"| policy | day | energy kWh | SLATAH | PDM | SLAV | ESV ×10⁻³ | migrations | mean active hosts | ms/interval |",
	"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
	(.runs | sort_by(.trace, (if .policy == "corral" then 0 else 1 end), .policy)[]
	 | "| \(.policy) | \(.trace) | \(fix(.energy_kwh; 2)) | \(pct(.slatah; 2)) | \(pct(.pdm; 3)) | \(pct(.slav; 5)) | \(fix(.esv * 1000; 3)) | \(.migrations) | \(fix(.active_hosts_mean; 1)) | \(fix(.policy_ms_mean; 2)) |"),
	"",
	"## Sensitivity: VMs kept when their demand is zero",
	"",
	"CloudSim ends a VM whose demand is exactly 0 at an event (about half the VMs of these days, at some point). With `--keep-idle-vms` they stay:",
	"",
	"| policy | day | energy kWh | SLATAH | PDM | SLAV | ESV ×10⁻³ | migrations |",
	"|---|---|---:|---:|---:|---:|---:|---:|",
	(.keep_idle_vms.runs | sort_by(.trace, .policy)[]
	 | "| \(.policy) | \(.trace) | \(fix(.energy_kwh; 2)) | \(pct(.slatah; 2)) | \(pct(.pdm; 3)) | \(pct(.slav; 5)) | \(fix(.esv * 1000; 3)) | \(.migrations) |"),
	"",
	"Goals met with VMs kept: \(.keep_idle_vms.goals | map("\(.day) \(if .pass then "yes" else "no" end)") | join(", ")).",
	"",
	"## Scale: planning for 10,000 hosts and 100,000 VMs",
	"",
	"`drs-scale` (seed \(.scale.seed)): hosts of 16 and 32 cores, VMs of 1, 2 or 4 vCPUs with an hour of history, memory reserved; demands move each round and the plan is applied. Packed: first fit to 75% of the expected load; spread: every powered host lightly loaded (a restart), which makes Corral consolidate in bulk.",
	"",
	"| policy | start | hosts | VMs | rounds | plan ms mean | plan ms max | migrations per round | under 1 s |",
	"|---|---|---:|---:|---:|---:|---:|---|---|",
	(.scale.results[] | "| \(.policy) | \(.start | split(":")[0]) | \(.hosts) | \(.vms) | \(.rounds) | \(fix(.plan_ms_mean; 1)) | \(fix(.plan_ms_max; 1)) | \(.per_round | map(.migrations | tostring) | join(", ")) | \(if .within_1s then "yes" else "no" end) |")
	' "$WORK/sim.json"
} >"$RESULTS/sim.md"

log "wrote $RESULTS/sim.json and $RESULTS/sim.md in $((EPOCHSECONDS - T0)) s"
jq -e '.goals | all(.pass)' "$RESULTS/sim.json" >/dev/null || die "Corral missed a goal on some day (see sim.md)"
jq -e '.scale.results | map(select(.policy == "corral")) | all(.within_1s)' "$RESULTS/sim.json" >/dev/null ||
	log "warning: a Corral scale round took over 1 s (machine load?)"
