#!/usr/bin/env bash
# Idempotent setup for a Debian 12 machine (root): engine, tools, virtualenv, kiln.
#   bash scripts/setup.sh          # what `invoke bake` needs
#   bash scripts/setup.sh --test   # plus the test extras
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# podman with its recommends (netavark, aardvark-dns, uidmap...), as verified on these machines
for pkg in podman runc debootstrap netavark iptables uidmap slirp4netns python3-venv git ca-certificates; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
stamp=".venv/.kiln-installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extras}"
  touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/python --version), $(podman --version))"
