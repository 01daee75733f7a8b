"""One report for a nightly that several runners shared (``invoke nightly-report``).

Each runner writes its own ``builds/nightly-<time>.json`` naming its run id and itself. The
merge takes the newest report of each runner of one run and lists every role once: the
runner that baked it (else the one that saw it fail, else one that found it unchanged, else
one that found it held), with totals per result and per runner, and any role baked by more
than one runner (which the per-role lock should make impossible).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.controller.model import Diagnostic, InvalidInput
from kiln.controller.nightly import BAKED, FAILED, LOCKED, RESULTS, UNCHANGED, check_run_id

#: Which runner's line a role gets when runners saw it differently (lowest first).
PRECEDENCE = {BAKED: 0, FAILED: 1, UNCHANGED: 2, LOCKED: 3}
MERGED_PREFIX = "nightly-run-"


@dataclass
class MergedRun:
    run_id: str
    provider: str
    runners: dict[str, dict[str, Any]]  # runner -> started, finished, seconds, shard, counts, report file
    roles: list[dict[str, Any]]  # a role's chosen line, plus "runner"
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # role -> "runner version" of each bake

    @property
    def totals(self) -> dict[str, int]:
        return {k: sum(1 for r in self.roles if r["result"] == k) for k in RESULTS}

    @property
    def wall_seconds(self) -> float:
        starts = [_when(r["started"]) for r in self.runners.values()]
        ends = [_when(r["finished"]) for r in self.runners.values()]
        return round((max(ends) - min(starts)).total_seconds(), 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "merged": True,
            "run_id": self.run_id,
            "provider": self.provider,
            "wall_seconds": self.wall_seconds,
            "totals": self.totals,
            "runners": self.runners,
            "duplicates": self.duplicates,
            "roles": self.roles,
        }


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput([Diagnostic(str(path), 1, 1, f"not a readable nightly report: {exc}")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("roles"), list) or "started" not in data:
        raise InvalidInput([Diagnostic(str(path), 1, 1, "not a nightly report (no 'started' and 'roles')")])
    data.setdefault("run_id", f"{_when(data['started']):%Y%m%d}")  # a report of a runner before run ids
    data.setdefault("runner", path.stem)
    data["file"] = str(path)
    return data


def find_reports(directory: Path, run_id: str = "") -> list[dict[str, Any]]:
    """The runners' reports under ``directory`` (any depth: CI downloads each runner's artifact into
    a folder of its own) of ``run_id``, else of the run of the newest report."""
    found = [load_report(p) for p in sorted(directory.rglob("nightly-*.json")) if not p.name.startswith(MERGED_PREFIX)]
    if not found:
        raise InvalidInput([Diagnostic(str(directory), 1, 1, "no nightly reports (nightly-*.json) here")])
    wanted = run_id or max(found, key=lambda r: _when(r["started"]))["run_id"]
    ours = [r for r in found if r["run_id"] == wanted]
    if not ours:
        runs = ", ".join(sorted({r["run_id"] for r in found}))
        raise InvalidInput([Diagnostic(str(directory), 1, 1, f"no report of run '{wanted}' (runs here: {runs})")])
    return ours


def merge(reports: list[dict[str, Any]]) -> MergedRun:
    """The newest report of each runner, every role once."""
    runs = sorted({r["run_id"] for r in reports})
    if len(runs) > 1:
        raise InvalidInput([Diagnostic(reports[0]["file"], 1, 1, f"reports of several runs: {', '.join(runs)}")])
    newest: dict[str, dict[str, Any]] = {}
    for report in sorted(reports, key=lambda r: _when(r["started"])):
        newest[report["runner"]] = report
    chosen: dict[str, dict[str, Any]] = {}
    bakes: dict[str, list[str]] = {}
    for runner, report in sorted(newest.items()):
        for line in report["roles"]:
            entry = {**line, "runner": runner}
            if line["result"] == BAKED:
                bakes.setdefault(line["role"], []).append(f"{runner} {line['new_version']}")
            held = chosen.get(line["role"])
            if held is None or PRECEDENCE.get(line["result"], 9) < PRECEDENCE.get(held["result"], 9):
                chosen[line["role"]] = entry
    return MergedRun(
        run_id=runs[0],
        provider=", ".join(sorted({r.get("provider", "") for r in newest.values()})),
        runners={name: _runner_summary(r) for name, r in sorted(newest.items())},
        roles=[chosen[role] for role in sorted(chosen)],
        duplicates={role: runs for role, runs in sorted(bakes.items()) if len(runs) > 1},
    )


def _runner_summary(report: dict[str, Any]) -> dict[str, Any]:
    seconds = (_when(report["finished"]) - _when(report["started"])).total_seconds()
    return {
        "shard": report.get("shard", ""),
        "started": report["started"],
        "finished": report["finished"],
        "seconds": round(seconds, 1),
        "file": report["file"],
        **{k: sum(1 for r in report["roles"] if r["result"] == k) for k in RESULTS},
    }


def write_merged(builds: Path, run: MergedRun) -> tuple[Path, Path]:
    builds.mkdir(parents=True, exist_ok=True)
    json_path = builds / f"{MERGED_PREFIX}{check_run_id(run.run_id)}.json"
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps(run.as_dict(), indent=2) + "\n")
    md_path.write_text(render_merged(run))
    return json_path, md_path


def render_merged(run: MergedRun) -> str:
    lines = [
        f"# kiln nightly run {run.run_id} ({run.provider}): {len(run.runners)} runners, {run.wall_seconds:.0f} s",
        "",
        ", ".join(f"{v} {k}" for k, v in run.totals.items()),
        "",
        "| runner | shard | baked | unchanged | failed | locked | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in run.runners.items():
        lines.append(
            f"| {name} | {r['shard'] or '-'} | {r[BAKED]} | {r[UNCHANGED]} | {r[FAILED]} | {r[LOCKED]} "
            f"| {r['seconds']:.1f} s |"
        )
    lines += ["", "| role | result | runner | version | duration |", "|---|---|---|---|---|"]
    for r in run.roles:
        version = f"{r['old_version'] or '-'} → {r['new_version']}" if r["new_version"] else (r["old_version"] or "-")
        lines.append(f"| {r['role']} | {r['result']} | {r['runner']} | {version} | {r['duration']:.1f} s |")
    for role, bakes in run.duplicates.items():
        lines += ["", f"## {role}: baked by more than one runner", ""] + [f"- {b}" for b in bakes]
    for r in run.roles:
        if r["result"] == FAILED:
            lines += ["", f"## {r['role']}: failed on {r['runner']}", ""]
            if r.get("failed_step"):
                lines += [f"Failing step: **{r['failed_step']}**", ""]
            lines += ["```", str(r.get("error", "")).strip(), "```"]
    return "\n".join(lines) + "\n"


def nightly_report(files: list[str], directory: Path, run_id: str = "") -> tuple[int, MergedRun | None]:
    """Merge and write; exit status 1 when a role failed or was baked twice, 2 on invalid input."""
    try:
        if run_id:
            check_run_id(run_id)
        reports = [load_report(Path(f)) for f in files] if files else find_reports(directory, run_id)
        reports = [r for r in reports if r["run_id"] == run_id] if run_id else reports
        if not reports:
            raise InvalidInput([Diagnostic(files[0], 1, 1, f"none of the reports given is of run '{run_id}'")])
        run = merge(reports)
    except InvalidInput as exc:
        print(exc.render())
        return 2, None
    write_merged(directory, run)
    return (1 if run.totals[FAILED] or run.duplicates else 0), run
