#!/usr/bin/env bash
# Installs schemathesis (PyPI), which the API conformance tests run against the controller's
# and the agent's OpenAPI documents, into a virtualenv under ${CORRAL_CACHE:-<repo>/.cache}/.
# Idempotent: nothing happens when the pinned version is installed already; a half-made
# virtualenv (no `.complete` mark) is made again.
set -euo pipefail

VERSION=4.32.5
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CORRAL_CACHE:-$REPO/.cache}
VENV="$CACHE/schemathesis-$VERSION"

[ -f "$VENV/.complete" ] && exit 0
rm -rf "$VENV"
mkdir -p "$CACHE"
if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
  rm -rf "$VENV"
  [ "$(id -u)" -eq 0 ] || { echo "setup: python3 -m venv fails; install python3-venv" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq python3-venv >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null; }
  python3 -m venv "$VENV"
fi
echo "setup: installing schemathesis $VERSION into $VENV" >&2
if ! "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION" >/tmp/corral-schemathesis.log 2>&1; then
  echo "setup: pip install schemathesis failed; see /tmp/corral-schemathesis.log" >&2
  tail -5 /tmp/corral-schemathesis.log >&2
  exit 1
fi
"$VENV/bin/schemathesis" --version >/dev/null
touch "$VENV/.complete"
