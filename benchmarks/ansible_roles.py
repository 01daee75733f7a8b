"""Apply Ansible roles with kiln and with ansible-playbook on two containers from the same base; time both.

    .venv/bin/python benchmarks/ansible_roles.py PATH [PATH ...] [--json]

Each PATH is a role directory in Ansible's layout (tasks/main.yml, ...), used unchanged under its
directory's name. For each role: two fresh containers from localhost/kiln-base/debian:bookworm,
ansible-playbook over SSH on one, kiln (validate + compile + the agent's apply) on the other, one
after the other so neither's time is shared; then the probe of tests/ansible_diff.py reads both and
the table says whether the end states are equal and how they differ.

Public roles are for measuring only: extract them outside the repository, e.g.
``git -C /work/.mirror/geerlingguy+ansible-role-ntp/repo archive HEAD | tar -x -C /tmp/ntp``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiln.controller.engine import Engine  # noqa: E402
from tests.ansible_diff import Comparison, compare_role, workdir  # noqa: E402
from tests.machines import ensure_base_image  # noqa: E402


def role_dir(path: str, name: str | None) -> Path:
    """The role as a directory named as the role (a checkout's folder is often named after the repository)."""
    source = Path(path).resolve()
    if not (source / "tasks" / "main.yml").exists():
        raise SystemExit(f"{path}: not a role in Ansible's layout (no tasks/main.yml)")
    if not name or name == source.name:
        return source
    staged = Path(workdir("kiln-role-")) / name
    shutil.copytree(source, staged, symlinks=True)
    return staged


def summary(result: Comparison) -> dict:
    kinds = {kind: len(found) for kind, found in result.state.items() if found}
    first = next((line for found in result.state.values() for line in found), "")
    why = ""
    if not result.kiln.ok:
        why = "kiln: " + _first_error(result.kiln.output)
    elif not result.ansible.ok:
        why = "ansible: " + result.ansible.output.strip().splitlines()[-1][:160]
    return {
        "role": result.role,
        "kiln_s": round(result.kiln.seconds, 1),
        "ansible_s": round(result.ansible.seconds, 1),
        "kiln_ok": result.kiln.ok,
        "ansible_ok": result.ansible.ok,
        "equal": result.equal,
        "differences": kinds,
        "first_difference": first.splitlines()[0][:200] if first else "",
        "why": why,
    }


def _first_error(output: str) -> str:
    lines = output.strip().splitlines()
    for line in reversed(lines):
        if line.startswith("{") and '"summary"' in line:
            event = json.loads(line)
            return f"failed at {event.get('failed_step')!r}: {str(event.get('error'))[:160]}"
    errors = [line for line in lines if ": error: " in line]
    count = next((line for line in reversed(lines) if "error(s)" in line), "")
    if errors:
        return f"{count or 'refused'}; first: {errors[0][-160:]}"
    return (lines[-1] if lines else "failed")[:200]


def table(rows: list[dict]) -> str:
    head = f"{'role':<16} {'kiln s':>7} {'ansible s':>9}  {'equal':<5}  differences"
    out = [head, "-" * len(head)]
    for row in rows:
        diffs = ", ".join(f"{k} {n}" for k, n in row["differences"].items()) or "-"
        out.append(
            f"{row['role']:<16} {row['kiln_s']:>7} {row['ansible_s']:>9}  {'yes' if row['equal'] else 'no':<5}  {diffs}"
        )
        if row["why"]:
            out.append(f"{'':<16} {row['why']}")
        elif row["first_difference"]:
            out.append(f"{'':<16} e.g. {row['first_difference']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="role directories (NAME=PATH to name a role)")
    parser.add_argument("--json", action="store_true", help="one JSON object per role instead of the table")
    parser.add_argument("--details", action="store_true", help="every difference, after the table")
    args = parser.parse_args(argv)
    engine = Engine()
    ensure_base_image(engine)
    rows, reports = [], []
    for spec in args.paths:
        name, _, path = spec.rpartition("=")
        role = role_dir(path, name or None)
        work = workdir()
        try:
            result = compare_role(engine, role, work, parallel=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(summary(result))
        reports.append(result.report())
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(table(rows))
    if args.details:
        print("\n\n".join(reports))
    return 0 if all(row["equal"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
