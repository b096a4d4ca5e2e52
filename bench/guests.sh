#!/usr/bin/env bash
# Real guest OS benchmarks (issue 13): the project's Debian 12 cloud image (scripts/build-debian.sh)
# booted by Corral against the floor, the same guest started by hand with a plain
# qemu-system-x86_64 command. Writes bench/results/guests.json (machine-readable) and
# bench/results/guests.md (for people), only when every part succeeded.
#
#   1. boot     boot to SSH answering, BIOS and UEFI. Corral: a 1-member cluster from a profile
#               (template debian12, 1 vCPU, 1 GiB, the firmware) with --ssh-key: from the
#               request (`cluster create --no-wait`) to the first successful
#               `corral vm ssh MEMBER -l debian -i KEY -- true` (through the controller and the
#               agent). Floor: the QEMU command line Corral ran for that member (read from
#               /proc/PID/cmdline), with its identity swapped (name, UUID, MAC, paths), on a fresh
#               qcow2 overlay of the same template file (`qemu-img create`, as the agent does), a
#               NoCloud seed with Corral's seed files (extracted with isoinfo; identity, MAC and
#               address swapped; same genisoimage flags), a fresh copy of OVMF_VARS_4M.fd for
#               UEFI, and a tap on a bridge in a network namespace of this script's own, whose
#               bridge has an address: from the QEMU start to the first successful
#               `ssh -i KEY debian@IP true` from that namespace. Both polled the same way: one
#               attempt after another (each bounded by `timeout 15`), 0.5 s apart. Goal: Corral /
#               floor <= 1.10. BENCH_RUNS runs of each, alternating (corral, floor, corral, ...).
#   2. cluster  a BENCH_CLUSTER_SIZE-member Debian cluster (BIOS, spread over a 3-host lab):
#               request -> every member answering SSH (each member polled as above, all at
#               once). Floor: as many plain QEMU processes started together (each member's
#               command line and template swapped as in 1), polled the same way, until all
#               answer. Goal: <= 1.15. BENCH_CLUSTER_RUNS runs of each, alternating.
#   3. import   `corral image import NAME FILE --format F` of a fully allocated raw copy and a
#               vmdk copy of the Debian image (the client streams it to the controller, which
#               checks it and runs `qemu-img convert -q -f F -O qcow2`) against that same
#               `qemu-img convert` of the same file alone: MB/s = source file bytes / seconds
#               (MB = 10^6 bytes). Goal: Corral >= 0.9x the floor. BENCH_IMPORT_RUNS runs of
#               each, alternating; `sync` before each.
#
# Before measuring, every lab host is given the debian12 template (a throwaway --no-start VM per
# host), so no run pays for the one-time template transfer (timed separately). The lab is left
# to pick its accelerator (auto: TCG on machines whose KVM hangs); the floor runs the same
# `-accel` as Corral's command line. BENCH_QUICK=1 is a quick check that everything works:
# 1 run of each, a 2-member cluster, 1 import run of each format, results in
# ${TMPDIR:-/tmp}/corral-bench-guests-quick unless BENCH_RESULTS says otherwise (never
# bench/results).
#
# The lab uses index 230 (/tmp/corral-bench-230); the floor's network namespace is
# corral-bench-guests-230 (a bridge with 100.64.230.1/24, guests at 100.64.230.11...). Both
# are removed on exit, on failure too; only the QEMU processes this script started are killed
# (by PID, checked against their command line).
#
# Needs root (labs), jq, qemu-img, qemu-system-x86_64, genisoimage (isoinfo), ssh, ssh-keygen,
# ip. Run through `make bench` / bench/run.sh, or alone: `bash bench/guests.sh` (it then builds
# the corral binary and the busybox guest itself). It always runs scripts/build-debian.sh
# (cached by the hash of its inputs: instant when the image is built).
#
# Environment:
#   CORRAL_CACHE            cache root (default <repo>/.cache)
#   CORRAL_BIN              corral binary (default <repo>/target/release/corral; built if unset)
#   BENCH_QUICK             1: a quick check (see above)
#   BENCH_RUNS              boot runs of corral and of the floor, per firmware (default 3; quick 1)
#   BENCH_FIRMWARES         firmwares of the boot part (default "bios uefi")
#   BENCH_CLUSTER_SIZE      members of the cluster part (default 5; quick 2)
#   BENCH_CLUSTER_RUNS      cluster runs of each (default 2; quick 1)
#   BENCH_IMPORT_RUNS       import runs per format, of each (default 3; quick 1)
#   BENCH_PARTS             which parts to run (default "boot cluster import")
#   BENCH_READY_TIMEOUT     seconds a run may wait for SSH (default 900)
#   BENCH_RESULTS           output directory (default <repo>/bench/results; quick: see above)
#   BENCH_QUIET_PCT         before each run, wait until the CPUs are at most this % busy (default 25)
#   BENCH_QUIET_WAIT        ... for at most this many seconds, then measure anyway (default 60; quick 5)
#   BENCH_COMMIT            commit recorded in the results (default: git HEAD, "+dirty" if modified)
#   BENCH_COMMAND           command line recorded in the results

# jq programs are in single quotes on purpose.
# shellcheck disable=SC2016
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
forget_caller_lab
GUEST="$CORRAL_CACHE/guest"
QUICK=${BENCH_QUICK:-}
[ "$QUICK" = 0 ] && QUICK=""
if [ -n "$QUICK" ]; then
	RESULTS=${BENCH_RESULTS:-${TMPDIR:-/tmp}/corral-bench-guests-quick}
	RUNS=${BENCH_RUNS:-1}
	CSIZE=${BENCH_CLUSTER_SIZE:-2}
	CRUNS=${BENCH_CLUSTER_RUNS:-1}
	IRUNS=${BENCH_IMPORT_RUNS:-1}
	QUIET_WAIT=${BENCH_QUIET_WAIT:-5}
else
	RESULTS=${BENCH_RESULTS:-$REPO/bench/results}
	RUNS=${BENCH_RUNS:-3}
	CSIZE=${BENCH_CLUSTER_SIZE:-5}
	CRUNS=${BENCH_CLUSTER_RUNS:-2}
	IRUNS=${BENCH_IMPORT_RUNS:-3}
	QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
fi
FIRMWARES=${BENCH_FIRMWARES:-bios uefi}
PARTS=${BENCH_PARTS:-boot cluster import}
READY_TIMEOUT_S=${BENCH_READY_TIMEOUT:-900}
QUIET_PCT=${BENCH_QUIET_PCT:-25}
COMMAND=${BENCH_COMMAND:-bash bench/guests.sh}
POLL_S=0.5
ATTEMPT_TIMEOUT_S=15
VM_MEMORY=1G
GOAL_BOOT=1.10
GOAL_CLUSTER=1.15
GOAL_IMPORT=0.9

INDEX=230
LAB_DIR=/tmp/corral-bench-$INDEX
LAB_URL=http://198.18.$INDEX.1:7700
HOSTS=3
NS=corral-bench-guests-$INDEX
NS_NET=100.64.$INDEX
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd

T_START=$EPOCHSECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

need_root
need_commands jq qemu-img qemu-system-x86_64 genisoimage isoinfo ssh ssh-keygen ip awk sync timeout getconf
if [ "$CSIZE" -lt 1 ] || [ "$CSIZE" -gt 250 ]; then die "BENCH_CLUSTER_SIZE must be 1 to 250"; fi

# --- build -------------------------------------------------------------------------------------

cd "$REPO"
build_unless_given
BIN=${CORRAL_BIN:-$REPO/target/release/corral}
log "building the Debian image if needed (scripts/build-debian.sh)"
bash scripts/build-debian.sh >&2 || die "scripts/build-debian.sh failed"
need_bin_and_guest "$BIN"
if [ ! -f "$GUEST/debian12.json" ] || [ ! -f "$GUEST/debian12.qcow2" ]; then die "no Debian image in $GUEST: run \`make guest\`"; fi

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/corral-bench-guests.XXXXXX")
WORK="$SCRATCH/work"
FLOOR="$SCRATCH/floor"
IMPORTS="$SCRATCH/import"
KEY="$SCRATCH/id_ed25519"
mkdir -p "$WORK" "$FLOOR" "$IMPORTS"
POLLERS=()

# The floor's QEMU processes: by the PIDs in their PID files, and any other QEMU whose command
# line names a file of this script's floor directory (one still starting when a failure hit).
# Each PID is checked against its command line first; waits until they are gone.
kill_floor() {
	local p f cmd pids=()
	for p in $(pgrep -f "^qemu-system-x86_64 .*$FLOOR/" || true); do pids+=("$p"); done
	for f in "$FLOOR"/*/qemu.pid; do [ -f "$f" ] && pids+=("$(cat "$f")"); done
	for p in ${pids[@]+"${pids[@]}"}; do
		cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
		case "$cmd" in qemu-system-*"$FLOOR/"*) kill -KILL "$p" 2>/dev/null || true ;; esac
	done
	for p in ${pids[@]+"${pids[@]}"}; do
		for _ in $(seq 200); do
			cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
			case "$cmd" in qemu-system-*"$FLOOR/"*) sleep 0.05 ;; *) break ;; esac
		done
	done
}

stop_pollers() {
	local p
	for p in ${POLLERS[@]+"${POLLERS[@]}"}; do kill "$p" 2>/dev/null || true; done
	for p in ${POLLERS[@]+"${POLLERS[@]}"}; do wait "$p" 2>/dev/null || true; done
	POLLERS=()
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	stop_pollers
	if [ "$rc" -ne 0 ] && [ -d "$FLOOR" ]; then
		# The floor guests' consoles, for the post-mortem (finish_labs keeps $WORK).
		(cd "$FLOOR" && for f in */console.log */qemu.err; do [ -f "$f" ] && cp --parents "$f" "$WORK/" 2>/dev/null; done)
	fi
	kill_floor
	ip netns del "$NS" 2>/dev/null
	finish_labs "$rc" "$LAB_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers (the shared ones are in bench/lib/common.sh) ---------------------------------------

# CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal).
busy_s() { awk '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / 100 }' /proc/stat; }
# CPU seconds used by others during a run: all busy time minus ours (this script's polling
# included in "others": ssh and corral processes, a few percent of a CPU).
others_s() { awk -v b0="$1" -v b1="$2" -v ours="$3" 'BEGIN { x = b1 - b0 - ours; printf "%.2f\n", (x < 0 ? 0 : x) }'; }
# CPU seconds (user + system) a process has used.
cpu_s() { awk '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_sum() { local p s=0; for p in "$@"; do s=$(awk -v a="$s" -v b="$(cpu_s "$p")" 'BEGIN { printf "%.2f", a + b }'); done; echo "$s"; }
HZ=$(getconf CLK_TCK)
# When a process started, in epoch ms, to 10 ms (its start in clock ticks since boot, against
# /proc/uptime read with the clock; btime is only to the second). awk's %d is 32-bit in mawk:
# epoch ms are printed with %.0f.
start_ms() {
	local up now
	read -r up _ </proc/uptime
	now=$(now_ms)
	awk -v up="$up" -v now="$now" -v hz="$HZ" '{ sub(/^.*\) /, ""); printf "%.0f\n", now - up * 1000 + $20 * 1000 / hz }' "/proc/$1/stat"
}
# The QEMU PID of a Corral VM (its PID file on its host).
corral_qemu_pid() { # HOST NAME
	cat "$LAB_DIR/$1/vms/$2/qemu.pid"
}

SSH_OPTS=(BatchMode=yes StrictHostKeyChecking=no UserKnownHostsFile=/dev/null ConnectTimeout=5 LogLevel=ERROR)
CORRAL_SSH_OPTS=()
FLOOR_SSH_OPTS=()
for o in "${SSH_OPTS[@]}"; do
	CORRAL_SSH_OPTS+=(--ssh-option "$o")
	FLOOR_SSH_OPTS+=(-o "$o")
done

# Tries a login (COMMAND, each attempt bounded by ATTEMPT_TIMEOUT_S) one attempt after another,
# POLL_S apart, until one succeeds or the deadline (epoch s); then writes "EPOCH_MS ATTEMPTS" to
# OUT. Run in the background (its PID in POLLERS).
poll_login() { # OUT DEADLINE COMMAND...
	local out=$1 deadline=$2 n=0
	shift 2
	while [ "$EPOCHSECONDS" -lt "$deadline" ]; do
		n=$((n + 1))
		if timeout "$ATTEMPT_TIMEOUT_S" "$@" </dev/null >/dev/null 2>&1; then
			echo "$(now_ms) $n" >"$out"
			return 0
		fi
		sleep "$POLL_S"
	done
	return 1
}
# Waits for every poller; dies naming the ones that did not get in (LABEL: what they polled).
wait_pollers() { # LABEL
	local p bad=0
	for p in ${POLLERS[@]+"${POLLERS[@]}"}; do wait "$p" || bad=$((bad + 1)); done
	POLLERS=()
	[ "$bad" -eq 0 ] || die "$1: $bad guest(s) did not answer SSH within $READY_TIMEOUT_S s"
}

# The floor's network namespace: a bridge with an address, nothing else (no route out).
floor_ns_up() {
	if ip netns list | awk '{ print $1 }' | grep -qx "$NS"; then
		[ -z "$(ip netns pids "$NS" 2>/dev/null)" ] || die "network namespace $NS exists with processes in it (an earlier run of this script?): $(ip netns pids "$NS" | tr '\n' ' ')"
		ip netns del "$NS"
	fi
	ip netns add "$NS"
	ip -n "$NS" link set lo up
	ip -n "$NS" link add br0 type bridge
	ip -n "$NS" addr add "$NS_NET.1/24" dev br0
	ip -n "$NS" link set br0 up
}

# --- machine facts -----------------------------------------------------------------------------

COMMIT=$(bench_commit)
machine_facts | jq --arg l0 "$LOAD_START" --argjson deb "$(cat "$GUEST/debian12.json")" \
	'. + {loadavg_start: $l0, debian_image: $deb}' >"$WORK/machine.json"
ssh-keygen -q -t ed25519 -N "" -C corral-bench-guests -f "$KEY"

# --- the lab -----------------------------------------------------------------------------------

lab_up "$LAB_DIR" "$INDEX" "$HOSTS"
use_lab "$LAB_DIR" "$LAB_URL"
CONTROLLER_PID=$(jq -r '.controller_pid' "$LAB_DIR/lab.json")
mapfile -t AGENT_PIDS < <(jq -r '.hosts[].agent_pid' "$LAB_DIR/lab.json")
corral host list --output json >"$WORK/hosts.json"
ACCEL=$(jq -r '.[0].accel' "$WORK/hosts.json")
ACCEL_NOTE=$(jq -r '.[0].accel_note' "$WORK/hosts.json")
log "lab: accelerator $ACCEL ($ACCEL_NOTE)"
floor_ns_up

for fw in bios uefi; do
	cat >"$WORK/deb-$fw.toml" <<-EOF
	template = "debian12"
	vcpus = 1
	memory = "$VM_MEMORY"
	firmware = "$fw"
	[placement]
	policy = "spread"
	EOF
	corral profile create "deb-$fw" --file "$WORK/deb-$fw.toml" >/dev/null
done

# Every host gets the template now (the controller sends it with a host's first VM of it), so
# that no measured run pays for that one-time transfer.
warm_templates() {
	local h t0 ms=()
	for h in $(seq "$HOSTS"); do
		t0=$(now_ms)
		corral vm create "warm-$h" --template debian12 --memory "$VM_MEMORY" --host "lab-$h" --no-start --output json >"$WORK/warm-$h.json"
		ms+=($(($(now_ms) - t0)))
		corral vm delete "warm-$h" >/dev/null 2>"$WORK/warm-$h.err" || die "vm delete warm-$h failed: $(cat "$WORK/warm-$h.err")"
		[ -f "$LAB_DIR/lab-$h/templates/debian12.qcow2" ] || die "lab-$h has no debian12 template after a VM of it was made there"
	done
	printf '%s\n' "${ms[@]}" | jq -s . >"$WORK/warm.json"
	log "templates on every host (first VM on each: $(jq -c . "$WORK/warm.json") ms)"
}
warm_templates

# --- Corral: a cluster from the request to every member answering SSH ---------------------------

# One Corral run: cluster NAME of SIZE members from profile PROFILE. Writes $WORK/TAG.run and,
# for the floor, $WORK/TAG.capture/ (member 1's QEMU command line and seed files, each
# member's template file).
corral_run() { # TAG NAME PROFILE SIZE
	local tag=$1 name=$2 profile=$3 size=$4 t0 t1 i id deadline b0 b1 cpu0 cpu1 qcpu qpids=() p h f
	local cap="$WORK/$tag.capture"
	wait_quiet "$tag"
	log "$tag: cluster create $name --profile $profile --size $size --ssh-key KEY --no-wait, then polling vm ssh"
	cpu0=$(cpu_sum "$CONTROLLER_PID" "${AGENT_PIDS[@]}")
	b0=$(busy_s)
	deadline=$((EPOCHSECONDS + READY_TIMEOUT_S))
	t0=$(now_ms)
	corral cluster create "$name" --profile "$profile" --size "$size" --ssh-key "$KEY.pub" --no-wait --output json >"$WORK/$tag.create.json"
	t1=$(now_ms)
	for i in $(seq "$size"); do
		poll_login "$WORK/$tag.ssh-$i" "$deadline" \
			"$BIN" --url "$URL" vm ssh "$name-$i" -l debian -i "$KEY" "${CORRAL_SSH_OPTS[@]}" -- true &
		POLLERS+=($!)
	done
	wait_pollers "$tag"
	id=$(jq -r .id "$WORK/$tag.create.json")
	corral operation wait "$id" --output json >"$WORK/$tag.op.json" || true
	jq -e --argjson n "$size" '.state == "succeeded" and .vms == $n' "$WORK/$tag.op.json" >/dev/null ||
		die "$tag: the deployment did not succeed: $(jq -c '{state, vms, messages}' "$WORK/$tag.op.json")"
	corral cluster show "$name" --output json >"$WORK/$tag.show.json"
	corral vm list --output json >"$WORK/$tag.vms.json"
	: >"$WORK/$tag.members"
	for i in $(seq "$size"); do
		h=$(jq -r --arg m "$name-$i" '.members[] | select(.name == $m) | .host' "$WORK/$tag.show.json")
		[ -n "$h" ] || die "$tag: member $name-$i is not in cluster show"
		p=$(corral_qemu_pid "$h" "$name-$i")
		qpids+=("$p")
		echo "$i $h $p $(start_ms "$p")" >>"$WORK/$tag.members"
	done
	qcpu=$(cpu_sum "${qpids[@]}")
	cpu1=$(cpu_sum "$CONTROLLER_PID" "${AGENT_PIDS[@]}")
	b1=$(busy_s)

	# What the floor needs: member 1's command line and seed, every member's template file.
	rm -rf "$cap"
	mkdir -p "$cap"
	read -r _ h p _ <"$WORK/$tag.members"
	cp "/proc/$p/cmdline" "$cap/cmdline"
	local vmdir="$LAB_DIR/$h/vms/$name-1"
	for f in meta-data network-config user-data; do
		isoinfo -R -i "$vmdir/seed.iso" -x "/$f" >"$cap/$f" || die "$tag: cannot read $f from $vmdir/seed.iso"
		[ -s "$cap/$f" ] || die "$tag: $vmdir/seed.iso has no $f"
	done
	while read -r i h p _; do
		qemu-img info -U --output json "$LAB_DIR/$h/vms/$name-$i/disk.qcow2" |
			jq -r '."full-backing-filename" // ."backing-filename"' >"$cap/template-$i"
	done <"$WORK/$tag.members"

	jq -n --arg tag "$tag" --arg name "$name" --argjson size "$size" --argjson t0 "$t0" --argjson t1 "$t1" \
		--argjson op "$(cat "$WORK/$tag.op.json")" --argjson vms "$(cat "$WORK/$tag.vms.json")" \
		--argjson ssh "$(for i in $(seq "$size"); do awk -v i="$i" '{ printf "{\"member\": %d, \"ms\": %s, \"attempts\": %d}\n", i, $1, $2 }' "$WORK/$tag.ssh-$i"; done | jq -s .)" \
		--argjson members "$(awk '{ printf "{\"member\": %d, \"host\": \"%s\", \"qemu_start_ms\": %s}\n", $1, $2, $4 }' "$WORK/$tag.members" | jq -s .)" \
		--argjson cond "$(cat "$WORK/cond-$tag.json")" \
		--argjson dcpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" --argjson qcpu "$qcpu" \
		--argjson others "$(others_s "$b0" "$b1" "$(awk -v a="$qcpu" -v b="$cpu1" -v c="$cpu0" 'BEGIN { print a + b - c }')")" \
		'{tag: $tag, cluster: $name, size: $size, conditions: $cond,
		  ssh_ms: ([$ssh[].ms] | max - $t0), first_ssh_ms: ([$ssh[].ms] | min - $t0),
		  members: [$ssh[] as $s | $members[] | select(.member == $s.member) |
		            {member, host, ssh_ms: ($s.ms - $t0), attempts: $s.attempts, request_to_qemu_ms: (.qemu_start_ms - $t0),
		             qemu_to_ssh_ms: ($s.ms - .qemu_start_ms)}],
		  request_ms: ($t1 - $t0), request_to_op_start_ms: ($op.started_ms - $t0),
		  op_ms: ($op.finished_ms - $op.started_ms), op_end_ms: ($op.finished_ms - $t0),
		  steps: ($op.steps | map({(.name): .ms}) | add),
		  boot_ms: [$vms[] | select(.cluster == $name) | .boot_ms],
		  daemons_cpu_s: $dcpu, qemu_cpu_s: $qcpu, others_cpu_s: $others}' >"$WORK/$tag.run"
	log "$tag: every member answered SSH $(jq .ssh_ms "$WORK/$tag.run") ms after the request (first $(jq .first_ssh_ms "$WORK/$tag.run") ms; QEMU started $(jq -c '[.members[].request_to_qemu_ms]' "$WORK/$tag.run") ms after it; operation done at $(jq .op_end_ms "$WORK/$tag.run") ms)"

	# Delete; nothing of it may be left.
	t0=$(now_ms)
	corral cluster delete "$name" --output json >"$WORK/$tag.delete.json"
	jq -e '.state == "succeeded"' "$WORK/$tag.delete.json" >/dev/null || die "$tag: cluster delete $name: $(jq -c . "$WORK/$tag.delete.json")"
	[ "$(corral vm list --output json | jq length)" -eq 0 ] || die "$tag: VMs remain after cluster delete $name"
	for p in "${qpids[@]}"; do
		case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)" in *qemu-system*) die "$tag: QEMU $p still runs after delete" ;; esac
	done
	jq --argjson d "$(($(now_ms) - t0))" '. + {delete_ms: $d}' "$WORK/$tag.run" >"$WORK/tmp.json" && mv "$WORK/tmp.json" "$WORK/$tag.run"
}

# --- the floor: the same guests with plain QEMU --------------------------------------------------

# Writes the floor's files for guest I from capture CAP: its directory, the QEMU arguments
# ($FLOOR/fl-I.args, NUL-separated), the overlay, the seed, the UEFI variable store and the tap.
# RUNCODE makes its MAC; KIND names the example command line kept for the results.
floor_prepare() { # CAP I RUNCODE KIND
	local cap=$1 i=$2 code=$3 kind=$4 a j skip=0 n0="" u0="" d0="" tap0="" mac0="" ip0 ipp0 f
	local name="fl-$i" uuid mac ip="$NS_NET.$((10 + i))" dir="$FLOOR/fl-$i" tap="gt$i" args=() tmpl=()
	uuid=$(cat /proc/sys/kernel/random/uuid)
	mac=$(printf '02:fb:%02x:%02x:%02x:%02x' "$INDEX" "$((code / 256))" "$((code % 256))" "$i")
	mapfile -d '' -t tmpl <"$cap/cmdline"
	for j in "${!tmpl[@]}"; do
		a=${tmpl[$j]}
		case "$a" in
		-name) n0=${tmpl[$((j + 1))]%%,*} ;;
		-uuid) u0=${tmpl[$((j + 1))]} ;;
		-pidfile) d0=$(dirname "${tmpl[$((j + 1))]}") ;;
		esac
		[[ "$a" =~ ifname=([^,]+) ]] && tap0=${BASH_REMATCH[1]}
		[[ "$a" =~ mac=([0-9a-f:]+) ]] && mac0=${BASH_REMATCH[1]}
	done
	if [ -z "$n0" ] || [ -z "$u0" ] || [ -z "$d0" ] || [ -z "$tap0" ] || [ -z "$mac0" ]; then
		die "cannot read the identity of the captured QEMU command line: $(tr '\0' ' ' <"$cap/cmdline")"
	fi
	rm -rf "$dir"
	mkdir -p "$dir"
	for j in "${!tmpl[@]}"; do
		[ $skip -eq 1 ] && { skip=0; continue; }
		[ "$j" -eq 0 ] && continue # the program name
		a=${tmpl[$j]}
		if [ "$a" = -name ]; then args+=(-name "$name,process=corral-$name"); skip=1; continue; fi
		a=${a//"$d0/"/"$dir/"}
		a=${a//"$u0"/"$uuid"}
		a=${a//"ifname=$tap0,"/"ifname=$tap,"}
		a=${a//"mac=$mac0"/"mac=$mac"}
		args+=("$a")
	done
	for a in "${args[@]}"; do
		case "$a" in *"$u0"* | *"$d0"* | *"$LAB_DIR/"* | *"$mac0"*) die "the floor's command line still names Corral's member: $a" ;; esac
	done
	printf '%s\0' "${args[@]}" >"$FLOOR/fl-$i.args"

	# The seed: Corral's files with this guest's identity, address and MAC.
	ipp0=$(jq -r '.ethernets.eth0.addresses[0]' "$cap/network-config")
	ip0=${ipp0%/*}
	mkdir -p "$dir/seed.d"
	for f in meta-data network-config user-data; do
		a=$(cat "$cap/$f")
		a=${a//"$u0"/"$uuid"}
		a=${a//"$mac0"/"$mac"}
		a=${a//"$ipp0"/"$ip/24"}
		a=${a//"$ip0"/"$ip"}
		a=${a//"$n0"/"$name"}
		printf '%s\n' "$a" >"$dir/seed.d/$f"
	done
	if ! jq -e --arg u "$uuid" --arg n "$name" '."instance-id" == $u and ."local-hostname" == $n' "$dir/seed.d/meta-data" >/dev/null ||
		! jq -e --arg m "$mac" --arg a "$ip/24" '.ethernets.eth0.match.macaddress == $m and .ethernets.eth0.addresses == [$a]' "$dir/seed.d/network-config" >/dev/null ||
		! tail -n +2 "$dir/seed.d/user-data" | jq -e --arg n "$name" '.hostname == $n and (.ssh_authorized_keys | length) > 0' >/dev/null; then
		die "the floor's seed for $name is not what it should be: $(cat "$dir/seed.d/meta-data" "$dir/seed.d/network-config" "$dir/seed.d/user-data")"
	fi
	genisoimage -quiet -input-charset utf-8 -volid cidata -joliet -rock -output "$dir/seed.iso" \
		"$dir/seed.d/meta-data" "$dir/seed.d/network-config" "$dir/seed.d/user-data"
	# The overlay on the same template file as Corral's member (the agent's own command).
	qemu-img create -q -f qcow2 -F qcow2 -b "$(cat "$cap/template-$i")" "$dir/disk.qcow2"
	# A UEFI guest's own variable store, fresh from OVMF's (as the agent makes it).
	if grep -qz "file=$dir/efivars.fd" "$FLOOR/fl-$i.args"; then cp "$OVMF_VARS" "$dir/efivars.fd"; fi
	for a in "${args[@]}"; do
		# Files QEMU opens (file=, not logfile=, which it makes).
		[[ "$a" =~ (^|,)file=("$dir"/[^,]+) ]] || continue
		[ -e "${BASH_REMATCH[2]}" ] || die "the floor's command line names ${BASH_REMATCH[2]}, which the floor does not make"
	done
	# The tap, on the bridge, with the guest's MTU (as the agent attaches it), up; QEMU opens it
	# by name.
	ip netns exec "$NS" ip tuntap add dev "$tap" mode tap
	ip -n "$NS" link set "$tap" master br0 mtu "$(jq '.ethernets.eth0.mtu // 1500' "$cap/network-config")" up
	echo "$i $ip" >>"$FLOOR/vms"
	if [ "$i" -eq 1 ] && [ ! -f "$WORK/floor-cmdline-$kind" ]; then
		{
			echo "qemu-img create -q -f qcow2 -F qcow2 -b $(cat "$cap/template-$i") $dir/disk.qcow2"
			printf 'ip netns exec %s qemu-system-x86_64' "$NS"
			tr '\0' '\n' <"$FLOOR/fl-$i.args" | while IFS= read -r a; do printf " %q" "$a"; done
			echo
		} >"$WORK/floor-cmdline-$kind"
	fi
}

# One floor run of SIZE guests from the capture of Corral's run CTAG. Writes $WORK/TAG.run.
floor_run() { # TAG CTAG SIZE RUNCODE KIND
	local tag=$1 cap="$WORK/$2.capture" size=$3 code=$4 kind=$5 i ip t0 t1 p0 b0 b1 qpids=() qcpu launchers=() deadline
	wait_quiet "$tag"
	rm -rf "${FLOOR:?}"/*
	p0=$(now_ms)
	for i in $(seq "$size"); do floor_prepare "$cap" "$i" "$code" "$kind"; done
	p0=$(($(now_ms) - p0))
	log "$tag: $size guest(s) with plain qemu-system-x86_64 in namespace $NS (prepared in $p0 ms), then polling ssh"
	b0=$(busy_s)
	deadline=$((EPOCHSECONDS + READY_TIMEOUT_S))
	t0=$(now_ms)
	while read -r i ip; do
		(
			mapfile -d '' -t a <"$FLOOR/fl-$i.args"
			ip netns exec "$NS" qemu-system-x86_64 "${a[@]}" 2>"$FLOOR/fl-$i/qemu.err" ||
				echo "fl-$i: $(cat "$FLOOR/fl-$i/qemu.err")" >>"$FLOOR/failed"
		) &
		launchers+=($!)
	done <"$FLOOR/vms"
	while read -r i ip; do
		poll_login "$WORK/$tag.ssh-$i" "$deadline" \
			ip netns exec "$NS" ssh "${FLOOR_SSH_OPTS[@]}" -i "$KEY" "debian@$ip" true &
		POLLERS+=($!)
	done <"$FLOOR/vms"
	wait "${launchers[@]}" || true
	[ -s "$FLOOR/failed" ] && die "$tag: QEMU failed: $(head -3 "$FLOOR/failed")"
	wait_pollers "$tag"
	t1=$(now_ms)
	for i in $(seq "$size"); do qpids+=("$(cat "$FLOOR/fl-$i/qemu.pid")"); done
	qcpu=$(cpu_sum "${qpids[@]}")
	b1=$(busy_s)
	jq -n --arg tag "$tag" --argjson size "$size" --argjson t0 "$t0" --argjson t1 "$t1" --argjson prep "$p0" \
		--argjson ssh "$(for i in $(seq "$size"); do awk -v i="$i" '{ printf "{\"member\": %d, \"ms\": %s, \"attempts\": %d}\n", i, $1, $2 }' "$WORK/$tag.ssh-$i"; done | jq -s .)" \
		--argjson starts "$(for p in "${qpids[@]}"; do start_ms "$p"; done | jq -s .)" \
		--argjson cond "$(cat "$WORK/cond-$tag.json")" --argjson qcpu "$qcpu" --argjson others "$(others_s "$b0" "$b1" "$qcpu")" \
		'{tag: $tag, size: $size, conditions: $cond, prepare_ms: $prep,
		  ssh_ms: ([$ssh[].ms] | max - $t0), first_ssh_ms: ([$ssh[].ms] | min - $t0),
		  members: [range($size) as $k | {member: ($k + 1), ssh_ms: ($ssh[$k].ms - $t0), attempts: $ssh[$k].attempts,
		            launch_to_qemu_ms: ($starts[$k] - $t0)}],
		  qemu_cpu_s: $qcpu, others_cpu_s: $others}' >"$WORK/$tag.run"
	log "$tag: every guest answered SSH $(jq .ssh_ms "$WORK/$tag.run") ms after the QEMU start (first $(jq .first_ssh_ms "$WORK/$tag.run") ms)"
	kill_floor
	for p in "${qpids[@]}"; do
		case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)" in *qemu-system*) die "$tag: floor QEMU $p still runs" ;; esac
	done
	for i in $(seq "$size"); do ip -n "$NS" link del "gt$i"; done
	rm -rf "${FLOOR:?}"/*
}

# --- 1. boot -----------------------------------------------------------------------------------

boot_part() {
	local run fw code
	for run in $(seq "$RUNS"); do
		for fw in $FIRMWARES; do
			code=$((run * 4 + $([ "$fw" = uefi ] && echo 1 || echo 0)))
			corral_run "corral-$fw-$run" "g${fw:0:1}$run" "deb-$fw" 1
			floor_run "floor-$fw-$run" "corral-$fw-$run" 1 "$code" "$fw"
		done
	done
}

# --- 2. cluster --------------------------------------------------------------------------------

cluster_part() {
	local run
	for run in $(seq "$CRUNS"); do
		corral_run "corral-cluster-$run" "gc$run" deb-bios "$CSIZE"
		floor_run "floor-cluster-$run" "corral-cluster-$run" "$CSIZE" $((run * 4 + 2)) cluster
	done
}

# --- 3. import ---------------------------------------------------------------------------------

import_part() {
	local run fmt f bytes t0 ms avail data vsize need
	# Room for the raw copy and the upload of it (its virtual size each), the vmdk copy and two
	# conversions (its data each), and 512 MiB.
	data=$(qemu-img measure -O qcow2 "$GUEST/debian12.qcow2" | awk '/^required size:/ { print $3 }')
	vsize=$(qemu-img info --output json "$GUEST/debian12.qcow2" | jq '."virtual-size"')
	need=$((2 * vsize + 3 * data + (512 << 20)))
	avail=$(df --output=avail -B1 "$IMPORTS" | tail -1)
	[ "$avail" -ge "$need" ] || die "import: $((avail >> 20)) MiB free in $IMPORTS; the imports need $((need >> 20)) MiB (copies, uploads, conversions)"
	log "import: making a fully allocated raw copy and a vmdk copy of debian12.qcow2"
	qemu-img convert -q -f qcow2 -O raw -S 0 "$GUEST/debian12.qcow2" "$IMPORTS/debian12.raw"
	qemu-img convert -q -f qcow2 -O vmdk "$GUEST/debian12.qcow2" "$IMPORTS/debian12.vmdk"
	for run in $(seq "$IRUNS"); do
		for fmt in raw vmdk; do
			f="$IMPORTS/debian12.$fmt"
			bytes=$(stat -c %s "$f")
			wait_quiet "import-$fmt-$run"
			sync
			t0=$(now_ms)
			corral image import "imp-$fmt-$run" "$f" --format "$fmt" --output json >"$WORK/import-$fmt-$run.out" 2>"$WORK/import-$fmt-$run.err" ||
				die "import: corral image import of the $fmt file failed: $(tail -3 "$WORK/import-$fmt-$run.err")"
			ms=$(($(now_ms) - t0))
			corral image delete "imp-$fmt-$run" >/dev/null 2>"$WORK/import-$fmt-$run.err" ||
				die "import: corral image delete imp-$fmt-$run failed: $(cat "$WORK/import-$fmt-$run.err")"
			jq -n --arg fmt "$fmt" --argjson run "$run" --argjson bytes "$bytes" --argjson ms "$ms" \
				--argjson cond "$(cat "$WORK/cond-import-$fmt-$run.json")" \
				'{side: "corral", format: $fmt, run: $run, bytes: $bytes, ms: $ms, mb_s: ($bytes / 1e6 / ($ms / 1000) * 10 | round / 10), conditions: $cond}' \
				>"$WORK/import-corral-$fmt-$run.json"
			sync
			t0=$(now_ms)
			qemu-img convert -q -f "$fmt" -O qcow2 "$f" "$IMPORTS/out.qcow2"
			ms=$(($(now_ms) - t0))
			rm -f "$IMPORTS/out.qcow2"
			jq -n --arg fmt "$fmt" --argjson run "$run" --argjson bytes "$bytes" --argjson ms "$ms" \
				'{side: "floor", format: $fmt, run: $run, bytes: $bytes, ms: $ms, mb_s: ($bytes / 1e6 / ($ms / 1000) * 10 | round / 10)}' \
				>"$WORK/import-floor-$fmt-$run.json"
			log "import $fmt run $run: corral $(jq .mb_s "$WORK/import-corral-$fmt-$run.json") MB/s, qemu-img convert $(jq .mb_s "$WORK/import-floor-$fmt-$run.json") MB/s ($((bytes / 1000000)) MB)"
		done
	done
	rm -f "$IMPORTS"/debian12.*
}

# --- run ---------------------------------------------------------------------------------------

case " $PARTS " in *" boot "*) boot_part ;; esac
case " $PARTS " in *" cluster "*) cluster_part ;; esac
case " $PARTS " in *" import "*) import_part ;; esac

cp "$LAB_DIR"/*.log "$WORK/" 2>/dev/null || true
log "lab down ($LAB_DIR)"
lab_down_checked "$LAB_DIR" "$INDEX"
ip netns del "$NS"

# --- results -----------------------------------------------------------------------------------

DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
TOTAL=$((EPOCHSECONDS - T_START))
all_json() { # GLOB-PREFIX: the run files of one kind, as an array
	local f
	for f in "$WORK"/"$1"-[0-9]*.run; do [ -f "$f" ] && cat "$f"; done | jq -s .
}
{
	echo "{"
	first=1
	for fw in $FIRMWARES; do
		[ $first -eq 1 ] || echo ","
		first=0
		printf '"%s": {"corral": %s, "floor": %s}' "$fw" "$(all_json "corral-$fw")" "$(all_json "floor-$fw")"
	done
	echo "}"
} >"$WORK/boot-runs.json"
jq -n --argjson c "$(all_json corral-cluster)" --argjson f "$(all_json floor-cluster)" '{corral: $c, floor: $f}' >"$WORK/cluster-runs.json"
for f in "$WORK"/import-corral-*.json "$WORK"/import-floor-*.json; do [ -f "$f" ] && cat "$f"; done | jq -s . >"$WORK/import-runs.json"
cap=""
for c in "$WORK"/corral-bios-1.capture "$WORK"/corral-cluster-1.capture; do [ -f "$c/cmdline" ] && cap=$c && break; done

jq -n --arg date "$DATE" --arg cmd "$COMMAND" --arg commit "$COMMIT" --argjson total "$TOTAL" --arg parts "$PARTS" \
	--argjson quick "$([ -n "$QUICK" ] && echo true || echo false)" \
	--argjson machine "$(cat "$WORK/machine.json")" --arg l1 "$(cut -d' ' -f1-3 /proc/loadavg)" --arg accel "$ACCEL" --arg note "$ACCEL_NOTE" \
	--argjson boot "$(cat "$WORK/boot-runs.json")" --argjson cluster "$(cat "$WORK/cluster-runs.json")" \
	--argjson imports "$(cat "$WORK/import-runs.json")" --argjson warm "$(cat "$WORK/warm.json")" \
	--argjson runs "$RUNS" --argjson cruns "$CRUNS" --argjson iruns "$IRUNS" --argjson csize "$CSIZE" --argjson hosts "$HOSTS" \
	--argjson gb "$GOAL_BOOT" --argjson gc "$GOAL_CLUSTER" --argjson gi "$GOAL_IMPORT" --arg mem "$VM_MEMORY" \
	--arg qcmd "$([ -n "$cap" ] && tr '\0' '\n' <"$cap/cmdline" | while IFS= read -r a; do printf "%q " "$a"; done)" \
	--arg fcmd "$(for k in bios cluster uefi; do [ -f "$WORK/floor-cmdline-$k" ] && cat "$WORK/floor-cmdline-$k" && break; done)" \
	--arg seed "$([ -n "$cap" ] && for f in meta-data network-config user-data; do echo "$f: $(cat "$cap/$f")"; done)" \
	"$JQ_MED"'def st(f): [.[] | f] | {runs: ., median: med, min: min, max: max};
	 def ratio(a; b): if a == null or b == null or b == 0 then null else a / b * 1000 | round / 1000 end;
	 {benchmark: "guests", quick: $quick, date: $date, command: $cmd, commit: $commit, parts: $parts, total_s: $total,
	  machine: ($machine + {accel: $accel, accel_note: $note, loadavg_end: $l1}),
	  guest: {template: "debian12", vcpus: 1, memory: $mem, user: "debian", image: $machine.debian_image},
	  template_warmup_ms: $warm,
	  polling: "one login attempt after another (each bounded by timeout 15 s, ssh ConnectTimeout=5), 0.5 s apart; the time is when the first successful attempt ended",
	  boot: ($boot | with_entries(.value |= (
	           (.corral | st(.ssh_ms)) as $c | (.floor | st(.ssh_ms)) as $f |
	           {runs: $runs, order: "alternating: corral 1, floor 1, corral 2, ...",
	            corral: {ssh_ms: $c, op_end_ms: (.corral | st(.op_end_ms)), request_to_qemu_ms: (.corral | st(.members[0].request_to_qemu_ms)),
	                     qemu_to_ssh_ms: (.corral | st(.members[0].qemu_to_ssh_ms)), runs: .corral},
	            floor: {ssh_ms: $f, runs: .floor},
	            ratio: ratio($c.median; $f.median),
	            ratio_qemu_to_ssh: ratio((.corral | st(.members[0].qemu_to_ssh_ms)).median; $f.median),
	            goal_ratio_max: $gb}))),
	  cluster: ($cluster | (.corral | st(.ssh_ms)) as $c | (.floor | st(.ssh_ms)) as $f |
	           {size: $csize, hosts: $hosts, firmware: "bios", policy: "spread", runs: $cruns, order: "alternating: corral 1, floor 1, ...",
	            corral: {ssh_ms: $c, op_end_ms: (.corral | st(.op_end_ms)), runs: .corral}, floor: {ssh_ms: $f, runs: .floor},
	            ratio: ratio($c.median; $f.median), goal_ratio_max: $gc}),
	  "import": ([$imports[] | .format] | unique | map(. as $fmt | [$imports[] | select(.format == $fmt)] |
	           ([.[] | select(.side == "corral")] | st(.mb_s)) as $c | ([.[] | select(.side == "floor")] | st(.mb_s)) as $f |
	           {(($fmt)): {bytes: .[0].bytes, runs: $iruns, corral_mb_s: $c, floor_mb_s: $f, ratio: ratio($c.median; $f.median), goal_ratio_min: $gi,
	                       corral_ms: ([.[] | select(.side == "corral")] | st(.ms)), floor_ms: ([.[] | select(.side == "floor")] | st(.ms))}}) | add),
	  qemu_command_corral: $qcmd, qemu_command_floor_example: $fcmd, seed_corral_example: $seed,
	  floor_differences: "Same QEMU binary and arguments as the Corral member (read from /proc/PID/cmdline); identity swapped (name, UUID, MAC, tap name, VM directory); a fresh overlay on the same template file made with the agent'"'"'s qemu-img command; Corral'"'"'s seed files (isoinfo) with identity, MAC and address swapped, made into a cidata volume with the agent'"'"'s genisoimage flags; a fresh OVMF_VARS_4M.fd copy for UEFI; the tap made before QEMU starts (ip tuntap) and put on a bridge in a namespace of its own, where the bridge has an address and ssh runs; started with ip netns exec, -daemonize kept; timed from the QEMU start (its overlay, seed and tap made before, prepare_ms)"}' \
	>"$SCRATCH/guests.json"

J="$SCRATCH/guests.json"
q() { jq -r "$@" "$J"; }
COND='"CPUs \(.cpu_busy_pct)% busy, \(.qemu_processes) QEMU process(es) running, load \(.loadavg), waited \(.waited_s) s"'
{
	echo "# Real guest OSes: Corral vs the floor"
	echo
	[ -n "$QUICK" ] && echo "**Quick check (BENCH_QUICK=1): one run of each, not a measurement.**" && echo
	echo "- Date: $(q .date) (commit $(q .commit), parts: $(q .parts), took $(q .total_s) s)"
	echo "- Command: \`$(q .command)\`"
	echo "- Machine: $(q .machine.nproc) CPUs ($(q .machine.cpu_model)), $(q .machine.memory_gib) GiB RAM, host kernel $(q .machine.host_kernel), /dev/kvm $(q .machine.dev_kvm)"
	echo "- Load average (1/5/15 min) at start: $(q .machine.loadavg_start), at end: $(q .machine.loadavg_end)"
	echo "- QEMU: $(q .machine.qemu_version); accelerator **$(q .machine.accel)** ($(q .machine.accel_note))"
	echo "- Guest: $(q '.guest.image.os'), kernel $(q '.guest.image.kernel_version'), $(q .guest.vcpus) vCPU, $(q .guest.memory); template first sent to each host before measuring ($(q '.template_warmup_ms | map(tostring) | join(", ")') ms)"
	echo "- SSH answering: \`ssh -i KEY debian@GUEST true\` succeeded ($(q .polling)); Corral through \`corral vm ssh MEMBER -l debian -i KEY -- true\`"
	echo
	if [ "$(q '.boot | length')" -gt 0 ]; then
		echo "## Boot to SSH answering (one VM)"
		echo
		echo "Corral: request (\`corral cluster create NAME --profile deb-FIRMWARE --size 1 --ssh-key KEY --no-wait\`) -> first successful \`corral vm ssh\`. Floor: QEMU start -> first successful ssh. $(q '.boot | to_entries[0].value | "\(.runs) run(s) of each, \(.order)"')."
		echo
		echo "| firmware | Corral median ms | runs | floor median ms | runs | **ratio** (goal <= $GOAL_BOOT) | Corral: request -> QEMU start | Corral: QEMU start -> SSH | Corral op done (guest agent) |"
		echo "|---|---|---|---|---|---|---|---|---|"
		q '.boot | to_entries[] | .key as $fw | .value | "| \($fw) | \(.corral.ssh_ms.median) | \(.corral.ssh_ms.runs | map(tostring) | join(", ")) | \(.floor.ssh_ms.median) | \(.floor.ssh_ms.runs | map(tostring) | join(", ")) | **\(.ratio)** | \(.corral.request_to_qemu_ms.median) ms | \(.corral.qemu_to_ssh_ms.median) ms (ratio to the floor \(.ratio_qemu_to_ssh)) | \(.corral.op_end_ms.median) ms |"'
		echo
		echo "Conditions and others' CPU (CPU seconds the machine spent busy during the run beyond the guest's QEMU and, for Corral, its daemons: other work on the same CPUs):"
		echo
		q '.boot | to_entries[] | .value.corral.runs[], .value.floor.runs[] | "- \(.tag): \(.conditions | '"$COND"'); others'"'"' CPU \(.others_cpu_s) s"'
		echo
	fi
	if [ "$(q '.cluster.corral.runs | length')" -gt 0 ]; then
		q '.cluster | "## A \(.size)-member cluster to every member answering SSH"'
		echo
		q '.cluster | "Corral: `corral cluster create NAME --profile deb-bios --size \(.size) --ssh-key KEY --no-wait` on a \(.hosts)-host lab (policy \(.policy)), every member polled with `corral vm ssh` at once, until the last answered. Floor: \(.size) plain QEMU processes started together in one namespace, polled the same way. \(.runs) run(s) of each, \(.order)."'
		echo
		echo "| | median ms | runs | first member ms (runs) |"
		echo "|---|---|---|---|"
		q '.cluster | "| Corral: request -> every member answered | \(.corral.ssh_ms.median) | \(.corral.ssh_ms.runs | map(tostring) | join(", ")) | \(.corral.runs | map(.first_ssh_ms | tostring) | join(", ")) |",
			"| Floor: QEMU start -> every guest answered | \(.floor.ssh_ms.median) | \(.floor.ssh_ms.runs | map(tostring) | join(", ")) | \(.floor.runs | map(.first_ssh_ms | tostring) | join(", ")) |"'
		echo
		q '.cluster | "**Ratio Corral / floor: \(.ratio)** (goal <= \(.goal_ratio_max)). Corral'"'"'s operation (every member running: its guest agent answered) ended at \(.corral.op_end_ms.median) ms (median)."'
		echo
		q '.cluster.corral.runs[] | "- \(.tag): members per host \(.members | group_by(.host) | map("\(.[0].host) \(length)") | join(", ")); request -> QEMU start \(.members | map(.request_to_qemu_ms | tostring) | join(", ")) ms; \(.conditions | '"$COND"'); others'"'"' CPU \(.others_cpu_s) s"'
		q '.cluster.floor.runs[] | "- \(.tag): \(.conditions | '"$COND"'); others'"'"' CPU \(.others_cpu_s) s"'
		echo
	fi
	if [ "$(q '.import // {} | length')" -gt 0 ]; then
		echo "## Image import"
		echo
		echo "\`corral image import NAME FILE --format F\` (streamed to the controller, checked, converted with \`qemu-img convert -q -f F -O qcow2\`) against that \`qemu-img convert\` of the same file alone. MB/s = the file's bytes / seconds (MB = 10^6 bytes); \`sync\` before each; the file is in the page cache for both."
		echo
		echo "| format | file MB | Corral MB/s (runs) | qemu-img convert MB/s (runs) | **ratio** (goal >= $GOAL_IMPORT) |"
		echo "|---|---|---|---|---|"
		q '.import | to_entries[] | "| \(.key) | \(.value.bytes / 1e6 | floor) | \(.value.corral_mb_s.median) (\(.value.corral_mb_s.runs | map(tostring) | join(", "))) | \(.value.floor_mb_s.median) (\(.value.floor_mb_s.runs | map(tostring) | join(", "))) | **\(.value.ratio)** |"'
		echo
		echo "The raw file is fully allocated (\`qemu-img convert -O raw -S 0\`), as a downloaded raw image is; the vmdk is \`qemu-img convert -O vmdk\`'s default (monolithic sparse)."
		echo
	fi
	echo "## The floor"
	echo
	echo "$(q .floor_differences)."
	echo
	echo "QEMU command line Corral ran (a BIOS member, from /proc/PID/cmdline):"
	echo
	echo '```'
	q .qemu_command_corral
	echo '```'
	echo
	echo "The floor's, for its first guest:"
	echo
	echo '```'
	q .qemu_command_floor_example
	echo '```'
	echo
	echo "Corral's seed (the floor's has the same files, its own identity swapped in):"
	echo
	echo '```'
	q .seed_corral_example
	echo '```'
} >"$SCRATCH/guests.md"

mkdir -p "$RESULTS"
cp "$SCRATCH/guests.json" "$SCRATCH/guests.md" "$RESULTS/"
summary=$(jq -r '[(.boot | to_entries[] | "boot \(.key) \(.value.ratio) (corral \(.value.corral.ssh_ms.median) ms / floor \(.value.floor.ssh_ms.median) ms)"),
	(if (.cluster.corral.runs | length) > 0 then "cluster of \(.cluster.size) \(.cluster.ratio) (\(.cluster.corral.ssh_ms.median) / \(.cluster.floor.ssh_ms.median) ms)" else empty end),
	((.import // {}) | to_entries[] | "import \(.key) \(.value.ratio) (\(.value.corral_mb_s.median) / \(.value.floor_mb_s.median) MB/s)")] | join("; ")' "$J")
log "ratios Corral/floor: $summary"
log "done in $TOTAL s: $RESULTS/guests.json, $RESULTS/guests.md"
