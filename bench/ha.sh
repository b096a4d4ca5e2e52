#!/usr/bin/env bash
# High-availability benchmark: BENCH_HA_FAILURES (default 20) injected host failures, in turn power
# losses (`corral lab kill`), partitions (`corral lab partition`), and agents SIGKILLed as their
# host is partitioned (the fencing watchdog's case), on a 4-host lab
# (index 170, /tmp/corral-bench-170) running 4 HA VMs (128 MiB, --ha restart-fresh). Each
# failure hits the ready host holding most HA VMs; after it, the host is healed and, if the
# damping quarantined it, uncordoned (what an operator would do) so the rotation goes on.
#
# Per failure, from the controller's events (same clock as the injection): time to detection
# (`host.failed`) and to every one of its HA VMs running again elsewhere with its guest up
# (`vm.failover`, emitted once the guest answers). corral-qemu-watch reads every QEMU process on
# the machine every 20 ms during the whole run and counts, per VM, the lab hosts (network
# namespaces) running it: a double run is any sample with two. Then BENCH_HA_PAUSES (default 5)
# controller pauses of 3 s (SIGSTOP/SIGCONT) and a 15 s watch after each: any `host.failed`
# or VM restart is a false failover. Then a controller outage of BENCH_HA_OUTAGE_S (60) s: VMs
# lost must be 0. Last, controller failover: on a second lab with two
# controllers on etcd, the leader is killed BENCH_HA_LEADER_KILLS (default 5) times and the time
# until the standby leads is measured.
#
# Writes bench/results/ha.json and bench/results/ha.md. Needs root and jq.
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
forget_caller_lab
cli_bin
FAILURES=${BENCH_HA_FAILURES:-20}
PAUSES=${BENCH_HA_PAUSES:-5}
INDEX=170
DIR=/tmp/corral-bench-$INDEX
OUT=$REPO/bench/results

SAMPLER=""
SAMPLES=$(mktemp)
cleanup() {
	[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
	C lab down --dir "$DIR" >/dev/null 2>&1 || true
	C lab down --dir /tmp/corral-bench-171 >/dev/null 2>&1 || true
	rm -f "$SAMPLES"
}
trap cleanup EXIT
cleanup
lab_up "$DIR" "$INDEX" 4
eval "$(C lab status --dir "$DIR" | grep '^export')"
export CORRAL_LAB_DIR=$DIR
accel=$(C host list -o json | jq -r '.[0].accel')

VMS=(ha-1 ha-2 ha-3 ha-4)
for i in "${!VMS[@]}"; do
	C vm create "${VMS[$i]}" --memory 128M --host "lab-$((i + 1))" --ha restart-fresh >/dev/null
done

# Every 20 ms, for each VM, the lab hosts (network namespaces) with a QEMU process of it.
WATCH=$(dirname "$CORRAL_BIN")/corral-qemu-watch
[ -x "$WATCH" ] || (cd "$REPO" && cargo build --quiet --release -p corral-bench)
"$WATCH" --prefix ha- --interval-ms 20 --out "$SAMPLES" &
SAMPLER=$!

events_since() { C events -o json | jq --argjson t "$1" '[.[] | select(.ms >= $t)]'; }

rows=()
for n in $(seq "$FAILURES"); do
	# Power losses, partitions, and an agent killed as its host is cut off (its fencing
	# watchdog must stop the HA VMs before they start elsewhere).
	case $((n % 3)) in
	1) kind=kill ;;
	2) kind=partition ;;
	0) kind=agent-kill+partition ;;
	esac
	# The ready host with most HA VMs.
	victim=$(C host list -o json | jq -r --argjson vms "$(C vm list -o json)" '
		[.[] | select(.state == "ready") | .name as $h
		 | {h: $h, n: ([$vms[] | select(.host == $h and .ha == "restart-fresh" and .state == "running")] | length)}]
		| map(select(.n > 0)) | sort_by(-.n) | .[0].h // empty')
	if [ -z "$victim" ]; then
		log "no ready host holds an HA VM; waiting for recovering hosts"
		sleep 5
		continue
	fi
	mine=$(C vm list -o json | jq -c --arg h "$victim" '[.[] | select(.host == $h and .ha == "restart-fresh") | .name]')
	t0=$(now_ms)
	if [ "$kind" = agent-kill+partition ]; then
		apid=$(jq -r --arg h "$victim" '.hosts[] | select(.name == $h) | .agent_pid' "$DIR/lab.json")
		kill -9 "$apid"
		C lab partition "$victim" >/dev/null 2>&1
	else
		C lab "$kind" "$victim" >/dev/null 2>&1
	fi
	log "failure $n: $kind $victim (VMs $mine)"
	want=$(jq length <<<"$mine")
	deadline=$((t0 + 120000))
	while :; do
		ev=$(events_since "$t0")
		det=$(jq -r --arg h "$victim" '[.[] | select(.kind == "host.failed" and .subject == $h) | .ms][0] // empty' <<<"$ev")
		got=$(jq -r --argjson m "$mine" '[.[] | select(.kind == "vm.failover" and (.subject as $s | $m | index($s)))] | length' <<<"$ev")
		[ -n "$det" ] && [ "$got" -ge "$want" ] && break
		[ "$(now_ms)" -gt $deadline ] && { log "failure $n: not recovered within 120 s"; break; }
		sleep 0.2
	done
	ready=$(jq -r --argjson m "$mine" '[.[] | select(.kind == "vm.failover" and (.subject as $s | $m | index($s))) | .ms] | max // empty' <<<"$ev")
	rows+=("$(jq -cn --argjson n "$n" --arg kind "$kind" --arg host "$victim" --argjson vms "$want" \
		--argjson det "${det:-null}" --argjson ready "${ready:-null}" --argjson t0 "$t0" \
		'{failure: $n, kind: $kind, host: $host, vms: $vms,
		  detect_ms: (if $det then $det - $t0 else null end),
		  all_ready_ms: (if $ready then $ready - $t0 else null end)}')")
	log "failure $n: detected after $((${det:-$t0} - t0)) ms, all ready after $((${ready:-$t0} - t0)) ms"
	C lab heal "$victim" >/dev/null 2>&1
	C host uncordon "$victim" >/dev/null 2>&1 || true
done

# False failovers: the controller stops for 3 s, then is watched for 15 s.
pids_of() { for v in "${VMS[@]}"; do pgrep -f "process=corral-$v( |\$)" || true; done | sort | tr '\n' ' '; }
false_failovers=0
for p in $(seq "$PAUSES"); do
	before=$(pids_of)
	t0=$(now_ms)
	cpid=$(jq -r .controller_pid "$DIR/lab.json")
	kill -STOP "$cpid"
	sleep 3
	kill -CONT "$cpid"
	sleep 15
	bad=$(events_since "$t0" | jq '[.[] | select(.kind == "host.failed" or .kind == "vm.failover" or .kind == "vm.restarted")] | length')
	after=$(pids_of)
	[ "$before" != "$after" ] && bad=$((bad + 1))
	log "pause $p: $bad false failover(s)"
	false_failovers=$((false_failovers + bad))
done

# A control-plane outage: the only controller stops for BENCH_HA_OUTAGE_S (default 60) s, then
# is watched for 15 s. Every VM must keep its QEMU process; nothing may be fenced or failed
# over.
OUTAGE_S=${BENCH_HA_OUTAGE_S:-60}
before=$(pids_of)
t0=$(now_ms)
cpid=$(jq -r .controller_pid "$DIR/lab.json")
kill -STOP "$cpid"
sleep "$OUTAGE_S"
kill -CONT "$cpid"
sleep 15
after=$(pids_of)
outage_lost=$(comm -23 <(tr ' ' '\n' <<<"$before" | grep . | sort) <(tr ' ' '\n' <<<"$after" | grep . | sort) | wc -l)
outage_events=$(events_since "$t0" | jq '[.[] | select(.kind == "host.failed" or .kind == "host.fenced" or .kind == "vm.failover" or .kind == "vm.restarted")] | length')
log "controller outage of $OUTAGE_S s: $outage_lost VM(s) lost, $outage_events failover event(s)"

kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
C lab down --dir "$DIR" >/dev/null 2>&1 || true

# Controller failover with etcd: a lab of one host and two controllers sharing a 3-member etcd
# cluster; the leader is killed BENCH_HA_LEADER_KILLS times (default 5) and the time until
# the other leads is measured; the killed one is started again (`lab up`) before the next.
CDIR=/tmp/corral-bench-171
C lab down --dir "$CDIR" >/dev/null 2>&1 || true
C lab up --hosts 1 --controllers 2 --index 171 --dir "$CDIR" >/dev/null
ctl() { CORRAL_LAB_DIR=$CDIR CORRAL_URL=$(jq -r '[.url] + [.standby_controllers[].url] | join(",")' "$CDIR/lab.json") C "$@"; }
leader_url() { ctl ha controllers -o json | jq -r '[.[] | select(.leading == true) | .url][0] // empty'; }
takeovers=()
for k in $(seq "${BENCH_HA_LEADER_KILLS:-5}"); do
	l=""
	while [ -z "$l" ]; do l=$(leader_url); sleep 0.2; done
	pid=$(jq -r --arg u "$l" 'if .url == $u then .controller_pid else (.standby_controllers[] | select(.url == $u) | .pid) end' "$CDIR/lab.json")
	t0=$(now_ms)
	kill -9 "$pid"
	while :; do
		n=$(leader_url)
		[ -n "$n" ] && [ "$n" != "$l" ] && break
		sleep 0.05
	done
	ms=$(($(now_ms) - t0))
	takeovers+=("$ms")
	log "leader kill $k: $l killed, $n leads after $ms ms"
	C lab up --hosts 1 --controllers 2 --index 171 --dir "$CDIR" >/dev/null
done
C lab down --dir "$CDIR" >/dev/null 2>&1 || true
takeover_json=$(printf '%s\n' "${takeovers[@]}" | jq -s '.')
double=$(jq .double_run_samples "$SAMPLES")
nsamples=$(jq .samples "$SAMPLES")
double_vms=$(jq -r '.double_run_vms | join(" ")' "$SAMPLES")

mkdir -p "$OUT"
printf '%s\n' "${rows[@]}" | jq -s --arg cmd "${BENCH_COMMAND:-bash bench/ha.sh}" --arg accel "$accel" \
	--argjson double "$double" --argjson samples "$nsamples" --arg dvms "$double_vms" \
	--argjson ff "$false_failovers" --argjson pauses "$PAUSES" --argjson takeovers "$takeover_json" \
	--argjson outage_s "$OUTAGE_S" --argjson outage_lost "$outage_lost" --argjson outage_events "$outage_events" "$JQ_MED"'
	{command: $cmd, date: (now | todate), accel: $accel, failures: .,
	 detect_ms: {median: ([.[].detect_ms | select(. != null)] | med), max: ([.[].detect_ms | select(. != null)] | max)},
	 all_ready_ms: {median: ([.[].all_ready_ms | select(. != null)] | med), max: ([.[].all_ready_ms | select(. != null)] | max)},
	 unrecovered: ([.[] | select(.all_ready_ms == null)] | length),
	 double_run_samples: $double, samples: $samples, double_run_vms: $dvms,
	 controller_pauses: $pauses, false_failovers: $ff,
	 controller_outage: {seconds: $outage_s, vms_lost: $outage_lost, failover_events: $outage_events},
	 agent_kill_partition: {failures: ([.[] | select(.kind == "agent-kill+partition")] | length),
	   all_ready_ms: ([.[] | select(.kind == "agent-kill+partition") | .all_ready_ms | select(. != null)] | med)},
	 controller_failover_ms: {runs: $takeovers, median: ($takeovers | med), max: ($takeovers | max)}}' >"$OUT/ha.json"

{
	echo "# High availability"
	echo
	echo "\`${BENCH_COMMAND:-bash bench/ha.sh}\`, $(date -u +%F). 4 lab hosts, 4 HA VMs (128 MiB, restart-fresh), accelerator $accel; lease 7 s, suspect after 2 s (the defaults)."
	echo
	echo "| # | fault | host | VMs | detected | all running elsewhere |"
	echo "|---|---|---|---|---|---|"
	jq -r '.failures[] | "| \(.failure) | \(.kind) | \(.host) | \(.vms) | \(.detect_ms // "-") ms | \(.all_ready_ms // "-") ms |"' "$OUT/ha.json"
	echo
	jq -r '"Detection: median \(.detect_ms.median) ms, max \(.detect_ms.max) ms (goal: under 5000 ms).",
		"All HA VMs running elsewhere, guests up: median \(.all_ready_ms.median) ms, max \(.all_ready_ms.max) ms (goal: under 15000 ms); not recovered: \(.unrecovered).",
		"Double runs: \(.double_run_samples) of \(.samples) samples of every QEMU process (goal: 0).",
		"False failovers over \(.controller_pauses) controller pauses of 3 s: \(.false_failovers) (goal: 0).",
		"Controller outage of \(.controller_outage.seconds) s (SIGSTOP): VMs lost \(.controller_outage.vms_lost), failover events \(.controller_outage.failover_events) (goal: 0 and 0).",
		"Agent killed as its host is cut off: \(.agent_kill_partition.failures) times, HA VMs running elsewhere after a median \(.agent_kill_partition.all_ready_ms) ms; double runs are counted with the rest above (goal: 0).",
		"Controller failover with etcd (leader killed, 2 controllers, 3 etcd members, --leader-ttl 3 s): median \(.controller_failover_ms.median) ms, max \(.controller_failover_ms.max) ms over \(.controller_failover_ms.runs | length) kills."' "$OUT/ha.json"
} >"$OUT/ha.md"
log "results in $OUT/ha.md"
cat "$OUT/ha.md" >&2
