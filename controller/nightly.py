"""Nightly rebuilds: bake only the roles whose inputs changed, in parallel, and report.

A role's inputs (its content and its dependencies', variables, the agent, the base
image resolved *now*) are folded into the ``inputs-hash`` every image carries; a role
whose newest good image has the same hash is skipped without launching anything.

Several identical runners share one night's work in either of two ways:

* ``shard=K/N``: each runner takes a deterministic share, computed the same way by every
  runner from the same roles: the dependency chains (connected components of the depends
  graph) are dealt, largest first, to the least loaded share. A chain never spans shares.
* no shard: every runner walks every role and takes whichever is free through the per-role
  lock. A role found locked by another runner is not baked here; if roles of this runner
  depend on it, it is tried again every ``POLL_SECONDS`` (without holding a bake slot, at
  most the lock's ttl) until the holder lets go, so its dependents never bake before it.
  Once free, an unchanged role is skipped (the holder baked it); one still changed was
  failed or interrupted by its holder and is not baked a second time here (its dependents
  are left to that runner, which reports them).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from kiln.controller.bake import bake, make_provider
from kiln.controller.config import Config, load_config
from kiln.controller.context import BakeOptions
from kiln.controller.model import CompiledRole, Diagnostic, InvalidInput
from kiln.controller.providers.base import Provider
from kiln.controller.stages.resolve_base import inputs_hash
from kiln.controller.stepfiles.compile import compile_role, list_roles

log = structlog.get_logger("kiln.nightly")

BAKED, UNCHANGED, FAILED, LOCKED = "baked", "skipped-unchanged", "failed", "locked"
RESULTS = (BAKED, UNCHANGED, FAILED, LOCKED)
#: Seconds between two tries of a role another runner holds while roles here wait on it.
POLL_SECONDS = 2.0
#: The longest a runner polls a held dependency: a holder cannot keep a lock past its ttl.
LOCK_TTL = 4 * 3600.0
HELD = "another scheduler is baking this role"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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


@dataclass(frozen=True)
class Shard:
    index: int  # K, from 1
    count: int  # N

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard | None:
    """``K/N`` (``--shard``) with 1 <= K <= N; empty means no shard."""
    if not text:
        return None
    index, sep, count = text.partition("/")
    if sep and index.strip().isdigit() and count.strip().isdigit() and 1 <= int(index) <= int(count):
        return Shard(int(index), int(count))
    raise InvalidInput([Diagnostic("--shard", 1, 1, f"expected K/N with 1 <= K <= N, got '{text}'")])


def check_run_id(run_id: str, flag: str = "--run-id") -> str:
    if not RUN_ID.match(run_id):
        message = f"expected letters, digits, '.', '_' or '-' (at most 100), got '{run_id}'"
        raise InvalidInput([Diagnostic(flag, 1, 1, message)])
    return run_id


def dependency_chains(compiled: dict[str, CompiledRole]) -> list[list[str]]:
    """The selected roles grouped by connected component of the depends graph (two roles sharing
    a dependency, selected or not, are in one chain), largest first, then by name."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for role, c in compiled.items():
        for dependency in c.chain:
            parent[root(dependency)] = root(role)
    groups: dict[str, list[str]] = {}
    for role in compiled:
        groups.setdefault(root(role), []).append(role)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def shard_roles(compiled: dict[str, CompiledRole], shard: Shard) -> set[str]:
    """This shard's roles: chains dealt largest first to the share with the fewest roles so far
    (ties to the lowest K). Balanced where a hash of names is not (12 roles over 3 could be 7/3/2),
    and the same on every runner that reads the same roles; a runner on another commit could
    differ, which the per-role lock still makes safe."""
    loads = [0] * shard.count
    mine: set[str] = set()
    for chain in dependency_chains(compiled):
        share = min(range(shard.count), key=lambda k: (loads[k], k))
        loads[share] += len(chain)
        if share == shard.index - 1:
            mine.update(chain)
    return mine


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
        shard: Shard | None = None,
        lock_wait: float = LOCK_TTL,
    ) -> None:
        self.provider = provider
        self.config = config
        self.options = options
        self.roles = roles
        self.force = force
        self.concurrency = max(1, concurrency)
        self.on_locked = on_locked
        self.provider_name = provider_name
        self.shard = shard
        self.lock_wait = lock_wait
        self.owner = f"nightly-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{id(self):x}"
        self.held_since: dict[str, float] = {}  # roles found held by another runner -> when first

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

    def share(self, compiled: dict[str, CompiledRole]) -> list[str]:
        """The roles this runner walks: all of them, or its shard's (every role compiled first, so
        that invalid input anywhere stops every runner alike, and chains are seen whole)."""
        if self.shard is None:
            return list(self.roles)
        mine = shard_roles(compiled, self.shard)
        log.info("shard", shard=str(self.shard), roles=len(mine), of=len(compiled))
        return [r for r in self.roles if r in mine]

    def run(self) -> list[RoleReport]:
        compiled = self.compile_all()
        roles = self.share(compiled)
        deps = dependency_order({r: compiled[r] for r in roles})
        reports: dict[str, RoleReport] = {}
        running: dict[Future, str] = {}
        pending = list(roles)
        retry_at: dict[str, float] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="bake") as pool:
            while pending or running:
                ready = self.ready(pending, deps, reports, retry_at, len(running))
                for role in ready:
                    pending.remove(role)
                    retry_at.pop(role, None)
                    if not self.settled_by_dependencies(role, deps[role], reports):
                        running[pool.submit(self.one_role, role, compiled[role])] = role
                if not running:
                    if pending and not ready:  # every pending role waits to try a held dependency again
                        time.sleep(self.until_next_try(retry_at) or POLL_SECONDS)
                    continue
                done, _ = wait(running, timeout=self.until_next_try(retry_at), return_when=FIRST_COMPLETED)
                for future in done:
                    role = running.pop(future)
                    report = self.outcome(role, future)
                    if self.poll_later(report, deps, pending):
                        retry_at[role] = time.monotonic() + POLL_SECONDS
                        pending.insert(0, role)  # dependencies first, as before
                        continue
                    reports[role] = report
                    log_role(report)
        return [reports[r] for r in roles]

    def ready(
        self, pending: list[str], deps: dict[str, set[str]], reports: dict, retry_at: dict[str, float], busy: int
    ) -> list[str]:
        """Pending roles that may start now: their dependencies settled here, not waiting to be
        tried again, within the free bake slots."""
        now, chosen = time.monotonic(), []
        for role in pending:
            if busy + len(chosen) >= self.concurrency:
                break
            if deps[role] <= reports.keys() and retry_at.get(role, 0.0) <= now:
                chosen.append(role)
        return chosen

    @staticmethod
    def until_next_try(retry_at: dict[str, float]) -> float | None:
        """Seconds until a held role is due again (None: none is waiting)."""
        if not retry_at:
            return None
        return min(POLL_SECONDS, max(0.05, min(retry_at.values()) - time.monotonic()))

    def settled_by_dependencies(self, role: str, deps: set[str], reports: dict[str, RoleReport]) -> bool:
        """A dependency that failed fails the role; one another runner handled leaves the role to
        that runner (which walks it after its dependency). Either way nothing is launched here."""
        broken = sorted(d for d in deps if reports[d].result == FAILED)
        elsewhere = sorted(d for d in deps if reports[d].result == LOCKED)
        if broken:
            reports[role] = RoleReport(role, FAILED, error=f"dependency failed: {', '.join(broken)}")
        elif elsewhere:
            reason = f"left to the runner that holds its dependency {', '.join(elsewhere)}"
            reports[role] = RoleReport(role, LOCKED, reason=reason)
        else:
            return False
        log_role(reports[role])
        return True

    def outcome(self, role: str, future: Future) -> RoleReport:
        try:
            return future.result()
        except Exception as exc:  # a broken role must not stop the others
            return RoleReport(role, FAILED, error=f"{type(exc).__name__}: {exc}")

    def poll_later(self, report: RoleReport, deps: dict[str, set[str]], pending: list[str]) -> bool:
        """Try a held role again later when roles here wait on it (never past the lock's ttl)."""
        if report.result != LOCKED or report.reason != HELD:
            return False
        waited = time.monotonic() - self.held_since[report.role]
        return any(report.role in deps[r] for r in pending) and waited < self.lock_wait

    def one_role(self, role: str, compiled: CompiledRole) -> RoleReport:
        started = time.monotonic()
        report = RoleReport(role)
        lock = self.provider.acquire_lock(role, self.owner, wait=False)
        if not lock:
            self.held_since.setdefault(role, started)
            if self.on_locked != "wait":
                report.result, report.reason = LOCKED, HELD
                return report
            lock = self.provider.acquire_lock(role, self.owner, wait=True)
        took_over = getattr(lock, "took_over", "")  # a provider may still answer a plain bool
        if took_over:
            log.warning("took over a stale lock", role=role, holder=took_over)
        try:
            self.decide_and_bake(role, compiled, report, held_elsewhere=role in self.held_since and not took_over)
            if took_over:
                report.reason = f"{report.reason}; took over the lock of {took_over}"
            if role in self.held_since:
                report.reason = (
                    f"{report.reason}; waited {time.monotonic() - self.held_since[role]:.0f} s for its holder"
                )
        finally:
            self.provider.release_lock(role, self.owner)
            report.duration = round(time.monotonic() - self.held_since.get(role, started), 2)
        return report

    def decide_and_bake(
        self, role: str, compiled: CompiledRole, report: RoleReport, held_elsewhere: bool = False
    ) -> None:
        images = self.provider.images(role)
        current = next((i for i in images if i.latest), images[0] if images else None)
        report.old_version = current.version if current else ""
        base = self.provider.resolve_base(compiled.base.get(self.provider.name))
        wanted = inputs_hash(compiled.content_hash, base.id)
        if current and current.inputs_hash == wanted and not self.force:
            report.result, report.reason = UNCHANGED, f"inputs {wanted[:12]} unchanged"
            return
        if self.force and current and self.options.nightly_run and current.nightly_run == self.options.nightly_run:
            report.result = UNCHANGED
            report.reason = (
                f"forced, but {current.version} was baked in this run ({current.nightly_run}) already: "
                "not baked twice (another --run-id forces it again)"
            )
            return
        if held_elsewhere:  # its holder let go of it still changed (its bake failed or stopped) or forced it
            report.result = LOCKED
            report.reason = "another runner held it and let go of it (failed, stopped or forced there): not baked twice"
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


def log_role(r: RoleReport) -> None:
    level = log.error if r.result == FAILED else log.info
    level(
        "role",
        role=r.role,
        result=r.result,
        old=r.old_version or "-",
        new=r.new_version or "-",
        seconds=r.duration,
        reason=r.reason or None,
        error=r.error or None,
    )


@dataclass(frozen=True)
class RunnerInfo:
    """Who wrote a report, for ``nightly-report`` to merge the runners of one run."""

    run_id: str
    runner: str
    shard: str = ""


def default_runner(started: dt.datetime, run_id: str = "", runner: str = "", shard: Shard | None = None) -> RunnerInfo:
    """The run id defaults to the UTC date the runner started (runners of one night share it; a
    scheduler that starts runners near midnight should pass its own, e.g. the CI run's id); the
    runner's name to host and pid (unique; a stable name lets a re-run replace its report)."""
    return RunnerInfo(
        run_id=check_run_id(run_id) if run_id else f"{started:%Y%m%d}",
        runner=check_run_id(runner, "--runner") if runner else f"{socket.gethostname()}-{os.getpid()}",
        shard=str(shard or ""),
    )


def write_report(
    builds: Path, reports: list[RoleReport], provider: str, started: dt.datetime, runner: RunnerInfo | None = None
) -> tuple[Path, Path]:
    runner = runner or default_runner(started)
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
        **asdict(runner),
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


def check_on_locked(on_locked: str) -> str:
    if on_locked not in ("skip", "wait"):
        raise InvalidInput([Diagnostic("--on-locked", 1, 1, f"expected skip or wait, got '{on_locked}'")])
    return on_locked


def nightly(
    roles: list[str] | None,
    provider_name: str = "local",
    force: bool = False,
    concurrency: int = 2,
    on_locked: str = "skip",
    sandbox: bool = False,
    options: BakeOptions | None = None,
    shard: str = "",
    run_id: str = "",
    runner: str = "",
) -> int:
    options = options or BakeOptions()
    started = dt.datetime.now(dt.UTC)
    try:
        share = parse_shard(shard)
        who = default_runner(started, run_id, runner, share)
        options = replace(options, nightly_run=who.run_id)
        check_on_locked(on_locked)
        config = load_config(options.playbooks_dir / "kiln.yaml")
        selected = roles or list_roles(options.playbooks_dir)
        provider = make_provider(provider_name, config, options.builds_dir, sandbox)
        run = Nightly(provider, config, options, selected, force, concurrency, on_locked, provider_name, shard=share)
        reports = run.run()
    except InvalidInput as exc:
        print(exc.render())
        return 2
    json_path, md_path = write_report(options.builds_dir, reports, provider_name, started, who)
    log.info(
        "nightly report",
        json=str(json_path),
        markdown=str(md_path),
        **{k: sum(1 for r in reports if r.result == k) for k in (BAKED, UNCHANGED, FAILED, LOCKED)},
    )
    return 1 if any(r.result == FAILED for r in reports) else 0
