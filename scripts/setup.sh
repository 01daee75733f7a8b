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
if [ "${1:-}" = "--test" ] && [ ! -d .venv/ansible-collections/ansible_collections/ansible/posix ]; then
  # the collections the differential tests give ansible-playbook (pamd, openssh_keypair, authorized_key...):
  # taken from the `ansible` package on the package registry, only the two that are needed
  tmp="$(mktemp -d)"
  .venv/bin/python -m pip download -q --no-deps -d "$tmp" "ansible==12.3.0" 2>/dev/null
  .venv/bin/python - "$tmp"/ansible-*.whl .venv/ansible-collections <<'PY'
import sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
wanted = tuple(f"ansible_collections/{name}/" for name in ("community/general", "community/crypto", "ansible/posix"))
with zipfile.ZipFile(wheel) as archive:
    archive.extractall(target, [n for n in archive.namelist() if n.startswith(wanted)])
PY
  rm -rf "$tmp"
fi
echo "setup: ready ($(.venv/bin/python --version), $(podman --version))"
