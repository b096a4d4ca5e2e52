#!/usr/bin/env bash
# Walking-skeleton benchmarks. Writes bench/results/skeleton.json (machine-readable) and
# bench/results/skeleton.md (a table for people), only when every part succeeded.
#
#   1. disk     copy-on-write overlay creation vs a full copy (cp, qemu-img convert) of a 1 GiB
#               and an 8 GiB template filled with real data; median of BENCH_RUNS runs each
#   2. boot     boot-to-ready (QEMU start -> guest agent answered) of 5 VMs created one after
#               another on a 3-host lab with --accel auto; then one VM on a separate 1-host lab
#               with --accel kvm, bounded by `timeout 90` (KVM guests hang on some nested hosts)
#   3. memory   RSS of the controller and the agents with 20 running VMs (created 4 at a time),
#               and the time to get the 20 running
#
# Needs root (labs), jq, qemu-img/qemu-io, the release binary and the guest assets: run it
# through `make bench` / bench/run.sh, which builds those.
#
# Environment:
#   CORRAL_CACHE        cache root (default <repo>/.cache)
#   CORRAL_BIN          corral binary (default <repo>/target/release/corral)
#   BENCH_RUNS          runs per disk measurement (default 5)
#   BENCH_DISK_SIZES    template sizes in GiB (default "1 8")
#   BENCH_BOOT_VMS      VMs for the boot measurement (default 5)
#   BENCH_VMS           VMs for the memory measurement (default 20)
#   BENCH_PARALLEL      VM creations at a time for it (default 4)
#   BENCH_RESULTS       output directory (default <repo>/bench/results)
#   BENCH_QUIET_PCT     before each part, wait until the CPUs are at most this % busy (default 25)
#   BENCH_QUIET_WAIT    ... for at most this many seconds, then measure anyway (default 90)
#   BENCH_COMMIT        commit recorded in the results (default: git HEAD, "+dirty" if modified)
set -euo pipefail

# shellcheck source=bench/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
forget_caller_lab
BIN=${CORRAL_BIN:-$REPO/target/release/corral}
GUEST="$CORRAL_CACHE/guest"
RESULTS=${BENCH_RESULTS:-$REPO/bench/results}
RUNS=${BENCH_RUNS:-5}
DISK_SIZES=${BENCH_DISK_SIZES:-1 8}
NVMS=${BENCH_VMS:-20}
PARALLEL=${BENCH_PARALLEL:-4}
BOOT_VMS=${BENCH_BOOT_VMS:-5}
VM_MEMORY=128M
COMMAND=${BENCH_COMMAND:-bash bench/skeleton.sh}
QUIET_PCT=${BENCH_QUIET_PCT:-25}
QUIET_WAIT=${BENCH_QUIET_WAIT:-90}

LAB_DIR=/tmp/corral-bench-lab
LAB_INDEX=150
LAB_URL=http://198.18.$LAB_INDEX.1:7700
KVM_LAB_DIR=/tmp/corral-bench-kvm-lab
KVM_INDEX=151
KVM_URL=http://198.18.$KVM_INDEX.1:7700
KVM_TIMEOUT=90

T_START=$EPOCHSECONDS

need_root
need_commands jq qemu-img qemu-io qemu-system-x86_64 ip awk sync
need_bin_and_guest "$BIN"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/corral-bench-skeleton.XXXXXX")
WORK="$SCRATCH/work"
mkdir -p "$WORK"

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	finish_labs "$rc" "$KVM_LAB_DIR" "$LAB_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers (the shared ones are in bench/lib/common.sh) ---------------------------------------

now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "$t"; }
# Milliseconds (one decimal) since a now_us value.
ms_since() { awk -v a="$1" -v b="$(now_us)" 'BEGIN { printf "%.1f\n", (b - a) / 1000 }'; }

# --- machine facts -----------------------------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
machine_facts >"$WORK/machine.json"

# --- 1. overlay vs full copy -------------------------------------------------------------------

wait_quiet disk
BASE_VSIZE=$(qemu-img info --output json "$GUEST/base.qcow2" | jq '."virtual-size"')
GIB=$((1 << 30))
for size in $DISK_SIZES; do
	tmpl="$SCRATCH/template-${size}G.qcow2"
	bytes=$((size * GIB))
	[ "$bytes" -gt "$BASE_VSIZE" ] || die "template size ${size} GiB is not larger than base.qcow2"
	log "disk: making a ${size} GiB template (base.qcow2 + $(((bytes - BASE_VSIZE) >> 20)) MiB of 0xab data)"
	t0=$(now_us)
	cp "$GUEST/base.qcow2" "$tmpl"
	qemu-img resize -q "$tmpl" "${size}G"
	# Fill everything after the base root filesystem with non-zero data, 1 GiB per write.
	cmds=()
	off=$BASE_VSIZE
	while [ "$off" -lt "$bytes" ]; do
		len=$((bytes - off))
		[ "$len" -gt "$GIB" ] && len=$GIB
		cmds+=(-c "write -P 0xab $off $len")
		off=$((off + len))
	done
	qemu-io -f qcow2 "${cmds[@]}" "$tmpl" >/dev/null
	sync
	fill_ms=$(ms_since "$t0")
	info=$(qemu-img info --output json "$tmpl")
	alloc=$(jq '."actual-size"' <<<"$info")
	fsize=$(stat -c %s "$tmpl")
	[ "$alloc" -ge $(((bytes - BASE_VSIZE) * 95 / 100)) ] || die "template ${size}G holds only $alloc bytes of data"
	log "disk: template ready in $fill_ms ms ($((alloc >> 20)) MiB allocated); $RUNS runs each of overlay, cp, qemu-img convert"
	for _ in $(seq "$RUNS"); do
		ov="$SCRATCH/overlay.qcow2" cpy="$SCRATCH/copy.qcow2" cv="$SCRATCH/convert.qcow2"
		sync
		t0=$(now_us)
		qemu-img create -q -f qcow2 -F qcow2 -b "$tmpl" "$ov"
		ms_since "$t0" >>"$WORK/ov-$size"
		sync "$ov"
		ms_since "$t0" >>"$WORK/ovs-$size"
		rm -f "$ov"

		sync
		t0=$(now_us)
		cp "$tmpl" "$cpy"
		ms_since "$t0" >>"$WORK/cp-$size"
		sync "$cpy"
		ms_since "$t0" >>"$WORK/cps-$size"
		rm -f "$cpy"

		sync
		t0=$(now_us)
		qemu-img convert -f qcow2 -O qcow2 "$tmpl" "$cv"
		ms_since "$t0" >>"$WORK/cv-$size"
		sync "$cv"
		ms_since "$t0" >>"$WORK/cvs-$size"
		rm -f "$cv"
	done
	rm -f "$tmpl"
	sync
	jq -n --argjson size "$size" --argjson alloc "$alloc" --argjson fsize "$fsize" --argjson fill "$fill_ms" \
		--argjson ov "$(stats 1 <"$WORK/ov-$size")" --argjson ovs "$(stats 1 <"$WORK/ovs-$size")" \
		--argjson cp "$(stats 1 <"$WORK/cp-$size")" --argjson cps "$(stats 1 <"$WORK/cps-$size")" \
		--argjson cv "$(stats 1 <"$WORK/cv-$size")" --argjson cvs "$(stats 1 <"$WORK/cvs-$size")" \
		'{size_gib: $size, template_file_bytes: $fsize, template_allocated_bytes: $alloc, template_fill_ms: $fill,
		  overlay_ms: $ov, overlay_fsync_ms: $ovs, cp_ms: $cp, cp_fsync_ms: $cps, convert_ms: $cv, convert_fsync_ms: $cvs,
		  ratio_cp_over_overlay: ($cp.median / $ov.median * 10 | round / 10),
		  ratio_cp_fsync_over_overlay: ($cps.median / $ov.median * 10 | round / 10),
		  ratio_convert_over_overlay: ($cv.median / $ov.median * 10 | round / 10)}' >"$WORK/disk-$size.json"
	log "disk ${size}G: overlay $(jq .overlay_ms.median "$WORK/disk-$size.json") ms, cp $(jq .cp_ms.median "$WORK/disk-$size.json") ms (with fsync $(jq .cp_fsync_ms.median "$WORK/disk-$size.json") ms), convert $(jq .convert_ms.median "$WORK/disk-$size.json") ms"
done
jq -s '.' "$WORK"/disk-*.json >"$WORK/disk.json"

# --- 2a. boot-to-ready on the auto lab ---------------------------------------------------------

lab_up "$LAB_DIR" "$LAB_INDEX" 3 auto
use_lab "$LAB_DIR" "$LAB_URL"
mapfile -t AGENT_PIDS < <(jq -r '.hosts[].agent_pid' "$LAB_DIR/lab.json")
CONTROLLER_PID=$(jq -r '.controller_pid' "$LAB_DIR/lab.json")
corral host show lab-1 --output json >"$WORK/host-lab-1.json"
ACCEL=$(jq -r .accel "$WORK/host-lab-1.json")
ACCEL_NOTE=$(jq -r .accel_note "$WORK/host-lab-1.json")
log "auto lab: accelerator $ACCEL ($ACCEL_NOTE)"
# Idle daemon memory, before any VM.
{
	echo "{\"controller\": $(rss_kib "$CONTROLLER_PID")"
	for i in "${!AGENT_PIDS[@]}"; do echo ", \"lab-$((i + 1))\": $(rss_kib "${AGENT_PIDS[$i]}")"; done
	echo "}"
} >"$WORK/rss-idle.json"

wait_quiet boot
for i in $(seq "$BOOT_VMS"); do
	t0=$(now_us)
	corral vm create "boot-$i" --template base --vcpus 1 --memory "$VM_MEMORY" --output json >"$WORK/boot-$i.json"
	wall=$(ms_since "$t0")
	jq -e '.state == "running" and .boot_ms != null' "$WORK/boot-$i.json" >/dev/null ||
		die "boot-$i is not running: $(jq -c '{state, error}' "$WORK/boot-$i.json")"
	jq --argjson wall "$wall" '{name, host, boot_ms, create_ms: $wall}' "$WORK/boot-$i.json" >"$WORK/boot-$i.row"
	log "boot-$i on $(jq -r .host "$WORK/boot-$i.json"): boot_ms $(jq .boot_ms "$WORK/boot-$i.json"), vm create took $wall ms"
done
jq -s --arg accel "$ACCEL" --arg note "$ACCEL_NOTE" --argjson n "$BOOT_VMS" --argjson cond "$(cat "$WORK/cond-boot.json")" \
	"$JQ_MED"'{conditions: $cond, accel: $accel, accel_note: $note, vms: ., boot_ms: ([.[].boot_ms] | {median: med, min: min, max: max}),
	  create_ms: ([.[].create_ms] | {median: med, min: min, max: max}),
	  sequential: true, count: $n}' "$WORK"/boot-*.row >"$WORK/boot-auto.json"
for i in $(seq "$BOOT_VMS"); do corral vm delete "boot-$i" >/dev/null 2>&1; done
# Wait for the controller to forget them (delete returns when done; this is a check).
for _ in $(seq 100); do
	[ "$(corral vm list --output json | jq length)" -eq 0 ] && break
	sleep 0.1
done
[ "$(corral vm list --output json | jq length)" -eq 0 ] || die "VMs remain after deleting the boot VMs: $(corral vm list --output json | jq -c '[.[].name]')"

# --- 3. daemon memory with N running VMs -------------------------------------------------------

wait_quiet memory
log "memory: creating $NVMS VMs ($VM_MEMORY, 1 vCPU), $PARALLEL at a time"
t0=$(now_us)
if ! seq -w 1 "$NVMS" | xargs -P "$PARALLEL" -I{} sh -c \
	'"$0" --url "$1" vm create "mem-$2" --template base --vcpus 1 --memory "$3" --output json >"$4/mem-$2.json" 2>"$4/mem-$2.err"' \
	"$BIN" "$URL" {} "$VM_MEMORY" "$WORK"; then
	for e in "$WORK"/mem-*.err; do [ -s "$e" ] && log "$(basename "$e" .err): $(cat "$e")"; done
	die "not every VM could be created"
fi
fill_s=$(awk -v ms="$(ms_since "$t0")" 'BEGIN { printf "%.1f\n", ms / 1000 }')
done_ms=$(($(now_us) / 1000))
corral vm list --output json >"$WORK/vms.json"
running=$(jq '[.[] | select(.state == "running")] | length' "$WORK/vms.json")
[ "$running" -eq "$NVMS" ] || die "$running of $NVMS VMs are running"
log "memory: $NVMS VMs running after $fill_s s; waiting for a heartbeat from every host"
# The agents' state is settled once each has sent a heartbeat after the last VM came up.
for _ in $(seq 200); do
	corral host list --output json >"$WORK/hosts.json"
	jq -e --argjson t "$done_ms" 'all(.[]; .last_heartbeat_ms > $t + 1000)' "$WORK/hosts.json" >/dev/null && break
	sleep 0.1
done
jq -e --argjson t "$done_ms" 'all(.[]; .last_heartbeat_ms > $t + 1000)' "$WORK/hosts.json" >/dev/null || die "hosts stopped sending heartbeats"
ctl_rss=$(rss_kib "$CONTROLLER_PID")
busy_with_vms=$(cpu_busy_pct)
: >"$WORK/agents.rows"
for i in "${!AGENT_PIDS[@]}"; do
	h="lab-$((i + 1))"
	jq -n --arg h "$h" --argjson pid "${AGENT_PIDS[$i]}" --argjson rss "$(rss_kib "${AGENT_PIDS[$i]}")" \
		--argjson idle "$(jq --arg h "$h" '.[$h]' "$WORK/rss-idle.json")" \
		--argjson vms "$(jq --arg h "$h" '[.[] | select(.host == $h)] | length' "$WORK/vms.json")" \
		'{host: $h, pid: $pid, vms: $vms, rss_kib_idle: $idle, rss_kib: $rss}' >>"$WORK/agents.rows"
done
: >"$WORK/qemu-rss"
for f in "$LAB_DIR"/lab-*/vms/mem-*/qemu.pid; do
	rss_kib "$(cat "$f")" >>"$WORK/qemu-rss"
done
[ "$(wc -l <"$WORK/qemu-rss")" -eq "$NVMS" ] || die "found $(wc -l <"$WORK/qemu-rss") QEMU processes for $NVMS VMs"
jq -n --argjson n "$NVMS" --argjson p "$PARALLEL" --arg mem "$VM_MEMORY" --argjson fill "$fill_s" \
	--argjson ctl "$ctl_rss" --argjson idle "$(cat "$WORK/rss-idle.json")" \
	--argjson agents "$(jq -s . "$WORK/agents.rows")" \
	--argjson boot "$(jq -r .boot_ms "$WORK"/mem-*.json | stats 1)" \
	--argjson qemu "$(stats 1 <"$WORK/qemu-rss")" --argjson qsum "$(awk '{ s += $1 } END { print s }' "$WORK/qemu-rss")" \
	--argjson busy "$busy_with_vms" --argjson cond "$(cat "$WORK/cond-memory.json")" \
	'{conditions: $cond, vms: $n, parallel: $p, vm_memory: $mem, time_to_running_s: $fill, boot_ms_under_load: $boot,
	  cpu_busy_pct_with_vms_idle: $busy,
	  controller_rss_kib_idle: $idle.controller, controller_rss_kib: $ctl, agents: $agents,
	  agents_rss_kib_sum: ([$agents[].rss_kib] | add), agents_rss_kib_sum_idle: ([$agents[].rss_kib_idle] | add),
	  qemu_rss_kib_per_vm: $qemu, qemu_rss_kib_sum: $qsum}' >"$WORK/memory.json"
log "memory: controller $((ctl_rss / 1024)) MiB, agents $(jq -c '[.agents[] | .rss_kib / 1024 | floor]' "$WORK/memory.json") MiB"
log "memory: deleting the $NVMS VMs"
seq -w 1 "$NVMS" | xargs -P "$PARALLEL" -I{} "$BIN" --url "$URL" vm delete "mem-{}" >/dev/null 2>&1 || die "cannot delete the VMs"
[ "$(corral vm list --output json | jq length)" -eq 0 ] || die "VMs remain after deletion"
log "lab down ($LAB_DIR)"
lab_down_checked "$LAB_DIR" "$LAB_INDEX"

# --- 2b. boot on a KVM lab ---------------------------------------------------------------------

lab_up "$KVM_LAB_DIR" "$KVM_INDEX" 1 kvm
use_lab "$KVM_LAB_DIR" "$KVM_URL"
wait_quiet kvm
corral host show lab-1 --output json >"$WORK/kvm-host.json"
log "kvm lab: $(jq -r '.accel + " (" + .accel_note + ")"' "$WORK/kvm-host.json"); creating one VM, bounded by timeout $KVM_TIMEOUT"
t0=$(now_us)
set +e
timeout "$KVM_TIMEOUT" "$BIN" --url "$URL" vm create kvm-1 --template base --vcpus 1 --memory "$VM_MEMORY" --output json >"$WORK/kvm-vm.json" 2>"$WORK/kvm-vm.err"
rc=$?
set -e
wall=$(ms_since "$t0")
state=$(timeout 10 "$BIN" --url "$URL" vm show kvm-1 --output json 2>/dev/null | jq -r '.state // empty' || true)
console=$(timeout 10 "$BIN" --url "$URL" vm console kvm-1 2>/dev/null | tr -d '\r' || true)
if [ $rc -eq 0 ] && jq -e '.state == "running"' "$WORK/kvm-vm.json" >/dev/null; then
	outcome=booted
	boot_ms=$(jq .boot_ms "$WORK/kvm-vm.json")
	err=""
elif [ $rc -eq 124 ]; then
	outcome=hung
	boot_ms=null
	err="no answer within $KVM_TIMEOUT s (vm create killed by timeout)"
else
	outcome=failed
	boot_ms=null
	err=$(cat "$WORK/kvm-vm.err")
fi
log "kvm: $outcome after $wall ms (state now: ${state:-unknown})"
jq -n --arg outcome "$outcome" --argjson boot "$boot_ms" --argjson wall "$wall" --argjson to "$KVM_TIMEOUT" \
	--arg state "$state" --arg err "$err" --arg note "$(jq -r .accel_note "$WORK/kvm-host.json")" \
	--arg accel "$(jq -r .accel "$WORK/kvm-host.json")" \
	--argjson cbytes "${#console}" --arg ctail "$(printf '%s\n' "$console" | grep -v '^[[:space:]]*$' | tail -3)" \
	--argjson cond "$(cat "$WORK/cond-kvm.json")" \
	'{conditions: $cond, accel: $accel, accel_note: $note, outcome: $outcome, timeout_s: $to, boot_ms: $boot, elapsed_ms: $wall,
	  state_at_timeout: $state, error: $err, console_bytes: $cbytes, console_tail: $ctail}' >"$WORK/boot-kvm.json"
log "lab down ($KVM_LAB_DIR)"
lab_down_checked "$KVM_LAB_DIR" "$KVM_INDEX"

# --- results -----------------------------------------------------------------------------------

mkdir -p "$RESULTS"
commit=$(bench_commit)
jq -n --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg cmd "$COMMAND" --arg commit "$commit" \
	--argjson total "$((EPOCHSECONDS - T_START))" --argjson runs "$RUNS" \
	--argjson machine "$(cat "$WORK/machine.json")" --arg accel "$ACCEL" --arg note "$ACCEL_NOTE" \
	--argjson disk "$(cat "$WORK/disk.json")" --argjson dcond "$(cat "$WORK/cond-disk.json")" \
	--argjson auto "$(cat "$WORK/boot-auto.json")" --argjson kvm "$(cat "$WORK/boot-kvm.json")" \
	--argjson mem "$(cat "$WORK/memory.json")" \
	--arg l0 "$LOAD_START" --arg l1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
	'{benchmark: "skeleton", date: $date, command: $cmd, commit: $commit, total_s: $total,
	  machine: ($machine + {accel: $accel, accel_note: $note, loadavg_start: $l0, loadavg_end: $l1}),
	  disk: {conditions: $dcond, runs: $runs, page_cache: "warm: templates were just written and fit in RAM; caches not dropped. *_fsync_ms include fsync of the new file; a sync ran before each timed command",
	         templates: $disk},
	  boot: {auto_lab: $auto, kvm_lab: $kvm},
	  memory: $mem}' >"$SCRATCH/skeleton.json"

J="$SCRATCH/skeleton.json"
q() { jq -r "$@" "$J"; }
# Conditions line of a part: q "PATH | $COND"
COND='"Conditions before this part: CPUs \(.cpu_busy_pct)% busy, \(.qemu_processes) QEMU process(es) of others running, load \(.loadavg) (waited \(.waited_s) s for a quiet machine)."'
{
	echo "# Walking-skeleton benchmarks"
	echo
	echo "- Date: $(q .date) (commit $(q .commit), total $(q .total_s) s)"
	echo "- Command: \`$(q .command)\`"
	echo "- Machine: $(q .machine.nproc) CPUs ($(q .machine.cpu_model)), $(q .machine.memory_gib) GiB RAM, host kernel $(q .machine.host_kernel), /dev/kvm $(q .machine.dev_kvm)"
	echo "- Load average (1/5/15 min) at start: $(q .machine.loadavg_start), at end: $(q .machine.loadavg_end)"
	echo "- QEMU: $(q .machine.qemu_version)"
	echo "- Guest: $(q .machine.guest_os), kernel $(q .machine.guest_kernel)"
	echo "- Accelerator (lab with \`--accel auto\`): **$(q .machine.accel)**: $(q .machine.accel_note)"
	echo
	echo "## Overlay creation vs full copy"
	echo
	echo "Median of $(q .disk.runs) runs (min-max). Templates: base.qcow2 resized and filled with 0xab data. $(q .disk.page_cache)."
	echo
	q ".disk.conditions | $COND"
	echo
	echo "| template | data | overlay (qemu-img create -b) | cp | cp + fsync | qemu-img convert | convert + fsync | cp / overlay | convert / overlay |"
	echo "|---|---|---|---|---|---|---|---|---|"
	q '.disk.templates[] | def s(x): "\(x.median) ms (\(x.min)-\(x.max))";
		"| \(.size_gib) GiB | \(.template_allocated_bytes / 1048576 | floor) MiB | \(s(.overlay_ms)) | \(s(.cp_ms)) | \(s(.cp_fsync_ms)) | \(s(.convert_ms)) | \(s(.convert_fsync_ms)) | \(.ratio_cp_over_overlay)x | \(.ratio_convert_over_overlay)x |"'
	echo
	echo "## Boot to ready (QEMU start -> guest agent answered)"
	echo
	q ".boot.auto_lab.conditions | $COND"
	echo
	echo "| accelerator | lab | VMs | boot_ms median | min | max | vm create wall median |"
	echo "|---|---|---|---|---|---|---|"
	q '.boot.auto_lab | "| \(.accel) | 3 hosts, --accel auto | \(.count), one after another | \(.boot_ms.median) | \(.boot_ms.min) | \(.boot_ms.max) | \(.create_ms.median) ms |"'
	q '.boot.kvm_lab | if .outcome == "booted" then "| kvm | 1 host, --accel kvm | 1 | \(.boot_ms) | \(.boot_ms) | \(.boot_ms) | \(.elapsed_ms) ms |"
		else "| kvm | 1 host, --accel kvm | 1 | **\(.outcome)**: \(.error) | - | - | - |" end'
	echo
	q '.boot.kvm_lab | "KVM: outcome **\(.outcome)**; VM state when checked: `\(.state_at_timeout)`; serial console \(.console_bytes) bytes" + (if .console_tail != "" then ", last lines:\n\n```\n\(.console_tail)\n```" else "." end)'
	echo
	q ".boot.kvm_lab.conditions | \"KVM lab. \" + $COND"
	echo
	echo "## Daemon memory with $(q .memory.vms) running VMs"
	echo
	q '.memory | "\(.vms) VMs of \(.vm_memory), 1 vCPU, created \(.parallel) at a time on 3 hosts: all running after **\(.time_to_running_s) s** (boot_ms under that load: median \(.boot_ms_under_load.median), max \(.boot_ms_under_load.max)). With the \(.vms) VMs idle, the CPUs were \(.cpu_busy_pct_with_vms_idle)% busy."'
	echo
	q ".memory.conditions | $COND"
	echo
	echo "| process | VMs | RSS idle (0 VMs) | RSS with VMs |"
	echo "|---|---|---|---|"
	q '.memory | def m(k): "\(k / 1024 * 10 | round / 10) MiB"; "| controller | \(.vms) | \(m(.controller_rss_kib_idle)) | \(m(.controller_rss_kib)) |",
		(.agents[] | "| agent \(.host) | \(.vms) | \(m(.rss_kib_idle)) | \(m(.rss_kib)) |"),
		"| agents, sum | \(.vms) | \(m(.agents_rss_kib_sum_idle)) | \(m(.agents_rss_kib_sum)) |",
		"| QEMU, per VM (median) | 1 | - | \(m(.qemu_rss_kib_per_vm.median)) |",
		"| QEMU, sum | \(.vms) | - | \(m(.qemu_rss_kib_sum)) |"'
} >"$SCRATCH/skeleton.md"

cp "$SCRATCH/skeleton.json" "$RESULTS/skeleton.json"
cp "$SCRATCH/skeleton.md" "$RESULTS/skeleton.md"
log "done in $((EPOCHSECONDS - T_START)) s: $RESULTS/skeleton.json, $RESULTS/skeleton.md"
