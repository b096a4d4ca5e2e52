#!/usr/bin/env bash
# Virtual-cluster deployment and REST API benchmarks. Writes bench/results/clusters.{json,md}
# and bench/results/api.{json,md}, only when every part succeeded.
#
#   1. deploy   a 20-VM cluster (1 vCPU, 128 MiB, spread) on a 3-host lab: request -> every
#               guest ready, from the operation's started_ms/finished_ms, the wall time of
#               `corral cluster create`, and its steps (configure/place/prepare/execute).
#               Against the FLOOR: the same 20 guests started by this script with nothing but
#               `qemu-img create` + `qemu-system-x86_64` in the same host namespaces, 7/7/6, all
#               at once, ready when the console says `corral-guest: ready`. The floor's QEMU
#               command line is the one Corral ran (read from /proc/PID/cmdline of a member),
#               with the VM's identity and paths swapped and the console on `-serial file:`.
#               BENCH_RUNS runs of each, alternating (corral, floor, corral, floor, ...).
#   2. api      on a fresh 3-host lab, with corral-load (crates/corral-bench): create
#               BENCH_API_VMS inactive VMs (POST /v1/vms, start=false: a qcow2 overlay each, no
#               boot) BENCH_API_CONCURRENCY at a time, then BENCH_API_LISTS x GET /v1/vms with
#               those VMs present.
#
# Needs root (labs), jq, qemu-img, qemu-system-x86_64, ip, cargo. Run through `make bench` /
# bench/run.sh, or alone: `bash bench/clusters.sh` (it then builds the corral binary and the
# guest assets itself). It always builds corral-load (`cargo build --release -p corral-bench`).
#
# Labs use indexes 160 (deploy) and 161 (api), in /tmp/corral-bench-160 and /tmp/corral-bench-161.
#
# Environment:
#   CORRAL_CACHE            cache root (default <repo>/.cache)
#   CORRAL_BIN              corral binary (default <repo>/target/release/corral; built if unset)
#   BENCH_RUNS              runs of corral and of the floor (default 3)
#   BENCH_CLUSTER_SIZE      VMs in the cluster (default 20)
#   BENCH_API_VMS           VMs created through the API (default 1000)
#   BENCH_API_LISTS         GET /v1/vms requests (default 2000)
#   BENCH_API_CONCURRENCY   requests in flight (default 8)
#   BENCH_PARTS             which parts to run and write results for (default "deploy api")
#   BENCH_RESULTS           output directory (default <repo>/bench/results)
#   BENCH_QUIET_PCT         before each run, wait until the CPUs are at most this % busy (default 25)
#   BENCH_QUIET_WAIT        ... for at most this many seconds, then measure anyway (default 60)
#   BENCH_COMMIT            commit recorded in the results (default: git HEAD, "+dirty" if modified)
#   BENCH_COMMAND           command line recorded in the results
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
forget_caller_lab
GUEST="$CORRAL_CACHE/guest"
RESULTS=${BENCH_RESULTS:-$REPO/bench/results}
RUNS=${BENCH_RUNS:-3}
SIZE=${BENCH_CLUSTER_SIZE:-20}
API_VMS=${BENCH_API_VMS:-1000}
API_LISTS=${BENCH_API_LISTS:-2000}
API_CONC=${BENCH_API_CONCURRENCY:-8}
PARTS=${BENCH_PARTS:-deploy api}
QUIET_PCT=${BENCH_QUIET_PCT:-25}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
COMMAND=${BENCH_COMMAND:-bash bench/clusters.sh}
READY_TIMEOUT_S=300
LOAD="$REPO/target/release/corral-load"

DEPLOY_INDEX=160
DEPLOY_DIR=/tmp/corral-bench-$DEPLOY_INDEX
DEPLOY_URL=http://198.18.$DEPLOY_INDEX.1:7700
API_INDEX=161
API_DIR=/tmp/corral-bench-$API_INDEX
API_URL=http://198.18.$API_INDEX.1:7700
HOSTS=3

T_START=$EPOCHSECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

need_root
need_commands jq qemu-img qemu-system-x86_64 ip awk cargo

# --- build -------------------------------------------------------------------------------------

cd "$REPO"
build_unless_given
BIN=${CORRAL_BIN:-$REPO/target/release/corral}
log "building corral-load (cargo build --release -p corral-bench)"
cargo build --quiet --release -p corral-bench || die "cargo build --release -p corral-bench failed"
need_bin_and_guest "$BIN"
[ -x "$LOAD" ] || die "$LOAD was not built"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/corral-bench-clusters.XXXXXX")
WORK="$SCRATCH/work"
FLOOR="$SCRATCH/floor"
mkdir -p "$WORK" "$FLOOR"
POLLER_PID=""

# Kills the floor's QEMU processes: by the PIDs in their PID files, and any other QEMU whose
# command line names a file of this script's scratch directory (one still starting when a
# failure hit). Each PID is checked against its command line first.
kill_floor() {
	local p cmd pids=()
	for p in $(pgrep -f "^qemu-system-x86_64 .*$FLOOR/" || true); do pids+=("$p"); done
	for f in "$FLOOR"/*/*/qemu.pid; do [ -f "$f" ] && pids+=("$(cat "$f")"); done
	for p in ${pids[@]+"${pids[@]}"}; do
		cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
		case "$cmd" in qemu-system-*"$FLOOR/"*) kill -KILL "$p" 2>/dev/null || true ;; esac
	done
	for p in ${pids[@]+"${pids[@]}"}; do
		for _ in $(seq 100); do
			cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
			case "$cmd" in qemu-system-*"$FLOOR/"*) sleep 0.05 ;; *) break ;; esac
		done
	done
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	[ -n "$POLLER_PID" ] && kill "$POLLER_PID" 2>/dev/null
	wait 2>/dev/null
	kill_floor
	finish_labs "$rc" "$DEPLOY_DIR" "$API_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers (the shared ones are in bench/lib/common.sh) ---------------------------------------

# CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal).
busy_s() { awk '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / 100 }' /proc/stat; }
# CPU seconds used by others during a run: all busy time minus ours. ("others" also holds this
# script's own polling, a few hundredths of a second.)
others_s() { awk -v b0="$1" -v b1="$2" -v ours="$3" 'BEGIN { x = b1 - b0 - ours; printf "%.2f\n", (x < 0 ? 0 : x) }'; }
# CPU seconds (user + system) a process has used.
cpu_s() { awk '{ printf "%.2f\n", ($14 + $15) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_sum() { local p s=0; for p in "$@"; do s=$(awk -v a="$s" -v b="$(cpu_s "$p")" 'BEGIN { printf "%.2f", a + b }'); done; echo "$s"; }
# CPU seconds used by the processes' waited-for children (an agent's qemu-img runs).
children_cpu_sum() {
	local p s=0 c
	for p in "$@"; do
		c=$(awk '{ printf "%.2f\n", ($16 + $17) / 100 }' "/proc/$p/stat" 2>/dev/null || echo 0)
		s=$(awk -v a="$s" -v b="$c" 'BEGIN { printf "%.2f", a + b }')
	done
	echo "$s"
}

# Polls console logs for the guest's ready line and appends "NAME MS" (epoch ms when first
# seen) to OUT for each, until COUNT names are there or the timeout. Runs in the background.
#   poll_ready OUT COUNT GLOB...   (GLOB: console log paths; the VM name is the parent dir)
poll_ready() {
	local out=$1 count=$2 f name n=0 deadline=$((EPOCHSECONDS + READY_TIMEOUT_S))
	shift 2
	declare -A seen=()
	: >"$out"
	while [ "$n" -lt "$count" ] && [ "$EPOCHSECONDS" -lt "$deadline" ]; do
		for f in $@; do
			[ -f "$f" ] || continue
			name=$(basename "$(dirname "$f")")
			[ -n "${seen[$name]:-}" ] && continue
			if grep -q -m1 "corral-guest: ready name=$name " "$f" 2>/dev/null; then
				seen[$name]=1
				n=$((n + 1))
				echo "$name $(now_ms)" >>"$out"
			fi
		done
		sleep 0.05
	done
}

# --- machine facts -----------------------------------------------------------------------------

COMMIT=$(bench_commit)
machine_facts | jq --arg l0 "$LOAD_START" '. + {loadavg_start: $l0}' >"$WORK/machine.json"

# --- 1. deploy: corral vs floor ----------------------------------------------------------------

# One Corral deployment. Writes $WORK/corral-RUN.json.
corral_run() { # RUN
	local run=$1 name="bc$1" t0 t1 wall f p qpids=() cpu0 cpu1 qcpu b0 b1
	wait_quiet "corral-$run"
	log "corral run $run: cluster create $name --profile small --size $SIZE --spread"
	# The same console watch as the floor's, for comparison: when each guest printed its ready
	# line (the guest agent is started just before). Corral itself waits for the agent's answer.
	poll_ready "$WORK/corral-$run.console" "$SIZE" "$DEPLOY_DIR/lab-*/vms/$name-*/console.log" &
	POLLER_PID=$!
	cpu0=$(cpu_sum "$CONTROLLER_PID" "${AGENT_PIDS[@]}")
	b0=$(busy_s)
	t0=$(now_ms)
	corral cluster create "$name" --profile small --size "$SIZE" --spread --output json >"$WORK/op-$run.json"
	t1=$(now_ms)
	cpu1=$(cpu_sum "$CONTROLLER_PID" "${AGENT_PIDS[@]}")
	wall=$((t1 - t0))
	jq -e --argjson n "$SIZE" '.state == "succeeded" and .vms == $n' "$WORK/op-$run.json" >/dev/null ||
		die "corral run $run: the deployment did not succeed: $(jq -c '{state, vms, messages}' "$WORK/op-$run.json")"
	corral cluster show "$name" --output json >"$WORK/show-$run.json"
	jq -e --argjson n "$SIZE" '(.members | length) == $n and all(.members[]; .state == "running")' "$WORK/show-$run.json" >/dev/null ||
		die "corral run $run: not every member is running: $(jq -c '[.members[] | {name, state}]' "$WORK/show-$run.json")"
	corral vm list --output json >"$WORK/vms-$run.json"
	for f in "$DEPLOY_DIR"/lab-*/vms/"$name"-*/qemu.pid; do qpids+=("$(cat "$f")"); done
	[ "${#qpids[@]}" -eq "$SIZE" ] || die "corral run $run: found ${#qpids[@]} QEMU PID files for $SIZE members"
	qcpu=$(cpu_sum "${qpids[@]}")
	b1=$(busy_s)
	# The console watch normally has every line by now; give it a moment if not.
	for _ in $(seq 100); do
		[ "$(wc -l <"$WORK/corral-$run.console")" -ge "$SIZE" ] && break
		sleep 0.05
	done
	kill "$POLLER_PID" 2>/dev/null || true
	wait "$POLLER_PID" 2>/dev/null || true
	POLLER_PID=""
	[ "$(wc -l <"$WORK/corral-$run.console")" -eq "$SIZE" ] || die "corral run $run: only $(wc -l <"$WORK/corral-$run.console") ready lines on the consoles"
	# Keep one member's QEMU command line: the floor runs exactly that, with its own identity.
	if [ ! -f "$WORK/qemu-cmdline" ]; then
		p=$(cat "$DEPLOY_DIR/lab-1/vms/$(jq -r '[.members[] | select(.host == "lab-1")][0].name' "$WORK/show-$run.json")/qemu.pid")
		cp "/proc/$p/cmdline" "$WORK/qemu-cmdline"
	fi
	jq -n --argjson run "$run" --argjson op "$(cat "$WORK/op-$run.json")" --argjson show "$(cat "$WORK/show-$run.json")" \
		--argjson vms "$(cat "$WORK/vms-$run.json")" --argjson wall "$wall" --argjson t0 "$t0" \
		--argjson cond "$(cat "$WORK/cond-corral-$run.json")" \
		--argjson console "$(awk '{ print $2 }' "$WORK/corral-$run.console" | jq -s .)" \
		--argjson dcpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" --argjson qcpu "$qcpu" \
		--arg name "$name" --argjson others "$(others_s "$b0" "$b1" "$(awk -v a="$qcpu" -v b="$cpu1" -v c="$cpu0" 'BEGIN { print a + b - c }')")" \
		--argjson wall_s "$(awk -v w="$wall" 'BEGIN { print w / 1000 }')" \
		'{run: $run, cluster: $name, conditions: $cond, others_cpu_s: $others, others_cpu_pct_of_machine: ($others / ($wall_s * '"$(nproc)"') * 100 | round),
		  op_ms: ($op.finished_ms - $op.started_ms), wall_ms: $wall,
		  steps: ($op.steps | map({(.name): .ms}) | add),
		  console_ready_last_ms: (($console | max) - $op.started_ms),
		  console_ready_first_ms: (($console | min) - $op.started_ms),
		  request_to_op_start_ms: ($op.started_ms - $t0),
		  per_host: ($show.members | group_by(.host) | map({(.[0].host): length}) | add),
		  boot_ms: ([$vms[] | select(.cluster == $name) | .boot_ms] | sort | {min: .[0], median: .[length / 2 | floor], max: .[-1]}),
		  daemons_cpu_s: $dcpu, qemu_cpu_s_at_ready: $qcpu}' >"$WORK/corral-$run.json"
	log "corral run $run: op $(jq .op_ms "$WORK/corral-$run.json") ms, wall $wall ms, steps $(jq -c .steps "$WORK/corral-$run.json"), last console ready at $(jq .console_ready_last_ms "$WORK/corral-$run.json") ms, per host $(jq -c .per_host "$WORK/corral-$run.json")"

	# Delete, then check that nothing of it is left: no VM record, no VM directory on any host,
	# no QEMU process, no tap in the host namespaces.
	t0=$(now_ms)
	corral cluster delete "$name" --output json >"$WORK/del-$run.json"
	t1=$(now_ms)
	jq -e '.state == "succeeded"' "$WORK/del-$run.json" >/dev/null || die "cluster delete $name: $(jq -c . "$WORK/del-$run.json")"
	[ "$(corral vm list --output json | jq length)" -eq 0 ] || die "VMs remain after cluster delete $name"
	[ "$(corral cluster list --output json | jq length)" -eq 0 ] || die "clusters remain after cluster delete $name"
	local left
	left=$(find "$DEPLOY_DIR"/lab-*/vms -mindepth 1 -maxdepth 1 | head -5)
	[ -z "$left" ] || die "VM directories remain after cluster delete $name: $left"
	for p in "${qpids[@]}"; do
		case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)" in *qemu-system*) die "QEMU $p of $name still runs after delete" ;; esac
	done
	for h in $(seq "$HOSTS"); do
		left=$(ip netns exec "corral$DEPLOY_INDEX-lab-$h" ip -o link show type tun 2>/dev/null | head -3)
		[ -z "$left" ] || die "taps remain in corral$DEPLOY_INDEX-lab-$h after delete: $left"
	done
	jq --argjson d "$((t1 - t0))" '. + {delete_ms: $d}' "$WORK/corral-$run.json" >"$WORK/tmp.json" && mv "$WORK/tmp.json" "$WORK/corral-$run.json"
	log "corral run $run: cluster deleted in $((t1 - t0)) ms, nothing left"
}

# One floor run: the same guests without Corral. Writes $WORK/floor-RUN.json.
floor_run() { # RUN
	local run=$1 i h n0 u0 d0 td0 tap0 mac0 ip0 args a t0 t1 serial="" qpids=() p qcpu left launchers=() b0 b1
	wait_quiet "floor-$run"
	mapfile -d '' -t tmpl <"$WORK/qemu-cmdline"
	# The identity of the member the command line was taken from.
	n0=""; u0=""; d0=""; td0=""; tap0=""; mac0=""; ip0=""
	for i in "${!tmpl[@]}"; do
		a=${tmpl[$i]}
		case "$a" in
		-name) n0=${tmpl[$((i + 1))]%%,*} ;;
		-uuid) u0=${tmpl[$((i + 1))]} ;;
		-pidfile) d0=$(dirname "${tmpl[$((i + 1))]}") ;;
		-kernel) td0=$(dirname "${tmpl[$((i + 1))]}") ;;
		-serial) serial=${tmpl[$((i + 1))]#chardev:} ;;
		esac
		[[ "$a" =~ ifname=([^,]+) ]] && tap0=${BASH_REMATCH[1]}
		[[ "$a" =~ mac=([0-9a-f:]+) ]] && mac0=${BASH_REMATCH[1]}
		[[ "$a" =~ corral\.ip=([^ ]+) ]] && ip0=${BASH_REMATCH[1]}
	done
	[ -n "$n0" ] && [ -n "$u0" ] && [ -n "$d0" ] && [ -n "$td0" ] && [ -n "$serial" ] ||
		die "cannot read the identity of the captured QEMU command line: $(tr '\0' ' ' <"$WORK/qemu-cmdline")"

	rm -rf "${FLOOR:?}"/*
	log "floor run $run: $SIZE guests with qemu-img + qemu-system-x86_64 in the host namespaces"
	local per=$(((SIZE + HOSTS - 1) / HOSTS))
	for i in $(seq "$SIZE"); do
		# 7/7/6 for 20 over 3: fill host 1, then 2, then 3.
		h=$(((i - 1) / per + 1))
		local name="fl-$i" uuid dir="$FLOOR/lab-$h/fl-$i" td="$DEPLOY_DIR/lab-$h/templates"
		uuid=$(cat /proc/sys/kernel/random/uuid)
		mkdir -p "$dir"
		args=()
		local skip=0
		for j in "${!tmpl[@]}"; do
			[ $skip -eq 1 ] && { skip=0; continue; }
			a=${tmpl[$j]}
			[ "$j" -eq 0 ] && continue # the program name
			# The console: a plain file instead of Corral's socket chardev (with log file).
			if [ "$a" = "-chardev" ] && [[ "${tmpl[$((j + 1))]}" == *"id=$serial,"* ]]; then skip=1; continue; fi
			if [ "$a" = "-serial" ]; then args+=(-serial "file:$dir/console.log"); skip=1; continue; fi
			a=${a//"$d0"/"$dir"}
			a=${a//"$td0"/"$td"}
			a=${a//"$u0"/"$uuid"}
			a=${a//"corral.name=$n0 "/"corral.name=$name "}
			a=${a//"$n0,process=corral-$n0"/"$name,process=corral-$name"}
			[ -n "$tap0" ] && a=${a//"ifname=$tap0,"/"ifname=fl${DEPLOY_INDEX}t$i,"}
			[ -n "$mac0" ] && a=${a//"mac=$mac0"/"$(printf 'mac=02:fb:00:00:%02x:%02x' "$run" "$i")"}
			[ -n "$ip0" ] && a=${a//"corral.ip=$ip0"/"corral.ip=100.64.0.$((i + 1))/24"}
			args+=("$a")
		done
		# Nothing of the original member may remain.
		for a in "${args[@]}"; do
			case "$a" in *"$u0"* | *"$d0"* | *"$DEPLOY_DIR/lab-1/vms"*) die "floor command line still names the member: $a" ;; esac
		done
		printf '%s\0' "${args[@]}" >"$FLOOR/lab-$h/$name.args"
		echo "$h $name $uuid" >>"$FLOOR/vms"
	done
	if [ "$run" -eq 1 ]; then
		{
			echo "qemu-img create -q -f qcow2 -F qcow2 -b $DEPLOY_DIR/lab-1/templates/base.qcow2 $FLOOR/lab-1/fl-1/disk.qcow2"
			printf 'ip netns exec corral%s-lab-1 qemu-system-x86_64' "$DEPLOY_INDEX"
			tr '\0' '\n' <"$FLOOR/lab-1/fl-1.args" | while IFS= read -r a; do printf " %q" "$a"; done
			echo
		} >"$WORK/floor-cmdline-example"
	fi

	# Start the console watch, then every guest at once: overlay + QEMU, per VM, in parallel.
	poll_ready "$WORK/floor-$run.console" "$SIZE" "$FLOOR/lab-*/fl-*/console.log" &
	POLLER_PID=$!
	b0=$(busy_s)
	t0=$(now_ms)
	while read -r h name uuid; do
		(
			dir="$FLOOR/lab-$h/$name"
			mapfile -d '' -t a <"$FLOOR/lab-$h/$name.args"
			qemu-img create -q -f qcow2 -F qcow2 -b "$DEPLOY_DIR/lab-$h/templates/base.qcow2" "$dir/disk.qcow2" &&
				ip netns exec "corral$DEPLOY_INDEX-lab-$h" qemu-system-x86_64 "${a[@]}" 2>"$dir/qemu.err" ||
				echo "$name: $(cat "$dir/qemu.err" 2>/dev/null)" >>"$FLOOR/failed"
		) &
		launchers+=($!)
	done <"$FLOOR/vms"
	# Wait for every guest (the console watch stops by itself at SIZE lines or its timeout).
	while kill -0 "$POLLER_PID" 2>/dev/null; do
		[ -s "$FLOOR/failed" ] && die "floor run $run: QEMU failed: $(head -3 "$FLOOR/failed")"
		sleep 0.05
	done
	wait "$POLLER_PID" || true
	POLLER_PID=""
	t1=$(now_ms)
	wait "${launchers[@]}" || true
	[ -s "$FLOOR/failed" ] && die "floor run $run: QEMU failed: $(head -3 "$FLOOR/failed")"
	[ "$(wc -l <"$WORK/floor-$run.console")" -eq "$SIZE" ] ||
		die "floor run $run: only $(wc -l <"$WORK/floor-$run.console") of $SIZE guests ready within $READY_TIMEOUT_S s"
	for f in "$FLOOR"/lab-*/fl-*/qemu.pid; do qpids+=("$(cat "$f")"); done
	[ "${#qpids[@]}" -eq "$SIZE" ] || die "floor run $run: ${#qpids[@]} PID files for $SIZE guests"
	qcpu=$(cpu_sum "${qpids[@]}")
	b1=$(busy_s)
	jq -n --argjson run "$run" --argjson t0 "$t0" --argjson t1 "$t1" --argjson others "$(others_s "$b0" "$b1" "$qcpu")" \
		--argjson console "$(awk '{ print $2 }' "$WORK/floor-$run.console" | jq -s .)" \
		--argjson cond "$(cat "$WORK/cond-floor-$run.json")" --argjson qcpu "$qcpu" \
		--argjson per "$(awk '{ print $1 }' "$FLOOR/vms" | sort | uniq -c | awk '{ printf "{\"lab-%s\": %s}\n", $2, $1 }' | jq -s add)" \
		'{run: $run, conditions: $cond, others_cpu_s: $others, others_cpu_pct_of_machine: ($others / (($t1 - $t0) / 1000 * '"$(nproc)"') * 100 | round), ready_ms: (($console | max) - $t0), console_ready_first_ms: (($console | min) - $t0),
		  per_host: $per, qemu_cpu_s_at_ready: $qcpu}' >"$WORK/floor-$run.json"
	log "floor run $run: all $SIZE ready in $(jq .ready_ms "$WORK/floor-$run.json") ms (first at $(jq .console_ready_first_ms "$WORK/floor-$run.json") ms)"
	# Every floor QEMU, by PID, then its files; QEMU removes the taps it made when it exits.
	kill_floor
	for p in "${qpids[@]}"; do
		case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)" in *qemu-system*) die "floor QEMU $p still runs" ;; esac
	done
	rm -rf "${FLOOR:?}"/*
	for h in $(seq "$HOSTS"); do
		left=$(ip netns exec "corral$DEPLOY_INDEX-lab-$h" ip -o link show type tun 2>/dev/null | head -3)
		[ -z "$left" ] || die "taps remain in corral$DEPLOY_INDEX-lab-$h after the floor run: $left"
	done
}

deploy_part() {
	lab_up "$DEPLOY_DIR" "$DEPLOY_INDEX" "$HOSTS"
	use_lab "$DEPLOY_DIR" "$DEPLOY_URL"
	CONTROLLER_PID=$(jq -r '.controller_pid' "$DEPLOY_DIR/lab.json")
	mapfile -t AGENT_PIDS < <(jq -r '.hosts[].agent_pid' "$DEPLOY_DIR/lab.json")
	corral host list --output json >"$WORK/hosts.json"
	ACCEL=$(jq -r '.[0].accel' "$WORK/hosts.json")
	ACCEL_NOTE=$(jq -r '.[0].accel_note' "$WORK/hosts.json")
	log "deploy lab: accelerator $ACCEL ($ACCEL_NOTE); capacity per host $(jq -c '[.[] | {name, vcpus: .capacity.vcpus, memory_mib: .capacity.memory_mib}]' "$WORK/hosts.json")"
	cat >"$WORK/small.toml" <<-'EOF'
	template = "base"
	vcpus = 1
	memory = "128M"
	[placement]
	policy = "spread"
	EOF
	corral profile create small --file "$WORK/small.toml" >/dev/null

	for run in $(seq "$RUNS"); do
		corral_run "$run"
		floor_run "$run"
	done
	cp "$DEPLOY_DIR"/*.log "$WORK/" 2>/dev/null || true
	log "lab down ($DEPLOY_DIR)"
	lab_down_checked "$DEPLOY_DIR" "$DEPLOY_INDEX"
}

# --- 2. API: create and list -------------------------------------------------------------------

api_part() {
	local c0 c1 a0 a1 k0 k1 b0 b1 t0 t1 vm_dirs
	lab_up "$API_DIR" "$API_INDEX" "$HOSTS"
	use_lab "$API_DIR" "$API_URL"
	CONTROLLER_PID=$(jq -r '.controller_pid' "$API_DIR/lab.json")
	mapfile -t AGENT_PIDS < <(jq -r '.hosts[].agent_pid' "$API_DIR/lab.json")
	RSS0=$(rss_kib "$CONTROLLER_PID")
	BUCKET=$((API_VMS >= 1000 ? 100 : (API_VMS >= 10 ? API_VMS / 10 : 1)))

	wait_quiet api-create
	log "api: creating $API_VMS inactive VMs, $API_CONC at a time (corral-load --mode create)"
	c0=$(cpu_s "$CONTROLLER_PID"); a0=$(cpu_sum "${AGENT_PIDS[@]}"); k0=$(children_cpu_sum "${AGENT_PIDS[@]}"); b0=$(busy_s)
	"$LOAD" --url "$URL" --token "$CORRAL_TOKEN" --mode create --requests "$API_VMS" --concurrency "$API_CONC" \
		--prefix b --memory-mib 64 --raw "$WORK/create.raw" --watch-pid "$CONTROLLER_PID" --watch-every "$BUCKET" >"$WORK/create.json"
	c1=$(cpu_s "$CONTROLLER_PID"); a1=$(cpu_sum "${AGENT_PIDS[@]}"); k1=$(children_cpu_sum "${AGENT_PIDS[@]}"); b1=$(busy_s)
	jq -e --argjson n "$API_VMS" '.ok == $n and .errors == 0 and .vms_after == $n' "$WORK/create.json" >/dev/null ||
		die "api create: $(jq -c '{ok, errors, vms_after, statuses, error_samples}' "$WORK/create.json")"
	jq --argjson c "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" \
		--argjson a "$(awk -v a="$a0" -v b="$a1" 'BEGIN { printf "%.2f", b - a }')" \
		--argjson k "$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.2f", b - a }')" \
		--argjson busy "$(awk -v a="$b0" -v b="$b1" 'BEGIN { printf "%.2f", b - a }')" \
		--argjson cond "$(cat "$WORK/cond-api-create.json")" \
		'. + {conditions: $cond, controller_cpu_s: $c, agents_cpu_s: $a, agents_children_cpu_s: $k, machine_busy_cpu_s: $busy,
		      others_cpu_s: ([$busy - $c - $a - $k - .client_cpu_s, 0] | max | . * 100 | round / 100)}' \
		"$WORK/create.json" >"$WORK/tmp.json" && mv "$WORK/tmp.json" "$WORK/create.json"
	# Latency by hundreds of VMs already present: does creating get slower as the store grows?
	jq -R -s --argjson step "$BUCKET" --argjson total "$API_VMS" '
		[split("\n")[] | select(length > 0) | split(" ") | select(.[3] == "201") | {i: (.[0] | tonumber), ms: (.[2] | tonumber)}]
		| group_by((.i - 1) / $step | floor) | map(sort_by(.ms) as $b | ($b | length) as $n |
		  {vms: "\(($b[0].i - 1) / $step | floor * $step + 1)-\(($b[0].i - 1) / $step | floor * $step + $step | [., $total] | min)",
		   p50_ms: $b[(($n + 1) / 2 | floor) - 1].ms, p99_ms: $b[([($n * 0.99 | ceil), 1] | max) - 1].ms, max_ms: $b[-1].ms})' \
		"$WORK/create.raw" >"$WORK/create-buckets.json"
	log "api create: $(jq -c '{ok, errors, seconds, rps, p50_ms, p99_ms, max_ms, controller_cpu_s, agents_cpu_s, agents_children_cpu_s, others_cpu_s}' "$WORK/create.json")"
	log "api create: controller CPU ms per create, by $BUCKET: $(jq -c '[.watch.rows[].cpu_ms_per_request]' "$WORK/create.json")"
	# What one create costs on the agent: its qemu-img overlay, timed alone on this machine.
	for _ in $(seq 20); do
		t0=${EPOCHREALTIME//[.,]/}
		qemu-img create -q -f qcow2 -F qcow2 -b "$API_DIR/lab-1/templates/base.qcow2" "$WORK/ov.qcow2"
		t1=${EPOCHREALTIME//[.,]/}
		rm -f "$WORK/ov.qcow2"
		awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }'
	done | stats >"$WORK/overlay-ms.json"
	DISK_KIB=$(du -sk "$API_DIR"/lab-*/vms | awk '{ s += $1 } END { print s }')
	vm_dirs=$(find "$API_DIR"/lab-*/vms -mindepth 1 -maxdepth 1 -type d | wc -l)
	[ "$vm_dirs" -eq "$API_VMS" ] || die "api: $vm_dirs VM directories on the hosts for $API_VMS VMs"
	PER_HOST=$(corral host list --output json | jq -c 'map({(.name): .vms}) | add')

	wait_quiet api-list
	log "api: $API_LISTS x GET /v1/vms with $API_VMS VMs present, $API_CONC at a time (corral-load --mode list)"
	c0=$(cpu_s "$CONTROLLER_PID"); b0=$(busy_s)
	"$LOAD" --url "$URL" --token "$CORRAL_TOKEN" --mode list --requests "$API_LISTS" --concurrency "$API_CONC" >"$WORK/list.json"
	c1=$(cpu_s "$CONTROLLER_PID"); b1=$(busy_s)
	jq -e --argjson n "$API_LISTS" --argjson v "$API_VMS" '.ok == $n and .errors == 0 and .vms_after == $v' "$WORK/list.json" >/dev/null ||
		die "api list: $(jq -c '{ok, errors, vms_after, statuses, error_samples}' "$WORK/list.json")"
	jq --argjson c "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" \
		--argjson busy "$(awk -v a="$b0" -v b="$b1" 'BEGIN { printf "%.2f", b - a }')" \
		--argjson cond "$(cat "$WORK/cond-api-list.json")" \
		'. + {conditions: $cond, controller_cpu_s: $c, controller_cpu_ms_per_request: ($c * 1000 / .ok * 100 | round / 100),
		      machine_busy_cpu_s: $busy, others_cpu_s: ([$busy - $c - .client_cpu_s, 0] | max | . * 100 | round / 100)}' \
		"$WORK/list.json" >"$WORK/tmp.json" && mv "$WORK/tmp.json" "$WORK/list.json"
	log "api list: $(jq -c '{ok, errors, seconds, rps, p50_ms, p99_ms, max_ms, response_bytes_mean, controller_cpu_s, others_cpu_s}' "$WORK/list.json")"
	RSS1=$(rss_kib "$CONTROLLER_PID")
	STATE_KIB=$(du -sk "$API_DIR/controller" | awk '{ print $1 }')
	log "lab down ($API_DIR)"
	lab_down_checked "$API_DIR" "$API_INDEX"
}

# --- results -----------------------------------------------------------------------------------

deploy_results() {
	jq -s . "$WORK"/corral-[0-9]*.json >"$WORK/corral-runs.json"
	jq -s . "$WORK"/floor-[0-9]*.json >"$WORK/floor-runs.json"
	jq -n --arg date "$DATE" --arg cmd "$COMMAND" --arg commit "$COMMIT" --argjson total "$TOTAL" \
		--argjson machine "$(cat "$WORK/machine.json")" --arg l1 "$LOAD_END" --arg accel "$ACCEL" --arg note "$ACCEL_NOTE" \
		--argjson corral "$(cat "$WORK/corral-runs.json")" --argjson floor "$(cat "$WORK/floor-runs.json")" \
		--arg qcmd "$(tr '\0' '\n' <"$WORK/qemu-cmdline" | while IFS= read -r a; do printf "%q " "$a"; done)" --arg fcmd "$(cat "$WORK/floor-cmdline-example")" \
		--argjson size "$SIZE" --argjson hosts "$HOSTS" --argjson runs "$RUNS" --arg parts "$PARTS" \
		"$JQ_MED"'def st(f): [.[] | f] | {runs: ., median: med, min: min, max: max};
		 ($corral | st(.op_ms)) as $op | ($floor | st(.ready_ms)) as $fl |
		 {benchmark: "clusters", date: $date, command: $cmd, commit: $commit, parts: $parts, total_s: $total,
		  machine: ($machine + {accel: $accel, accel_note: $note, loadavg_end: $l1}),
		  deploy: {
		    cluster: {size: $size, hosts: $hosts, vcpus: 1, memory: "128M", policy: "spread", template: "base"},
		    runs: $runs, order: "alternating: corral 1, floor 1, corral 2, floor 2, ...",
		    corral: {op_ms: $op, wall_ms: ($corral | st(.wall_ms)), console_ready_last_ms: ($corral | st(.console_ready_last_ms)),
		             steps_ms: {configure: ($corral | st(.steps.configure)), place: ($corral | st(.steps.place)),
		                        prepare: ($corral | st(.steps.prepare)), execute: ($corral | st(.steps.execute))},
		             delete_ms: ($corral | st(.delete_ms)), daemons_cpu_s: ($corral | st(.daemons_cpu_s)),
		             qemu_cpu_s_at_ready: ($corral | st(.qemu_cpu_s_at_ready)), runs: $corral},
		    floor: {ready_ms: $fl, qemu_cpu_s_at_ready: ($floor | st(.qemu_cpu_s_at_ready)), runs: $floor},
		    ratio_corral_op_over_floor: ($op.median / $fl.median * 1000 | round / 1000),
		    ratio_corral_wall_over_floor: (($corral | st(.wall_ms)).median / $fl.median * 1000 | round / 1000),
		    ratio_corral_console_over_floor: (($corral | st(.console_ready_last_ms)).median / $fl.median * 1000 | round / 1000),
		    goal_ratio: 1.15,
		    readiness: {corral: "operation finished_ms - started_ms: every member running = its guest agent answered a ping on the virtio-serial port (the agent polls: ping with a 1 s timeout, then 200 ms pause)",
		                corral_console: "for comparison, when the last member printed `corral-guest: ready` on its console (same watch as the floor: console log polled every 50 ms)",
		                floor: "from the first qemu-img create to the last guest printing `corral-guest: ready name=...` on its serial console (-serial file:, polled every 50 ms); init starts the guest agent just before printing it"},
		    qemu_command_corral: $qcmd, qemu_command_floor_example: $fcmd,
		    floor_differences: "same QEMU binary and arguments as the Corral member (read from /proc/PID/cmdline); identity swapped (name, uuid, MAC, IP, tap name, paths); console on -serial file: instead of a socket chardev with a log file; the tap QEMU creates is left unattached (Corral attaches it to the host bridge); started with ip netns exec, -daemonize kept"}}' \
		>"$SCRATCH/clusters.json"

	C="$SCRATCH/clusters.json"
	c() { jq -r "$@" "$C"; }
	{
		echo "# Virtual cluster deployment: Corral vs the floor"
		echo
		echo "- Date: $(c .date) (commit $(c .commit), this run of bench/clusters.sh (parts: $(c .parts)) took $(c .total_s) s)"
		echo "- Command: \`$(c .command)\`"
		echo "- Machine: $(c .machine.nproc) CPUs ($(c .machine.cpu_model)), $(c .machine.memory_gib) GiB RAM, host kernel $(c .machine.host_kernel), /dev/kvm $(c .machine.dev_kvm)"
		echo "- Load average (1/5/15 min) at start: $(c .machine.loadavg_start), at end: $(c .machine.loadavg_end)"
		echo "- QEMU: $(c .machine.qemu_version); accelerator **$(c .machine.accel)** ($(c .machine.accel_note))"
		echo "- Guest: $(c .machine.guest_os), kernel $(c .machine.guest_kernel)"
		echo
		c '.deploy.cluster | "Cluster: \(.size) VMs, \(.vcpus) vCPU, \(.memory), template `\(.template)`, policy \(.policy), on a \(.hosts)-host lab (`corral cluster create NAME --profile small --size \(.size) --spread --output json`)."'
		c '.deploy | "\(.runs) runs of each, \(.order)."'
		echo
		echo "| | median | runs |"
		echo "|---|---|---|"
		c '.deploy | def r(x): "\(x.median) ms | \(x.runs | map(tostring) | join(", "))";
			"| **Corral**: request -> every member running (operation finished - started) | \(r(.corral.op_ms)) |",
			"| Corral: wall time of `corral cluster create` | \(r(.corral.wall_ms)) |",
			"| Corral: request -> last member printed ready on its console | \(r(.corral.console_ready_last_ms)) |",
			"| **Floor**: qemu-img + QEMU, 7/7/6 in the host namespaces -> last guest printed ready | \(r(.floor.ready_ms)) |"'
		echo
		c '.deploy | "**Ratio Corral / floor: \(.ratio_corral_op_over_floor)** (operation), \(.ratio_corral_wall_over_floor) (wall time), \(.ratio_corral_console_over_floor) (console ready vs console ready). Goal: within \(.goal_ratio)."'
		echo
		echo "Corral's steps (median, all runs):"
		echo
		echo "| step | median ms | runs |"
		echo "|---|---|---|"
		c '.deploy.corral.steps_ms | to_entries[] | "| \(.key) | \(.value.median) | \(.value.runs | map(tostring) | join(", ")) |"'
		echo
		echo "| run | Corral op ms | wall ms | first/last console ready ms | boot_ms min/median/max | per host | delete ms | Corral daemons CPU s | QEMU CPU s at ready | others' CPU s (% of machine) | floor ready ms | floor first ready ms | floor QEMU CPU s | others' CPU s (% of machine) |"
		echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
		jq -r --slurpfile f <(c '.deploy.floor.runs') '.deploy.corral.runs[] as $r | ($f[0][] | select(.run == $r.run)) as $fl |
			"| \($r.run) | \($r.op_ms) | \($r.wall_ms) | \($r.console_ready_first_ms) / \($r.console_ready_last_ms) | \($r.boot_ms.min) / \($r.boot_ms.median) / \($r.boot_ms.max) | \($r.per_host | to_entries | map("\(.value)") | join("/")) | \($r.delete_ms) | \($r.daemons_cpu_s) | \($r.qemu_cpu_s_at_ready) | \($r.others_cpu_s) (\($r.others_cpu_pct_of_machine)%) | \($fl.ready_ms) | \($fl.console_ready_first_ms) | \($fl.qemu_cpu_s_at_ready) | \($fl.others_cpu_s) (\($fl.others_cpu_pct_of_machine)%) |"' "$C"
		echo
		echo "Others' CPU: CPU time the whole machine spent busy during the run minus what this run's QEMU processes (and, for Corral, its controller and agents) used: other people's work on the same CPUs, which slows the guests' boot."
		echo
		echo "Conditions before each run:"
		echo
		jq -r '.deploy.corral.runs[] | "- Corral run \(.run): \(.conditions | "CPUs \(.cpu_busy_pct)% busy, \(.qemu_processes) QEMU process(es) running, load \(.loadavg), waited \(.waited_s) s")"' "$C"
		jq -r '.deploy.floor.runs[] | "- floor run \(.run): \(.conditions | "CPUs \(.cpu_busy_pct)% busy, \(.qemu_processes) QEMU process(es) running, load \(.loadavg), waited \(.waited_s) s")"' "$C"
		echo
		echo "Readiness:"
		echo
		c '.deploy.readiness | "- Corral: \(.corral)", "- Corral, console: \(.corral_console)", "- Floor: \(.floor)"'
		echo
		echo "Floor vs Corral's QEMU: $(c .deploy.floor_differences)."
		echo
		echo "QEMU command line Corral ran (one member, from /proc/PID/cmdline):"
		echo
		echo '```'
		c .deploy.qemu_command_corral
		echo '```'
		echo
		echo "The floor's, for its first guest (then the same for the others, all at once in the background):"
		echo
		echo '```'
		c .deploy.qemu_command_floor_example
		echo '```'
	} >"$SCRATCH/clusters.md"
	cp "$SCRATCH/clusters.json" "$SCRATCH/clusters.md" "$RESULTS/"
	log "deploy: corral $(c .deploy.corral.op_ms.median) ms, floor $(c .deploy.floor.ready_ms.median) ms, ratio $(c .deploy.ratio_corral_op_over_floor); $RESULTS/clusters.{json,md}"
}

api_results() {
	jq -n --arg date "$DATE" --arg cmd "$COMMAND" --arg commit "$COMMIT" --argjson total "$TOTAL" --arg parts "$PARTS" \
		--argjson machine "$(cat "$WORK/machine.json")" --arg l1 "$LOAD_END" \
		--argjson create "$(cat "$WORK/create.json")" --argjson buckets "$(cat "$WORK/create-buckets.json")" \
		--argjson list "$(cat "$WORK/list.json")" --argjson ov "$(cat "$WORK/overlay-ms.json")" \
		--argjson disk "$DISK_KIB" --argjson per "$PER_HOST" --argjson rss0 "$RSS0" --argjson rss1 "$RSS1" --argjson state "$STATE_KIB" \
		--arg lcmd "target/release/corral-load --url $API_URL --token \$CORRAL_TOKEN --mode create --requests $API_VMS --concurrency $API_CONC --prefix b --memory-mib 64 --raw FILE --watch-pid CONTROLLER_PID --watch-every $BUCKET" \
		--arg lcmd2 "target/release/corral-load --url $API_URL --token \$CORRAL_TOKEN --mode list --requests $API_LISTS --concurrency $API_CONC" \
		'{benchmark: "api", date: $date, command: $cmd, commit: $commit, parts: $parts, total_s: $total,
		  machine: ($machine + {loadavg_end: $l1}),
		  lab: "3 hosts (a fresh lab), controller and agents on this machine; corral-load runs on the same CPUs",
		  create: ($create + {load_command: $lcmd,
		           by_vms_present: [range($buckets | length) as $i | $buckets[$i] + (($create.watch.rows // [])[$i] // {} | {controller_cpu_ms_per_create: .cpu_ms_per_request, rps})],
		           overlay_alone_ms: $ov, vms_per_host: $per, vm_dirs_disk_kib: $disk}),
		  list: ($list + {load_command: $lcmd2}),
		  controller_rss_kib: {idle: $rss0, after: $rss1}, controller_state_dir_kib: $state}' >"$SCRATCH/api.json"

	A="$SCRATCH/api.json"
	api() { jq -r "$@" "$A"; }
	{
		echo "# REST API under load"
		echo
		echo "- Date: $(api .date) (commit $(api .commit); this run of bench/clusters.sh (parts: $(api .parts)) took $(api .total_s) s)"
		echo "- Command: \`$(api .command)\`; the load generator is \`corral-load\` (crates/corral-bench)"
		echo "- Machine: $(api .machine.nproc) CPUs ($(api .machine.cpu_model)), $(api .machine.memory_gib) GiB RAM, host kernel $(api .machine.host_kernel)"
		echo "- Load average (1/5/15 min) at the start of bench/clusters.sh: $(api .machine.loadavg_start), at end: $(api .machine.loadavg_end)"
		echo "- QEMU: $(api .machine.qemu_version)"
		echo "- Lab: $(api .lab)"
		echo
		echo "| | requests | concurrency | ok | errors | seconds | req/s | p50 ms | p90 ms | p99 ms | max ms | controller CPU s | others' CPU s |"
		echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
		api '.create | "| create inactive VM (`POST /v1/vms`, start=false) | \(.requests) | \(.concurrency) | \(.ok) | \(.errors) | \(.seconds) | **\(.rps)** | \(.p50_ms) | \(.p90_ms) | **\(.p99_ms)** | \(.max_ms) | \(.controller_cpu_s) | \(.others_cpu_s) |"'
		api '.list | "| list (`GET /v1/vms`) with \(.vms_after) VMs | \(.requests) | \(.concurrency) | \(.ok) | \(.errors) | \(.seconds) | **\(.rps)** | \(.p50_ms) | \(.p90_ms) | **\(.p99_ms)** | \(.max_ms) | \(.controller_cpu_s) | \(.others_cpu_s) |"'
		echo
		api '"Commands: `\(.create.load_command)`, then `\(.list.load_command)`."'
		echo
		api '.create | "Create: the controller used \(.controller_cpu_s) CPU s, the agents \(.agents_cpu_s) CPU s and their children (the `qemu-img create` of each overlay) \(.agents_children_cpu_s) CPU s, corral-load \(.client_cpu_s) CPU s; the machine was busy \(.machine_busy_cpu_s) CPU s in \(.seconds) s. One `qemu-img create` overlay alone takes \(.overlay_alone_ms.median) ms (median of 20, min \(.overlay_alone_ms.min), max \(.overlay_alone_ms.max)). VMs per host: \(.vms_per_host | to_entries | map("\(.key) \(.value)") | join(", ")); their directories hold \(.vm_dirs_disk_kib / 1024 | floor) MiB."'
		echo
		api '.list | "List: the controller used \(.controller_cpu_ms_per_request) ms of CPU per request (\(.controller_cpu_s) s in all), corral-load \(.client_cpu_s) s; responses are \(.response_bytes_mean / 1024 | floor) KiB each."'
		echo
		api '"Controller RSS: \(.controller_rss_kib.idle / 1024 | floor) MiB idle, \(.controller_rss_kib.after / 1024 | floor) MiB with the VMs; state directory \(.controller_state_dir_kib) KiB."'
		echo
		echo "Create, by how many VMs already existed (latency: the requests for those VM numbers; controller CPU and req/s: per $BUCKET requests completed, in order):"
		echo
		echo "| VMs | p50 ms | p99 ms | max ms | controller CPU ms per create | req/s |"
		echo "|---|---|---|---|---|---|"
		api '.create.by_vms_present[] | "| \(.vms) | \(.p50_ms) | \(.p99_ms) | \(.max_ms) | \(.controller_cpu_ms_per_create // "-") | \(.rps // "-") |"'
		echo
		api '"Conditions before each: create: \(.create.conditions | "CPUs \(.cpu_busy_pct)% busy, \(.qemu_processes) QEMU process(es) running, load \(.loadavg), waited \(.waited_s) s"); list: \(.list.conditions | "CPUs \(.cpu_busy_pct)% busy, \(.qemu_processes) QEMU process(es) running, load \(.loadavg), waited \(.waited_s) s")."'
		echo
		echo "Others' CPU: the machine's busy CPU time during the run minus the controller's, the agents' (with their children's) and corral-load's: other work on the same CPUs."
	} >"$SCRATCH/api.md"
	cp "$SCRATCH/api.json" "$SCRATCH/api.md" "$RESULTS/"
	log "api: create $(api .create.rps) req/s p99 $(api .create.p99_ms) ms, list $(api .list.rps) req/s p99 $(api .list.p99_ms) ms; $RESULTS/api.{json,md}"
}

# --- run ---------------------------------------------------------------------------------------

case " $PARTS " in *" deploy "*) deploy_part ;; esac
case " $PARTS " in *" api "*) api_part ;; esac

DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
TOTAL=$((EPOCHSECONDS - T_START))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$RESULTS"
case " $PARTS " in *" deploy "*) deploy_results ;; esac
case " $PARTS " in *" api "*) api_results ;; esac
log "done in $TOTAL s (parts: $PARTS)"
