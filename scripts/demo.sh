#!/usr/bin/env bash
# `make demo`: brings up a 3-host lab, deploys VMs, shows them, and leaves the lab running so
# you can go on by hand (the last lines say how, and how to take it down).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
C="$REPO/target/debug/corral"
export CORRAL_CACHE=${CORRAL_CACHE:-$REPO/.cache}
export CORRAL_LAB_DIR=${CORRAL_LAB_DIR:-/var/lib/corral/lab}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Bring up a lab: a controller and 3 hosts (network namespaces), each running a real agent"
eval "$("$C" lab up --hosts 3)"
echo "export CORRAL_URL=$CORRAL_URL"
echo "export CORRAL_TOKEN=$CORRAL_TOKEN"
# Balancing and consolidation are on by default; the demo shows them last, so they wait.
"$C" drs set --mode off >/dev/null
run "$C" host list
run "$C" template list

step "Deploy VMs from the template (copy-on-write disks); the scheduler places them"
"$C" cluster delete hpc >/dev/null 2>&1 || true
"$C" profile delete small >/dev/null 2>&1 || true
for vm in web1 web2 db1; do
  "$C" vm delete "$vm" >/dev/null 2>&1 || true
done
run "$C" vm create web1 --template base --vcpus 1 --memory 256M >/dev/null
run "$C" vm create web2 --template base --vcpus 1 --memory 256M >/dev/null
run "$C" vm create db1 --template base --vcpus 1 --memory 256M --host lab-3 --workload cpu >/dev/null
run "$C" vm list
run "$C" host list

step "Run a command in a guest through Corral's guest agent"
run "$C" vm exec web1 -- sh -c 'echo "hello from $(hostname)"; cat /proc/uptime'

step "Lifecycle: pause, resume, suspend to disk, resume"
run "$C" vm pause web2 | grep state
run "$C" vm resume web2 | grep state
run "$C" vm suspend web2 | grep state
run "$C" vm resume web2 | grep state
run "$C" vm show web1

step "A virtual cluster from a profile: configure, place, prepare, execute"
PROFILE=$(mktemp)
trap 'rm -f "$PROFILE"' EXIT
printf 'template = "base"\nvcpus = 1\nmemory = "128M"\n\n[placement]\npolicy = "spread"\n' >"$PROFILE"
cat "$PROFILE"
run "$C" profile create small --file "$PROFILE" >/dev/null
run "$C" cluster create hpc --profile small --size 6
run "$C" cluster show hpc
run "$C" vm exec hpc-2 -- sh -c 'hostname; ip -4 -o addr show eth0'

step "Switch environments: suspend the whole cluster to disk, then resume it"
run "$C" cluster suspend hpc
run "$C" host list
run "$C" cluster resume hpc
run "$C" cluster scale hpc --size 4

step "Live migration: web1 moves to another host while it runs (the scheduler picks the host)"
run "$C" vm migrate web1
run "$C" vm migrations web1

step "Balancing and consolidation (DRS): the plan now, then on, a round every 10 s"
run "$C" drs plan
run "$C" drs set --mode auto --interval 10s

cat <<EOT

The lab is still up. Go on by hand:
  export CORRAL_URL=$CORRAL_URL CORRAL_TOKEN=$CORRAL_TOKEN
  $C vm console web1
  $C vm exec web1 -- cat /proc/uptime
  $C vm stop web1; $C vm start web1
  $C cluster scale hpc --size 8
  $C drs history; $C host list      # what DRS moved, which hosts sleep
  $C events
Take it all down with:
  $C lab down
EOT
