#!/usr/bin/env bash
# Live-migration benchmark: QEMU's plain pre-copy defaults against Corral's `auto` policy, in one
# run, for idle, moderately and heavily dirtying guests of 256 MiB and 1 GiB. Writes
# bench/results/migration.json and bench/results/migration.md. On a 3-host lab (index 160,
# /tmp/corral-bench-160), each case on a fresh VM (1 vCPU) created on lab-1 and migrated to
# lab-2 over a link capped at BENCH_LINK (default 200M = 200 Mbit/s = 25 MB/s, the same cap for
# both modes, so that "heavy" dirties memory faster than the link carries it):
#
#   idle      workload idle
#   moderate  dirty:8:64     (8 MiB/s over a 64 MiB working set)
#   heavy     dirty:64:128   (64 MiB/s over 128 MiB: more than the link)
#
# Figures per migration, from `corral vm migrations --output json` (read from QEMU by the
# source agent): total time, downtime as QEMU measured it, memory bytes sent relative to guest
# memory, rounds, result, and the memory mode finally used. The pause seen by the guest: its
# counter ticks every 100 ms of guest time; sampled back to back with the host's clock during
# the migration, the largest shortfall of ticks against host time between two samples is the
# longest time the guest did not run (stop-and-copy, post-copy page waits), to the counter's
# 100 ms tick (a shorter pause may not show; QEMU's downtime figure is exact). The shortfall
# over the whole migration is reported too (clock lag); "-" where the guest gave no reading.
# Budget BENCH_BUDGET (default 60s) for both modes: at the budget `precopy` gives up and
# `auto` acts.
#
# Needs root (labs) and jq. Run through `make bench` / bench/run.sh, or alone.
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
forget_caller_lab
cli_bin
LINK=${BENCH_LINK:-200M}
BUDGET=${BENCH_BUDGET:-60s}
INDEX=160
DIR=/tmp/corral-bench-$INDEX
OUT=$REPO/bench/results

cleanup() { C lab down --dir "$DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
# Balancing and consolidation are on by default: lab_up turns them off, so only the benchmark
# moves VMs.
lab_up "$DIR" "$INDEX" 3
eval "$(C lab status --dir "$DIR" | grep '^export')"

# Prints "<host ms at the middle of the exec> <counter>"; fails if the guest did not answer
# (it is paused for the switch-over, or the exec went to the copy that just stopped).
sample() {
	local t0 t1 c
	t0=$(now_ms)
	c=$(C vm exec "$1" --timeout "${2:-1}" -- cat /run/corral-counter 2>/dev/null) || return 1
	[[ $c =~ ^[0-9]+$ ]] || return 1
	t1=$(now_ms)
	echo "$(((t0 + t1) / 2)) $c"
}

# A sample, retried for up to a minute (a guest that never answers again fails the bench).
sample_patiently() {
	local i
	for i in $(seq 60); do
		# A guest busy dirtying memory answers slowly: give it time.
		sample "$1" 5 && return 0
		sleep 1
	done
	log "$1: the guest does not answer"
	return 1
}

# While migration PID $2 of VM $1 runs, samples the guest's counter against host time as fast
# as exec allows. Prints "<longest gap> <total lag>": the largest stretch between two samples
# in which the counter fell behind host time (the pause the guest saw, ± half an exec), and how
# far it fell behind over the whole migration.
watch_gaps() {
	local t0 c0 pt pc t c worst=0 g out
	if ! out=$(sample_patiently "$1"); then
		# No first reading: nothing to measure against (reported as unknown).
		while kill -0 "$2" 2>/dev/null; do sleep 0.2; done
		echo "null null"
		return
	fi
	read -r t0 c0 <<<"$out"
	pt=$t0 pc=$c0
	while kill -0 "$2" 2>/dev/null; do
		if out=$(sample "$1" 2>/dev/null); then
			read -r t c <<<"$out"
			g=$(((t - pt) - (c - pc) * 100))
			[ "$g" -gt "$worst" ] && worst=$g
			pt=$t pc=$c
		fi
	done
	if ! out=$(sample_patiently "$1"); then
		echo "$worst null"
		return
	fi
	read -r t c <<<"$out"
	g=$(((t - pt) - (c - pc) * 100))
	[ "$g" -gt "$worst" ] && worst=$g
	g=$(((t - t0) - (c - c0) * 100))
	[ "$g" -lt 0 ] && g=0
	echo "$worst $g"
}

rows=()
for mem in 256 1024; do
	for load in idle moderate heavy; do
		case $load in
		idle) w=idle ;;
		moderate) w=dirty:8:64 ;;
		heavy) w=dirty:64:128 ;;
		esac
		for mode in precopy auto; do
			name=b-$mem-$load-$mode
			log "$name: create ($w)"
			C vm create "$name" --memory "${mem}M" --host lab-1 --workload "$w" >/dev/null
			sleep 5 # let the workload reach its working set
			out=$(mktemp)
			C vm migrate "$name" --to lab-2 --mode "$mode" --bandwidth "$LINK" --budget "$BUDGET" -o json >"$out" &
			mig=$!
			gaps=$(watch_gaps "$name" "$mig")
			wait "$mig" || true
			m=$(cat "$out")
			rm -f "$out"
			read -r gap drift <<<"$gaps"
			log "$name: $(jq -r '.result' <<<"$m") (longest guest pause ~${gap} ms, clock lag ${drift} ms)"
			rows+=("$(jq -c --arg mem "$mem" --arg load "$load" --argjson gap "$gap" --argjson drift "$drift" \
				'{memory_mib: ($mem|tonumber), load: $load, mode, used_mode, result, state, rounds, total_ms,
				  downtime_ms, guest_gap_ms: $gap, guest_clock_lag_ms: $drift, bytes, memory_bytes,
				  bytes_per_memory: ((.bytes / .memory_bytes * 100 | round) / 100), actions}' <<<"$m")")
			C vm delete "$name" >/dev/null 2>&1
		done
	done
done

accel=$(C host list -o json | jq -r '[.[].accel] | unique | join(",")')
mkdir -p "$OUT"
# The issue's goals, judged on the runs: auto completes every case; idle and moderate guests
# pause under 100 ms (QEMU's figure and the guest's own); auto sends fewer bytes than the
# defaults in every case where the defaults completed.
printf '%s\n' "${rows[@]}" | jq -s --arg cmd "${BENCH_COMMAND:-bash bench/migration.sh}" --arg link "$LINK" \
	--arg budget "$BUDGET" --arg date "$(date -u +%FT%TZ)" --arg accel "$accel" '
	. as $runs
	| [$runs[] | select(.mode == "auto")] as $auto
	| {command: $cmd, date: $date, link: $link, budget: $budget, accel: $accel, runs: $runs,
	   goals: {
	     auto_always_completes: ($auto | all(.state == "completed")),
	     auto_idle_moderate_downtime_under_100ms: ($auto | map(select(.load != "heavy"))
	       | all((.downtime_ms // 1e9) < 100 and .guest_gap_ms < 100)),
	     auto_fewer_bytes_than_defaults: ([$runs[] | select(.mode == "precopy" and .state == "completed")]
	       | all(. as $p | $auto[] | select(.memory_mib == $p.memory_mib and .load == $p.load)
	         | .bytes < $p.bytes))}}' >"$OUT/migration.json"
{
	echo "# Live migration: QEMU pre-copy defaults vs Corral auto"
	echo
	echo "\`${BENCH_COMMAND:-bash bench/migration.sh}\`, $(date -u +%F). Link capped at $LINK for both modes, budget $BUDGET, 1 vCPU guests, accelerator $accel, lab-1 → lab-2. The guest's view of its pause is good to its counter's 100 ms tick; QEMU's downtime is exact."
	echo
	echo "| memory | load | mode | result | memory moved by | rounds | total | downtime (QEMU) | longest pause seen by guest | guest clock lag | bytes / memory |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|"
	jq -r '.runs[] | "| \(.memory_mib) MiB | \(.load) | \(.mode) | \(.state) | \(.used_mode // "-") | \(.rounds) | \(.total_ms) ms | \(.downtime_ms // "-") ms | \(.guest_gap_ms // "-") ms | \(.guest_clock_lag_ms // "-") ms | \(.bytes_per_memory) |"' "$OUT/migration.json"
	echo
	echo "Goals (from the runs above):"
	echo
	jq -r '.goals | to_entries[] | "- \(.key | gsub("_"; " ")): \(if .value then "yes" else "**no**" end)"' "$OUT/migration.json"
} >"$OUT/migration.md"
log "wrote $OUT/migration.md"
