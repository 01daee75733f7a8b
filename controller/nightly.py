"""Nightly rebuilds: bake only the roles whose inputs changed, in parallel, and report.

A role's inputs (its content and its dependencies', variables, the agent, the base
image resolved *now*) are folded into the ``inputs-hash`` every image carries; a role
whose newest good image has the same hash is skipped without launching anything.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from controller.bake import bake, make_provider
from controller.config import Config, load_config
from controller.context import BakeOptions
from controller.model import CompiledRole, InvalidInput
from controller.providers.base import Provider
from controller.stages.resolve_base import inputs_hash
from controller.stepfiles.compile import compile_role

log = structlog.get_logger("kiln.nightly")

BAKED, UNCHANGED, FAILED, LOCKED = "baked", "skipped-unchanged", "failed", "locked"


@dataclass
class RoleReport:
    role: str
    result: str = ""
    old_version: str = ""
    new_version: str = ""
    reason: str = ""
    duration: float = 0.0
    steps_changed: int = 0
    error: str = ""
    failed_step: str = ""
    packages: dict[str, Any] = field(default_factory=dict)  # added / removed / upgraded


def discover_roles(playbooks: Path) -> list[str]:
    return sorted(p.name for p in (playbooks / "roles").iterdir() if (p / "role.yml").exists())


def package_changes(before: dict[str, str], after: dict[str, str]) -> dict[str, Any]:
    """What changed between two package inventories (name -> version)."""
    return {
        "added": {n: after[n] for n in sorted(after.keys() - before.keys())},
        "removed": {n: before[n] for n in sorted(before.keys() - after.keys())},
        "upgraded": {
            n: f"{before[n]} -> {after[n]}" for n in sorted(before.keys() & after.keys()) if before[n] != after[n]
        },
    }


def inventory(builds: Path, role: str, version: str) -> dict[str, str] | None:
    path = builds / "packages" / role / f"{version}.json"
    return json.loads(path.read_text()) if path.exists() else None


def dependency_order(compiled: dict[str, CompiledRole]) -> dict[str, set[str]]:
    """Each selected role -> the selected roles it depends on (baked first)."""
    return {role: {d for d in c.chain if d != role and d in compiled} for role, c in compiled.items()}


class Nightly:
    def __init__(
        self,
        provider: Provider,
        config: Config,
        options: BakeOptions,
        roles: list[str],
        force: bool = False,
        concurrency: int = 2,
        on_locked: str = "skip",
        provider_name: str = "local",
        sandbox: bool = False,
    ) -> None:
        self.provider = provider
        self.config = config
        self.options = options
        self.roles = roles
        self.force = force
        self.concurrency = max(1, concurrency)
        self.on_locked = on_locked
        self.provider_name = provider_name
        self.sandbox = sandbox
        self.owner = f"nightly-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{id(self):x}"

    def compile_all(self) -> dict[str, CompiledRole]:
        compiled, problems = {}, []
        for role in self.roles:
            try:
                compiled[role] = compile_role(self.options.playbooks_dir, role, self.provider.name, self.config)
            except InvalidInput as exc:
                problems.extend(exc.diagnostics)
        if problems:
            raise InvalidInput(problems)
        return compiled

    def run(self) -> list[RoleReport]:
        compiled = self.compile_all()
        deps = dependency_order(compiled)
        reports: dict[str, RoleReport] = {}
        running: dict[Future, str] = {}
        pending = list(self.roles)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="bake") as pool:
            while pending or running:
                for role in list(pending):
                    if len(running) >= self.concurrency:
                        break
                    if not deps[role] <= reports.keys():
                        continue
                    pending.remove(role)
                    broken = [d for d in deps[role] if reports[d].result == FAILED]
                    if broken:
                        reports[role] = RoleReport(role, FAILED, error=f"dependency failed: {', '.join(broken)}")
                        log.error("role", role=role, result=FAILED, error=reports[role].error)
                        continue
                    running[pool.submit(self.one_role, role, compiled[role])] = role
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    role = running.pop(future)
                    try:
                        reports[role] = future.result()
                    except Exception as exc:  # a broken role must not stop the others
                        reports[role] = RoleReport(role, FAILED, error=f"{type(exc).__name__}: {exc}")
                    r = reports[role]
                    log.info(
                        "role",
                        role=role,
                        result=r.result,
                        old=r.old_version or "-",
                        new=r.new_version or "-",
                        seconds=r.duration,
                        error=r.error or None,
                    )
        return [reports[r] for r in self.roles]

    def one_role(self, role: str, compiled: CompiledRole) -> RoleReport:
        started = time.monotonic()
        report = RoleReport(role)
        wait_for_lock = self.on_locked == "wait"
        lock = self.provider.acquire_lock(role, self.owner, wait=wait_for_lock)
        if not lock:
            report.result, report.reason = LOCKED, "another scheduler is baking this role"
            return report
        took_over = getattr(lock, "took_over", "")  # a provider may still answer a plain bool
        if took_over:
            log.warning("took over a stale lock", role=role, holder=took_over)
        try:
            self.decide_and_bake(role, compiled, report)
            if took_over:
                report.reason = f"{report.reason}; took over the lock of {took_over}"
        finally:
            self.provider.release_lock(role, self.owner)
            report.duration = round(time.monotonic() - started, 2)
        return report

    def decide_and_bake(self, role: str, compiled: CompiledRole, report: RoleReport) -> None:
        images = self.provider.images(role)
        current = next((i for i in images if i.latest), images[0] if images else None)
        report.old_version = current.version if current else ""
        base = self.provider.resolve_base(compiled.base.get(self.provider.name))
        wanted = inputs_hash(compiled.content_hash, base.id)
        if current and current.inputs_hash == wanted and not self.force:
            report.result, report.reason = UNCHANGED, f"inputs {wanted[:12]} unchanged"
            return
        report.reason = (
            "forced"
            if self.force and current
            else ("no image yet" if not current else f"inputs changed ({current.inputs_hash[:12]} -> {wanted[:12]})")
        )
        log.info("baking", role=role, reason=report.reason)
        result = bake(role, self.provider_name, self.options, provider=self.provider)
        ctx = result.ctx
        if result.exit_code:
            report.result, report.error = FAILED, result.error
            failed = next((e for e in (ctx.step_events if ctx else []) if e.get("status") == "failed"), None)
            report.failed_step = failed.get("name", "") if failed else ""
            return
        report.result, report.new_version = BAKED, ctx.version
        report.steps_changed = ctx.apply_counts.changed
        before = inventory(self.options.builds_dir, role, report.old_version) if report.old_version else None
        report.packages = (
            package_changes(before or {}, ctx.packages)
            if before is not None
            else {"added": {}, "removed": {}, "upgraded": {}, "note": "no previous inventory"}
        )


def write_report(builds: Path, reports: list[RoleReport], provider: str, started: dt.datetime) -> tuple[Path, Path]:
    builds.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):  # two schedulers started the same second each keep their report
        name = f"nightly-{stamp}" if n == 1 else f"nightly-{stamp}-{n}"
        try:
            os.close(os.open(builds / f"{name}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            continue
    json_path, md_path = builds / f"{name}.json", builds / f"{name}.md"
    data = {
        "started": started.isoformat(),
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "provider": provider,
        "roles": [asdict(r) for r in reports],
    }
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(render_markdown(reports, provider, started))
    return json_path, md_path


def render_markdown(reports: list[RoleReport], provider: str, started: dt.datetime) -> str:
    counts = {k: sum(1 for r in reports if r.result == k) for k in (BAKED, UNCHANGED, FAILED, LOCKED)}
    lines = [
        f"# kiln nightly {started:%Y-%m-%d %H:%M} UTC ({provider})",
        "",
        ", ".join(f"{v} {k}" for k, v in counts.items()),
        "",
        "| role | result | version | duration | steps changed | packages |",
        "|---|---|---|---|---|---|",
    ]
    for r in reports:
        version = f"{r.old_version or '-'} → {r.new_version}" if r.new_version else (r.old_version or "-")
        pk = r.packages
        packages = (
            f"+{len(pk.get('added', {}))} −{len(pk.get('removed', {}))} ↑{len(pk.get('upgraded', {}))}" if pk else ""
        )
        lines.append(f"| {r.role} | {r.result} | {version} | {r.duration:.1f} s | {r.steps_changed} | {packages} |")
    for r in reports:
        if r.result == FAILED:
            lines += ["", f"## {r.role}: failed", ""]
            if r.failed_step:
                lines.append(f"Failing step: **{r.failed_step}**")
                lines.append("")
            lines += ["```", r.error.strip(), "```"]
        if r.packages and any(r.packages.get(k) for k in ("added", "removed", "upgraded")):
            lines += ["", f"## {r.role}: package changes ({r.old_version} → {r.new_version})", ""]
            for kind in ("upgraded", "added", "removed"):
                for name, value in r.packages.get(kind, {}).items():
                    lines.append(f"- {kind}: `{name}` {value}")
    return "\n".join(lines) + "\n"


def nightly(
    roles: list[str] | None,
    provider_name: str = "local",
    force: bool = False,
    concurrency: int = 2,
    on_locked: str = "skip",
    sandbox: bool = False,
    options: BakeOptions | None = None,
) -> int:
    options = options or BakeOptions()
    started = dt.datetime.now(dt.UTC)
    try:
        config = load_config(options.playbooks_dir / "kiln.yaml")
        selected = roles or discover_roles(options.playbooks_dir)
        provider = make_provider(provider_name, config, options.builds_dir, sandbox)
        run = Nightly(provider, config, options, selected, force, concurrency, on_locked, provider_name, sandbox)
        reports = run.run()
    except InvalidInput as exc:
        print(exc.render())
        return 2
    json_path, md_path = write_report(options.builds_dir, reports, provider_name, started)
    log.info(
        "nightly report",
        json=str(json_path),
        markdown=str(md_path),
        **{k: sum(1 for r in reports if r.result == k) for k in (BAKED, UNCHANGED, FAILED, LOCKED)},
    )
    return 1 if any(r.result == FAILED for r in reports) else 0
