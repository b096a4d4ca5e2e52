#!/usr/bin/env bash
# Virtual-network benchmarks: guests of one cluster talking over its VXLAN overlay. Writes
# bench/results/network.json (machine-readable) and bench/results/network.md (for people), only
# when every part succeeded. On a 3-host lab (index 170, /tmp/corral-bench-170), 1 vCPU / 128 MiB
# guests:
#
#   1. latency     `ping -c 50 -i 0.2` from inside a guest to its peer, by name: a pair on
#                  DIFFERENT hosts (cluster of 2 with anti_affinity = true: VXLAN between two
#                  host namespaces) and a pair on the SAME host (cluster of 2 with policy = "pack":
#                  one bridge, no VXLAN); both are checked. min/avg/max from busybox ping; mdev
#                  (which busybox does not print) computed from the 50 RTTs as iputils does,
#                  sqrt(mean(t^2) - mean(t)^2); the median RTT as well (robust to load spikes).
#   2. throughput  the same pairs: the receiver runs `sleep 900 | nc -l -p 5001 >/dev/null`
#                  (busybox nc, in the background; not `</dev/null`: see tput_run), the sender
#                  `dd if=/dev/zero bs=64k count=N | nc PEER 5001`,
#                  timed in the sender with /proc/uptime (10 ms resolution; busybox date has no
#                  %N). busybox nc exits only once the receiver closed, so the time covers the
#                  whole transfer. BENCH_RUNS runs of each pair, alternating, median. The bytes
#                  are checked on the receiver's eth0 (rx_bytes grew by at least N x 64 KiB).
#   3. reach       a running cluster of 2 (policy spread) grown by one member BENCH_SCALES times
#                  (`cluster scale --size K+1 --no-wait`): from the operation's started_ms to the
#                  first reply to a ping from an existing member (on another host than the new one
#                  when there is one) to the new member's IP. The ping runs inside that member
#                  (`ping -i 0.2`, first "bytes from" line, read against /proc/uptime) and the
#                  guest clock is mapped to the host's by timing `cat /proc/uptime` execs
#                  (tightest of 3, before and after: the error bound is reported). Also: the
#                  new member's boot_ms (QEMU start -> guest agent answered), the operation's
#                  duration, and when its name first answered a ping from that member
#                  (/etc/hosts kept by the controller).
#
# Absolute numbers under TCG are low and bounded by the emulated CPUs, not the network; the
# different/same ratios are the point.
#
# Needs root (labs), jq, ip, awk. Run through `make bench` / bench/run.sh, or alone:
# `bash bench/network.sh` (it then builds the corral binary and the guest assets itself).
#
# Environment:
#   CORRAL_CACHE        cache root (default <repo>/.cache)
#   CORRAL_BIN          corral binary (default <repo>/target/release/corral; built if unset)
#   BENCH_RUNS          throughput runs per pair (default 3)
#   BENCH_NET_BLOCKS    64 KiB blocks sent per throughput run (default: sized by a 4 MiB warm-up
#                       transfer per pair so that the faster pair takes ~5 s, 64..4096)
#   BENCH_PINGS         pings per latency measurement (default 50)
#   BENCH_SCALES        scale-ups of one member for the reach measurement (default 3)
#   BENCH_RESULTS       output directory (default <repo>/bench/results)
#   BENCH_QUIET_PCT     before starting, wait until the CPUs are at most this % busy (default 25)
#   BENCH_QUIET_WAIT    ... for at most this many seconds, then measure anyway (default 60)
#   BENCH_COMMIT        commit recorded in the results (default: git HEAD, "+dirty" if modified)
#   BENCH_COMMAND       command line recorded in the results
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
forget_caller_lab
GUEST="$CORRAL_CACHE/guest"
RESULTS=${BENCH_RESULTS:-$REPO/bench/results}
RUNS=${BENCH_RUNS:-3}
BLOCKS=${BENCH_NET_BLOCKS:-}
PINGS=${BENCH_PINGS:-50}
SCALES=${BENCH_SCALES:-3}
QUIET_PCT=${BENCH_QUIET_PCT:-25}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
COMMAND=${BENCH_COMMAND:-bash bench/network.sh}
PORT=5001
REACH_TIMEOUT_S=240

LAB_INDEX=170
LAB_DIR=/tmp/corral-bench-$LAB_INDEX
LAB_URL=http://198.18.$LAB_INDEX.1:7700
HOSTS=3

T_START=$EPOCHSECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

need_root
need_commands jq ip awk

# --- build -------------------------------------------------------------------------------------

cd "$REPO"
build_unless_given
SRC_BIN=${CORRAL_BIN:-$REPO/target/release/corral}
need_bin_and_guest "$SRC_BIN"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/corral-bench-network.XXXXXX")
WORK="$SCRATCH/work"
mkdir -p "$WORK"
# A private copy of the binary: the daemons and every client call are the same build even if
# target/release/corral is rebuilt while this runs.
BIN="$SCRATCH/corral"
cp "$SRC_BIN" "$BIN"
POLLER_PID=""

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	[ -n "$POLLER_PID" ] && kill "$POLLER_PID" 2>/dev/null
	wait 2>/dev/null
	finish_labs "$rc" "$LAB_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers (the shared ones are in bench/lib/common.sh) ---------------------------------------

# QEMU processes on the machine that are not this lab's (they compete for the CPUs).
others_qemu() { pgrep -f '^qemu-system-' | while read -r p; do
	tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$LAB_DIR/" || echo "$p"
done | wc -l; }
# Conditions a part ran under -> $WORK/cond-PART.json (no waiting: this lab's own guests are
# part of the load by then).
conditions() { # PART
	jq -n --argjson busy "$(cpu_busy_pct)" --argjson q "$(others_qemu)" --arg l "$(cut -d' ' -f1-3 /proc/loadavg)" \
		'{cpu_busy_pct: $busy, other_qemu_processes: $q, loadavg: $l}' >"$WORK/cond-$1.json"
}
# Waits (bounded) until the machine is quiet before the lab starts -> $WORK/cond-start.json.
wait_quiet_start() {
	await_quiet "" others_qemu "of others running"
	jq -n --argjson busy "$QUIET_BUSY" --argjson q "$(others_qemu)" --argjson w "$QUIET_SPENT_S" --arg l "$(cut -d' ' -f1-3 /proc/loadavg)" \
		'{cpu_busy_pct: $busy, other_qemu_processes: $q, waited_s: $w, loadavg: $l}' >"$WORK/cond-start.json"
}
# Runs a shell command in a guest; its output on stdout, corral's exit code (the command's).
gexec() { # VM TIMEOUT_S SCRIPT
	"$BIN" vm exec "$1" --timeout "$2" -- sh -c "$3"
}
member_field() { # CLUSTER_JSON_FILE NAME FIELD
	jq -r --arg n "$2" --arg f "$3" '.members[] | select(.name == $n) | .[$f]' "$1"
}
# Maps a guest's /proc/uptime to host time: "offset_ms halfwidth_ms", offset = host ms - guest
# uptime ms, from the exec with the shortest round trip of 3.
guest_clock() { # VM
	local best="" i ta tb u
	for i in 1 2 3; do
		ta=$(now_ms)
		u=$(gexec "$1" 10 'cat /proc/uptime' | cut -d' ' -f1)
		tb=$(now_ms)
		best=$(printf '%s\n%s %s %s\n' "$best" "$ta" "$tb" "$u" | awk 'NF == 3 { rt = $2 - $1; if (!seen || rt < brt) { seen = 1; brt = rt; b = $0 } } END { print b }')
	done
	# %.0f: mawk's %d stops at 2^31.
	awk '{ printf "%.0f %.0f\n", ($1 + $2) / 2 - $3 * 1000, ($2 - $1 + 1) / 2 + 5 }' <<<"$best"
}

# --- machine facts, lab ------------------------------------------------------------------------

machine_facts >"$WORK/machine.json"

wait_quiet_start
lab_up "$LAB_DIR" "$LAB_INDEX" "$HOSTS"
use_lab "$LAB_DIR" "$LAB_URL"
for _ in $(seq 100); do
	[ "$(corral host list --output json | jq '[.[] | select(.state == "ready")] | length')" -eq "$HOSTS" ] && break
	sleep 0.2
done
corral host show lab-1 --output json >"$WORK/host-lab-1.json"
ACCEL=$(jq -r .accel "$WORK/host-lab-1.json")
ACCEL_NOTE=$(jq -r .accel_note "$WORK/host-lab-1.json")
log "lab: accelerator $ACCEL ($ACCEL_NOTE)"

cat >"$WORK/anti.toml" <<'EOF'
template = "base"
vcpus = 1
memory = "128M"

[placement]
anti_affinity = true
EOF
cat >"$WORK/pack.toml" <<'EOF'
template = "base"
vcpus = 1
memory = "128M"

[placement]
policy = "pack"
EOF
cat >"$WORK/spread.toml" <<'EOF'
template = "base"
vcpus = 1
memory = "128M"

[placement]
policy = "spread"
EOF
for p in anti pack spread; do
	corral profile create "net$p" --file "$WORK/$p.toml" --output json >/dev/null
done

# --- the two pairs -----------------------------------------------------------------------------

log "deploying cluster 'diff' (2 members, anti_affinity) and cluster 'same' (2 members, pack), one after the other"
for c in diff same; do
	prof=netanti
	[ $c = same ] && prof=netpack
	corral cluster create "$c" --profile "$prof" --size 2 --output json >"$WORK/create-$c.json"
	jq -e '.state == "succeeded"' "$WORK/create-$c.json" >/dev/null ||
		die "cluster $c: $(jq -c '{state, messages}' "$WORK/create-$c.json")"
	corral cluster show "$c" --output json >"$WORK/show-$c.json"
	jq -e '[.members[] | select(.state == "running")] | length == 2' "$WORK/show-$c.json" >/dev/null ||
		die "cluster $c: not 2 running members: $(jq -c '[.members[] | {name, state}]' "$WORK/show-$c.json")"
	log "cluster $c: $(jq -r '[.members[] | "\(.name) on \(.host) \(.ip)"] | join(", ")' "$WORK/show-$c.json"), deployed in $(jq '.finished_ms - .started_ms' "$WORK/create-$c.json") ms"
done
DIFF_H1=$(member_field "$WORK/show-diff.json" diff-1 host)
DIFF_H2=$(member_field "$WORK/show-diff.json" diff-2 host)
SAME_H1=$(member_field "$WORK/show-same.json" same-1 host)
SAME_H2=$(member_field "$WORK/show-same.json" same-2 host)
[ "$DIFF_H1" != "$DIFF_H2" ] || die "anti-affinity put diff-1 and diff-2 both on $DIFF_H1"
[ "$SAME_H1" = "$SAME_H2" ] || die "pack put same-1 on $SAME_H1 and same-2 on $SAME_H2: not one host"
DIFF_IP2=$(member_field "$WORK/show-diff.json" diff-2 ip)
DIFF_IP2=${DIFF_IP2%/*}
SAME_IP2=$(member_field "$WORK/show-same.json" same-2 ip)
SAME_IP2=${SAME_IP2%/*}
# Both pairs: sender/pinger member 1, receiver member 2.
declare -A PEER_IP=([diff]=$DIFF_IP2 [same]=$SAME_IP2)

# --- 1. latency --------------------------------------------------------------------------------

# Let this lab's fresh guests finish settling (bounded) before timing packets.
t0=$EPOCHSECONDS
while [ "$(cpu_busy_pct)" -gt 50 ] && [ $((EPOCHSECONDS - t0)) -lt 20 ]; do :; done
SETTLE_S=$((EPOCHSECONDS - t0))
conditions latency
for c in diff same; do
	log "latency $c: ping -c $PINGS -i 0.2 $c-2 from $c-1"
	gexec "$c-1" 120 "ping -c $PINGS -i 0.2 $c-2" >"$WORK/ping-$c.txt" || die "ping $c-1 -> $c-2 failed: $(tail -3 "$WORK/ping-$c.txt")"
	awk -v c="$c" '
		/bytes from/ { for (i = 1; i <= NF; i++) if ($i ~ /^time=/) { t = substr($i, 6) + 0; n++; s += t; ss += t * t; v[n] = t
			if (n == 1 || t < mn) mn = t; if (n == 1 || t > mx) mx = t } }
		/packets transmitted/ { sent = $1; recv = $4 }
		/round-trip/ { line = $0 }
		END {
			if (n == 0) exit 1
			# median
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
			med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
			avg = s / n; md = ss / n - avg * avg; md = (md > 0) ? sqrt(md) : 0
			printf "{\"pair\": \"%s\", \"sent\": %d, \"received\": %d, \"min_ms\": %.3f, \"avg_ms\": %.3f, \"max_ms\": %.3f, \"mdev_ms\": %.3f, \"median_ms\": %.3f, \"busybox_summary\": \"%s\"}\n",
				c, sent, recv, mn, avg, mx, md, med, line
		}' "$WORK/ping-$c.txt" >"$WORK/lat-$c.json" || die "no replies in $WORK/ping-$c.txt"
	log "latency $c: $(jq -r '"min/avg/max/mdev \(.min_ms)/\(.avg_ms)/\(.max_ms)/\(.mdev_ms) ms, median \(.median_ms) ms, \(.received)/\(.sent) received"' "$WORK/lat-$c.json")"
done

# --- 2. throughput -----------------------------------------------------------------------------

conditions throughput
# One transfer of BLOCKS x 64 KiB from PAIR-1 to PAIR-2 -> $WORK/tput-PAIR-RUN.json.
# The receiver's nc gets a stdin that stays open (a `sleep` it is piped from, killed afterwards):
# busybox nc half-closes the connection when its stdin ends, and the sender's nc exits as soon
# as it reads that end, so with `</dev/null` the sender stops after a few KiB and reports success.
tput_run() { # PAIR RUN BLOCKS
	local c=$1 r=$2 blocks=$3 bytes=$(($3 * 65536)) rx0 rx1 out rc s e
	rx0=$(gexec "$c-2" 30 "sh -c 'echo \$\$ >/tmp/bench-hold.pid; exec sleep 900' | nc -l -p $PORT >/dev/null 2>&1 &
		i=0; until netstat -ltn 2>/dev/null | grep -q ':$PORT '; do i=\$((i + 1)); [ \$i -ge 100 ] && exit 3; sleep 0.1; done
		cat /sys/class/net/eth0/statistics/rx_bytes") || die "throughput $c run $r: no listener on $c-2:$PORT"
	out=$(gexec "$c-1" 300 "read s _ </proc/uptime; dd if=/dev/zero bs=64k count=$blocks 2>/dev/null | nc ${PEER_IP[$c]} $PORT; rc=\$?; read e _ </proc/uptime; echo \$rc \$s \$e") ||
		die "throughput $c run $r: the sender failed: $out"
	read -r rc s e <<<"$out"
	[ "$rc" = 0 ] || die "throughput $c run $r: nc exited with $rc"
	# The receiver's nc exits when the sender's side closes; then count what arrived.
	rx1=$(gexec "$c-2" 30 "i=0; while pidof nc >/dev/null; do i=\$((i + 1)); [ \$i -ge 50 ] && exit 3; sleep 0.1; done
		kill \$(cat /tmp/bench-hold.pid) 2>/dev/null; cat /sys/class/net/eth0/statistics/rx_bytes") || die "throughput $c run $r: the receiver's nc did not exit"
	[ $((rx1 - rx0)) -ge "$bytes" ] || die "throughput $c run $r: $c-2's eth0 received $((rx1 - rx0)) bytes, less than the $bytes sent"
	jq -n --arg c "$c" --arg r "$r" --argjson s "$s" --argjson e "$e" --argjson b "$bytes" --argjson rx $((rx1 - rx0)) \
		'{pair: $c, run: $r, seconds: ($e - $s | . * 100 | round / 100), bytes: $b, rx_bytes_eth0: $rx,
		  mb_per_s: ($b / 1e6 / ($e - $s) | . * 100 | round / 100)}' >"$WORK/tput-$c-$r.json"
	log "throughput $c run $r: $(jq -r '"\(.bytes / 1048576) MiB in \(.seconds) s = \(.mb_per_s) MB/s"' "$WORK/tput-$c-$r.json")"
}
if [ -n "${BENCH_NET_BLOCKS:-}" ]; then
	BLOCKS_FROM="BENCH_NET_BLOCKS"
else
	# A warm-up transfer of 4 MiB per pair; then BLOCKS so that the faster pair takes ~5 s.
	log "throughput: warm-up of 4 MiB per pair to size the runs"
	tput_run diff warmup 64
	tput_run same warmup 64
	fast=$(jq -s 'map(.mb_per_s) | max' "$WORK/tput-diff-warmup.json" "$WORK/tput-same-warmup.json")
	BLOCKS=$(awk -v r="$fast" 'BEGIN { b = int(r * 1e6 * 5 / 65536 / 16 + 0.5) * 16; if (b < 64) b = 64; if (b > 4096) b = 4096; print b }')
	BLOCKS_FROM="sized from the warm-up: the faster pair did $fast MB/s, aimed at ~5 s"
fi
BYTES=$((BLOCKS * 65536))
log "throughput: $RUNS runs per pair of dd bs=64k count=$BLOCKS | nc ($(awk -v b="$BYTES" 'BEGIN { print b / 1048576 }') MiB), alternating"
for r in $(seq "$RUNS"); do
	tput_run diff "$r" "$BLOCKS"
	tput_run same "$r" "$BLOCKS"
done
for c in diff same; do
	jq -s --arg c "$c" "$JQ_MED"'{pair: $c, runs: ., mb_per_s: ([.[].mb_per_s] | {median: med, min: min, max: max})}' \
		$(for r in $(seq "$RUNS"); do echo "$WORK/tput-$c-$r.json"; done) >"$WORK/tput-$c.json"
done

log "deleting clusters diff and same"
for c in diff same; do corral cluster delete "$c" >/dev/null; done

# --- 3. placed -> reachable --------------------------------------------------------------------

log "reach: deploying cluster 'grow' (2 members, spread)"
corral cluster create grow --profile netspread --size 2 --output json >"$WORK/create-grow.json"
jq -e '.state == "succeeded"' "$WORK/create-grow.json" >/dev/null || die "cluster grow: $(jq -c '{state, messages}' "$WORK/create-grow.json")"
conditions reach
size=2
for k in $(seq "$SCALES"); do
	corral cluster show grow --output json >"$WORK/grow-before-$k.json"
	mapfile -t OLD < <(jq -r '.members[].name' "$WORK/grow-before-$k.json")
	corral cluster scale grow --size $((size + 1)) --no-wait --output json >"$WORK/scale-$k.json"
	op=$(jq -r .id "$WORK/scale-$k.json")
	started=$(jq -r .started_ms "$WORK/scale-$k.json")
	[ "$started" != null ] || die "scale $k: no started_ms in $(jq -c . "$WORK/scale-$k.json")"
	size=$((size + 1))
	# The new member, its IP and host (known once placed).
	new="" nip="" nhost=""
	for _ in $(seq 200); do
		corral cluster show grow --output json >"$WORK/grow-$k.json"
		new=$(jq -r --argjson old "$(printf '%s\n' "${OLD[@]}" | jq -R . | jq -s .)" \
			'[.members[] | select(.name as $n | $old | index($n) | not)] | if length == 1 then .[0].name else "" end' "$WORK/grow-$k.json")
		if [ -n "$new" ]; then
			nip=$(member_field "$WORK/grow-$k.json" "$new" ip)
			nhost=$(member_field "$WORK/grow-$k.json" "$new" host)
			[ -n "$nip" ] && [ "$nip" != null ] && [ -n "$nhost" ] && [ "$nhost" != null ] && break
		fi
		sleep 0.1
	done
	[ -n "$new" ] && [ "$nip" != null ] && [ "$nhost" != null ] || die "scale $k: no new member with an IP and a host in $(jq -c '[.members[] | {name, host, ip}]' "$WORK/grow-$k.json")"
	nip=${nip%/*}
	# The pinger: an existing running member on another host than the new one, if any.
	pinger=$(jq -r --arg h "$nhost" --arg n "$new" '[.members[] | select(.name != $n and .state == "running")] |
		(map(select(.host != $h)) + .) | .[0].name' "$WORK/grow-$k.json")
	phost=$(member_field "$WORK/grow-$k.json" "$pinger" host)
	# The new member's states as the controller reports them, every 0.25 s, in the background.
	(while :; do printf '%s %s\n' "$(now_ms)" "$("$BIN" vm show "$new" --output json 2>/dev/null | jq -r '.state // "?"')"; sleep 0.25; done) >"$WORK/states-$k.txt" 2>/dev/null &
	POLLER_PID=$!
	clk=$(guest_clock "$pinger") || die "scale $k: cannot read the clock of $pinger"
	read -r off0 err0 <<<"$clk"
	log "scale $k: $new ($nip) placed on $nhost; pinging it from $pinger on $phost"
	out=$(gexec "$pinger" $((REACH_TIMEOUT_S + 60)) "
		ping -i 0.2 -w $REACH_TIMEOUT_S $nip 2>&1 | { if grep -m1 'bytes from'; then read e _ </proc/uptime; echo \"reach \$e\"; else echo noreach; fi; }
		i=0; until ping -c 1 -W 1 $new >/dev/null 2>&1; do i=\$((i + 1)); [ \$i -ge 300 ] && { echo noname; exit 0; }; sleep 0.2; done
		read n _ </proc/uptime; echo \"name \$n \$i\"") || die "scale $k: the ping loop in $pinger failed: $out"
	clk=$(guest_clock "$pinger") || die "scale $k: cannot read the clock of $pinger"
	read -r off1 err1 <<<"$clk"
	grep -q '^reach ' <<<"$out" || die "scale $k: $new ($nip) did not answer $pinger within $REACH_TIMEOUT_S s: $out"
	grep -q '^name ' <<<"$out" || die "scale $k: $new answered by IP but not by name from $pinger within 60 s"
	corral operation wait "$op" --output json >"$WORK/op-$k.json" || die "scale $k: operation $op failed: $(jq -c '{state, messages}' "$WORK/op-$k.json")"
	sleep 0.5
	kill "$POLLER_PID" 2>/dev/null
	wait "$POLLER_PID" 2>/dev/null || true
	POLLER_PID=""
	corral vm show "$new" --output json >"$WORK/vm-$k.json"
	jq -e '.state == "running" and .boot_ms != null' "$WORK/vm-$k.json" >/dev/null || die "scale $k: $new is not running: $(jq -c '{state, error}' "$WORK/vm-$k.json")"
	first_running=$(awk '$2 == "running" { print $1; exit }' "$WORK/states-$k.txt")
	seen=$(awk '{ if ($2 != last) { printf "%s%s", (n++ ? " -> " : ""), $2; last = $2 } } END { print "" }' "$WORK/states-$k.txt")
	reach_g=$(awk '/^reach / { print $2 }' <<<"$out")
	name_g=$(awk '/^name / { print $2 }' <<<"$out")
	name_fails=$(awk '/^name / { print $3 }' <<<"$out")
	seq_first=$(sed -n 's/.*seq=\([0-9]*\).*/\1/p' <<<"$out" | head -1)
	jq -n --argjson k "$k" --arg new "$new" --arg nhost "$nhost" --arg pinger "$pinger" --arg phost "$phost" \
		--argjson started "$started" --argjson finished "$(jq .finished_ms "$WORK/op-$k.json")" \
		--argjson boot "$(jq .boot_ms "$WORK/vm-$k.json")" --argjson steps "$(jq -c .steps "$WORK/op-$k.json")" \
		--argjson off0 "$off0" --argjson off1 "$off1" --argjson err "$(( err0 > err1 ? err0 : err1 ))" \
		--argjson reach_g "$reach_g" --argjson name_g "$name_g" --argjson seq "${seq_first:-null}" \
		--argjson running "${first_running:-null}" --arg seen "$seen" --argjson nf "$name_fails" \
		'(($off0 + $off1) / 2) as $off |
		 {scale: $k, size_after: ($k + 2), new_member: $new, new_host: $nhost, pinger: $pinger, pinger_host: $phost,
		  cross_host: ($nhost != $phost), started_ms: $started, finished_ms: $finished, steps: $steps,
		  reach_ms: (($reach_g * 1000 + $off) - $started | round), name_reach_ms: (($name_g * 1000 + $off) - $started | round), name_failed_tries: $nf,
		  boot_ms: $boot, operation_ms: ($finished - $started),
		  reach_after_operation_ms: (($reach_g * 1000 + $off) - $finished | round),
		  running_seen_ms: (if $running then $running - $started else null end),
		  first_reply_seq: $seq, clock_error_ms: $err, guest_clock_drift_ms: ($off1 - $off0), states_seen: $seen}' >"$WORK/reach-$k.json"
	jq -e --argjson max $((REACH_TIMEOUT_S * 1000)) '.reach_ms > 0 and .reach_ms < $max and .name_reach_ms >= .reach_ms - .clock_error_ms' "$WORK/reach-$k.json" >/dev/null ||
		die "scale $k: implausible times: $(jq -c . "$WORK/reach-$k.json")"
	log "scale $k: $(jq -r '"reachable \(.reach_ms) ms after started_ms (by name \(.name_reach_ms) ms); boot_ms \(.boot_ms); operation \(.operation_ms) ms; states: \(.states_seen)"' "$WORK/reach-$k.json")"
done
jq -s "$JQ_MED"'. as $s | def st(f): [$s[] | f] | {median: med, min: min, max: max};
	{scales: $s, reach_ms: st(.reach_ms), name_reach_ms: st(.name_reach_ms), boot_ms: st(.boot_ms),
	 operation_ms: st(.operation_ms), reach_after_operation_ms: st(.reach_after_operation_ms)}' \
	$(for k in $(seq "$SCALES"); do echo "$WORK/reach-$k.json"; done) >"$WORK/reach.json"

# --- lab down, checked -------------------------------------------------------------------------

log "lab down ($LAB_DIR)"
lab_down_checked "$LAB_DIR" "$LAB_INDEX"

# --- results -----------------------------------------------------------------------------------

mkdir -p "$RESULTS"
commit=$(bench_commit)
jq -n --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg cmd "$COMMAND" --arg commit "$commit" \
	--argjson total "$((EPOCHSECONDS - T_START))" \
	--argjson machine "$(cat "$WORK/machine.json")" --arg accel "$ACCEL" --arg note "$ACCEL_NOTE" \
	--arg l0 "$LOAD_START" --arg l1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
	--argjson c0 "$(cat "$WORK/cond-start.json")" --argjson cl "$(cat "$WORK/cond-latency.json")" \
	--argjson ct "$(cat "$WORK/cond-throughput.json")" --argjson cr "$(cat "$WORK/cond-reach.json")" \
	--argjson ld "$(cat "$WORK/lat-diff.json")" --argjson ls "$(cat "$WORK/lat-same.json")" \
	--argjson td "$(cat "$WORK/tput-diff.json")" --argjson ts "$(cat "$WORK/tput-same.json")" \
	--argjson reach "$(cat "$WORK/reach.json")" \
	--arg dh "$DIFF_H1 + $DIFF_H2" --arg sh "$SAME_H1" \
	--argjson dd "$(jq '.finished_ms - .started_ms' "$WORK/create-diff.json")" --argjson sd "$(jq '.finished_ms - .started_ms' "$WORK/create-same.json")" \
	--argjson settle "$SETTLE_S" --argjson pings "$PINGS" --argjson blocks "$BLOCKS" --argjson runs "$RUNS" --arg bfrom "$BLOCKS_FROM" \
	--argjson warm "$(cat "$WORK"/tput-*-warmup.json 2>/dev/null | jq -s . || echo '[]')" \
	'def r(x): x * 100 | round / 100;
	 {benchmark: "network", date: $date, command: $cmd, commit: $commit, total_s: $total,
	  machine: ($machine + {accel: $accel, accel_note: $note, loadavg_start: $l0, loadavg_end: $l1}),
	  conditions_at_start: $c0,
	  pairs: {different_hosts: {cluster: "diff", profile: "anti_affinity = true", hosts: $dh, deploy_ms: $dd},
	          same_host: {cluster: "same", profile: "policy = \"pack\"", hosts: $sh, deploy_ms: $sd}},
	  latency: {conditions: ($cl + {settled_s: $settle}), command: "ping -c \($pings) -i 0.2 <peer name> (busybox, inside the guest)",
	            mdev_note: "busybox ping prints no mdev: computed from the RTTs as sqrt(mean(t^2) - mean(t)^2), as iputils does",
	            different_hosts: $ld, same_host: $ls,
	            ratio_avg: r($ld.avg_ms / $ls.avg_ms), ratio_median: r($ld.median_ms / $ls.median_ms), ratio_min: r($ld.min_ms / $ls.min_ms)},
	  throughput: {conditions: $ct, command: "dd if=/dev/zero bs=64k count=\($blocks) | nc <peer ip> 5001 -> sleep 900 | nc -l -p 5001 >/dev/null (busybox, timed with /proc/uptime in the sender)",
	               blocks: $blocks, bytes_per_run: ($blocks * 65536), blocks_from: $bfrom, warmup: $warm,
	               receiver_stdin_note: "the receiver'"'"'s nc must have a stdin that stays open: busybox nc half-closes when its stdin ends, and the sender'"'"'s nc exits (status 0) on reading that, so `nc -l -p 5001 >/dev/null </dev/null` ends every transfer after a few KiB",
	               runs_per_pair: $runs, mb: "10^6 bytes", different_hosts: $td, same_host: $ts,
	               ratio_median: r($td.mb_per_s.median / $ts.mb_per_s.median)},
	  reach: ($reach + {conditions: $cr,
	          note: "reach_ms: operation started_ms -> first reply to `ping -i 0.2 <new ip>` run in an existing member (guest uptime mapped to host time, error bound clock_error_ms); name_reach_ms: the same for `ping -c 1 <new name>` (tried every 0.2 s once the IP answered; name_failed_tries counts the misses); boot_ms: the new VM'"'"'s QEMU start -> guest agent answered; operation_ms: started_ms -> finished_ms; running_seen_ms: first `vm show` reporting running (polled every 0.25 s)"})}' \
	>"$SCRATCH/network.json"

J="$SCRATCH/network.json"
q() { jq -r "$@" "$J"; }
COND='"CPUs \(.cpu_busy_pct)% busy (2 s sample, this lab'"'"'s guests included), \(.other_qemu_processes) QEMU process(es) of others running, load \(.loadavg)."'
{
	echo "# Virtual-network benchmarks"
	echo
	echo "- Date: $(q .date) (commit $(q .commit), total $(q .total_s) s)"
	echo "- Command: \`$(q .command)\`"
	echo "- Machine: $(q .machine.nproc) CPUs ($(q .machine.cpu_model)), $(q .machine.memory_gib) GiB RAM, host kernel $(q .machine.host_kernel), /dev/kvm $(q .machine.dev_kvm)"
	echo "- Load average (1/5/15 min) at start: $(q .machine.loadavg_start), at end: $(q .machine.loadavg_end)"
	echo "- Before the lab: $(q ".conditions_at_start | \"CPUs \(.cpu_busy_pct)% busy, \(.other_qemu_processes) QEMU process(es) of others, load \(.loadavg) (waited \(.waited_s) s for a quiet machine)\"")"
	echo "- QEMU: $(q .machine.qemu_version); accelerator **$(q .machine.accel)** ($(q .machine.accel_note))"
	echo "- Guest: $(q .machine.guest_os), kernel $(q .machine.guest_kernel); 1 vCPU, 128 MiB, MTU 1450 on the cluster's VXLAN overlay"
	echo "- 3-host lab (hosts are network namespaces of one machine: \"different hosts\" means VXLAN between two namespaces over the lab's underlay bridge, \"same host\" one Linux bridge)"
	echo "- Pairs: different hosts = cluster \`diff\` ($(q .pairs.different_hosts.profile), on $(q .pairs.different_hosts.hosts)); same host = cluster \`same\` ($(q .pairs.same_host.profile), both on $(q .pairs.same_host.hosts), checked)"
	echo
	echo "Under TCG every packet is handled by emulated guest CPUs, so absolute numbers are low and noisy; the ratios are what to read."
	echo
	echo "## 1. Round-trip latency"
	echo
	echo "\`$(q .latency.command)\`. $(q .latency.mdev_note)."
	echo
	q ".latency.conditions | \"Conditions (after waiting \(.settled_s) s, at most 20, for the CPUs to be at most 50% busy): \" + $COND"
	echo
	echo "| pair | received | min | avg | max | mdev | median |"
	echo "|---|---|---|---|---|---|---|"
	q '.latency | (.different_hosts | "| different hosts | \(.received)/\(.sent) | \(.min_ms) ms | \(.avg_ms) ms | \(.max_ms) ms | \(.mdev_ms) ms | \(.median_ms) ms |"),
		(.same_host | "| same host | \(.received)/\(.sent) | \(.min_ms) ms | \(.avg_ms) ms | \(.max_ms) ms | \(.mdev_ms) ms | \(.median_ms) ms |"),
		"| **different / same** | | \(.ratio_min)x | **\(.ratio_avg)x** | | | \(.ratio_median)x |"'
	echo
	echo "A few replies delayed by CPU contention (the max column) pull avg and mdev up; min and median are the steadier comparison."
	echo
	echo "## 2. Throughput"
	echo
	echo "\`$(q .throughput.command)\`: $(q '.throughput.bytes_per_run / 1048576') MiB per run ($(q .throughput.blocks_from)); $(q .throughput.runs_per_pair) runs per pair, alternating different/same; MB = 10^6 bytes; median (min-max). Every run checked: the receiver's eth0 took in at least the bytes sent."
	echo
	echo "Note: $(q .throughput.receiver_stdin_note)."
	echo
	q ".throughput.conditions | \"Conditions: \" + $COND"
	echo
	echo "| pair | runs (MB/s) | median | min-max |"
	echo "|---|---|---|---|"
	q '.throughput | (.different_hosts | "| different hosts | \([.runs[].mb_per_s] | map(tostring) | join(", ")) | **\(.mb_per_s.median) MB/s** | \(.mb_per_s.min)-\(.mb_per_s.max) |"),
		(.same_host | "| same host | \([.runs[].mb_per_s] | map(tostring) | join(", ")) | **\(.mb_per_s.median) MB/s** | \(.mb_per_s.min)-\(.mb_per_s.max) |"),
		"| **different / same** | | **\(.ratio_median)x** | |"'
	echo
	echo "## 3. Placed -> network reachable"
	echo
	echo "A running cluster \`grow\` (spread, 2 members) grown by one member at a time with \`cluster scale grow --size K+1 --no-wait\`. $(q .reach.note)."
	echo
	q ".reach.conditions | \"Conditions: \" + $COND"
	echo
	echo "| scale | new member (host) | pinged from (host) | reachable by IP | by name | boot_ms | operation | IP reachable after operation end | vm show: running at | clock error | states seen |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|"
	q '.reach.scales[] | "| \(.size_after - 1) -> \(.size_after) | \(.new_member) (\(.new_host)) | \(.pinger) (\(.pinger_host)) | \(.reach_ms) ms | \(.name_reach_ms) ms (\(.name_failed_tries) misses) | \(.boot_ms) | \(.operation_ms) ms | \(.reach_after_operation_ms) ms | \(if .running_seen_ms then "\(.running_seen_ms) ms" else "-" end) | ±\(.clock_error_ms) ms | \(.states_seen) |"'
	q '.reach | "| **median** | | | **\(.reach_ms.median) ms** | \(.name_reach_ms.median) ms | **\(.boot_ms.median)** | \(.operation_ms.median) ms | \(.reach_after_operation_ms.median) ms | | | |"'
} >"$SCRATCH/network.md"

cp "$SCRATCH/network.json" "$RESULTS/network.json"
cp "$SCRATCH/network.md" "$RESULTS/network.md"
log "done in $((EPOCHSECONDS - T_START)) s: $RESULTS/network.json, $RESULTS/network.md"
