"""Benchmark: a local bake of `web`, kiln's own time, and a generated role's apply.

    .venv/bin/python benchmarks/bake_local.py [--reps 3] [--repo OLD_CHECKOUT ...] [--without-this] [--steps 100]
        [--skip-web]

The web bake is the real command line (``invoke bake --role web --json``) in a work directory
holding kiln's own ``base`` and ``web`` roles; with ``--repo`` another checkout is timed too,
interleaved with this one in each repetition (medians printed). kiln's own time is the wall
time minus what the engine and the network spend, read from the bake's own log:

- engine: the build container's start (``launch instance``), its commit (``snapshot``) and
  removal (``undo launch instance``; a local bake removes it while the test stage runs, so it is
  inside that stage's time); the machines' boot until sshd answers (``connect``'s wait minus the
  handshake that succeeded); in the test stage, the test container's start, boot and removal
  (everything but its SSH handshake and its checks);
- package installs: the duration the agent reports for each ``package`` step of the apply
  (the download and ``apt-get`` of nginx; the idempotence re-run's package steps are kiln's).

Everything else, the command line's start and imports included, is kiln's own time.
Then a generated role of N file/line steps is baked up to the idempotence check in-process:
the first apply and the no-op re-run (one exec over SSH since the re-run rides in the apply's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converge import checkout_env  # noqa: E402  (benchmarks/converge.py, beside this file)

from kiln.controller import log as kiln_log  # noqa: E402
from kiln.controller.config import load_config  # noqa: E402
from kiln.controller.context import BakeContext, BakeOptions  # noqa: E402
from kiln.controller.pipeline import run_stages  # noqa: E402
from kiln.controller.providers.local import LocalProvider  # noqa: E402
from kiln.controller.stages.allocate_version import AllocateVersion  # noqa: E402
from kiln.controller.stages.apply_steps import ApplySteps, IdempotenceCheck  # noqa: E402
from kiln.controller.stages.connect import Connect  # noqa: E402
from kiln.controller.stages.launch_instance import LaunchInstance  # noqa: E402
from kiln.controller.stages.push_bundle import PushBundle  # noqa: E402
from kiln.controller.stages.resolve_base import ResolveBase  # noqa: E402
from kiln.controller.stepfiles.compile import compile_role  # noqa: E402

ENGINE_STAGES = ("launch instance", "snapshot", "undo launch instance")
#: this run's own images (another run at the same time keeps its versions and its retire to itself), one prefix per
#: checkout timed (each starts from no version: their bakes retire alike)
IMAGE_PREFIX = f"localhost/kiln-bench-bake-{os.getpid()}"


def at(event: dict) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def account(events: list[dict], wall: float, started: float | None = None) -> dict[str, float]:
    """The bake's wall time split into engine, package installs and kiln's own (see the module's doc);
    with ``started`` (the wall clock when the command was started), kiln's own time by part too."""
    timings = next(e for e in events if e.get("event") == "timings")
    stage_started = {e["stage"]: at(e) for e in events if e.get("event") == "stage"}
    connects = [e for e in events if e.get("event") == "connected"]
    boot_waits = [max(float(e["waited"]) - float(e.get("handshake", 0.0)), 0.0) for e in connects]
    engine = sum(float(timings.get(n.replace(" ", "_"), 0)) for n in ENGINE_STAGES) + boot_waits[0]
    test_seconds = float(timings.get("test_image", 0))
    test_kiln = 0.0
    if test_seconds and len(connects) > 1:
        tested = next(e for e in events if e.get("event") == "image tested")
        test_kiln = (at(tested) - at(connects[1])) + float(connects[1].get("handshake", 0.0))
        engine += test_seconds - test_kiln
    packages = sum(
        float(e.get("seconds") or 0)
        for e in events
        if e.get("event") == "step"
        and e.get("module") == "package"
        and at(e) < stage_started.get("idempotence check", 1e18)
    )
    split = {
        "wall": wall,
        "engine": engine,
        "packages": packages,
        "kiln": wall - engine - packages,
        "test checks (kiln)": test_kiln,
    }
    if started is not None:
        handshake = float(connects[0].get("handshake", 0.0)) if connects else 0.0
        split.update(kiln_parts(events, timings, started, wall, packages, handshake, test_kiln, split["kiln"]))
    return {**split, **{k: float(v) for k, v in timings.items() if isinstance(v, (int, float))}}


START_UP = "kiln: start-up (python, invoke, imports, compile)"
#: the stages whose time is all the engine's (kiln_parts); connect's and the test stage's are split
ENGINE_ONLY = {name.replace(" ", "_") for name in ENGINE_STAGES}


def kiln_parts(
    events: list[dict],
    timings: dict,
    started: float,
    wall: float,
    packages: float,
    handshake: float,
    test_kiln: float,
    kiln: float,
) -> dict[str, float]:
    """kiln's own time by part ("kiln: ..." keys): the command's start before the first stage, each stage's own
    share (connect: the handshake; apply: minus package installs; the test stage: its handshake and checks), the
    command's end after the last event, and what falls between stages."""
    first = min(at(e) for e in events if e.get("event") == "stage")
    last = max(at(e) for e in events)
    parts = {START_UP: first - started}
    for name, seconds in timings.items():
        if not isinstance(seconds, (int, float)) or name in ENGINE_ONLY:
            continue
        own = {"connect": handshake, "apply_steps": float(seconds) - packages, "test_image": test_kiln}
        parts[f"kiln: {name}"] = own.get(name, float(seconds))
    parts["kiln: end (after the last event)"] = started + wall - last
    parts["kiln: between stages"] = kiln - sum(parts.values())
    return parts


def web_workdir(root: Path) -> None:
    playbooks = root / "playbooks"
    (playbooks / "roles").mkdir(parents=True)
    shutil.copy(REPO / "playbooks" / "kiln.yaml", playbooks / "kiln.yaml")
    for role in ("base", "web"):
        shutil.copytree(REPO / "playbooks" / "roles" / role, playbooks / "roles" / role)


def bake_web_cli(repo: Path, root: Path, prefix: str) -> dict[str, float]:
    env = checkout_env(repo, root)  # that checkout's kiln package, not this one's
    env.update(KILN_STATE_DIR=str(root / "state"), KILN_IMAGE_PREFIX=prefix, CI="")
    started, started_wall = time.monotonic(), time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(repo), "bake", "--role", "web", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"web bake failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return account(events, wall, started_wall)


def remove_bench_images() -> None:
    names = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in names:
        if name.startswith(IMAGE_PREFIX + "-"):
            subprocess.run(["podman", "rmi", name], capture_output=True)


def bench_web(repos: dict[str, Path], reps: int) -> None:
    seen: dict[str, list[dict[str, float]]] = {label: [] for label in repos}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-bake-") as tmp:
        try:
            for rep in range(reps):
                for index, (label, repo) in enumerate(repos.items()):
                    root = Path(tmp) / f"{label}-{rep}"
                    web_workdir(root)
                    seen[label].append(bake_web_cli(repo, root, f"{IMAGE_PREFIX}-{index}"))
                    loads.append(os.getloadavg()[0])
                    run = seen[label][-1]
                    largest = sorted((k for k in run if k.startswith("kiln: ")), key=run.get, reverse=True)[:3]
                    print(
                        f"  rep {rep + 1} {label}: kiln {run['kiln']:.3f} s (start-up {run[START_UP]:.3f} s; largest: "
                        + ", ".join(f"{k[6:]} {run[k]:.3f}" for k in largest)
                        + f"), wall {run['wall']:.3f} s (load average {loads[-1]:.1f})",
                        flush=True,
                    )
        finally:
            remove_bench_images()
    print(f"\n== invoke bake --role web (local), medians of {reps} ==")
    print(f"  load average (1 min) after each bake: {min(loads):.1f}-{max(loads):.1f}, {os.cpu_count()} cores")
    keys = list(dict.fromkeys(k for runs in seen.values() for run in runs for k in run))
    print(f"  {'':<52}" + "".join(f"{label:>12}" for label in repos))
    for key in keys:
        cells = []
        for label in repos:
            values = [run[key] for run in seen[label] if key in run]
            cells.append(f"{statistics.median(values):10.3f} s" if values else f"{'-':>12}")
        print(f"  {key:<52}" + "".join(cells))


def generated_role(root: Path, steps: int) -> Path:
    playbooks = root / "playbooks"
    role = playbooks / "roles" / "bench"
    role.mkdir(parents=True)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 2\n")
    (role / "role.yml").write_text("description: generated\nbase:\n  local: localhost/kiln-base/debian:bookworm\n")
    lines = []
    for i in range(steps):
        if i % 2:
            lines.append(f'- name: dir {i}\n  file: {{path: /srv/bench/d{i}, state: directory, mode: "0755"}}\n')
        else:
            lines.append(
                f'- name: line {i}\n  copy: {{content: "value {i}\\n", dest: /srv/bench-f{i}, mode: "0644"}}\n'
            )
    (role / "steps.yml").write_text("- name: base dir\n  file: {path: /srv/bench, state: directory}\n" + "".join(lines))
    return playbooks


def bench_steps(builds: Path, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        playbooks = generated_role(Path(tmp), steps)
        options = BakeOptions(builds_dir=builds, playbooks_dir=playbooks)
        t0 = time.monotonic()
        compiled = compile_role(playbooks, "bench", "local", load_config(playbooks / "kiln.yaml"))
        compile_time = time.monotonic() - t0
        ctx = BakeContext(
            role="bench",
            compiled=compiled,
            provider=LocalProvider(),
            options=options,
            build_id=f"bench-{int(time.time())}",
        )
        run_stages(
            [
                ResolveBase(),
                AllocateVersion(),
                LaunchInstance(),
                Connect(),
                PushBundle(),
                ApplySteps(),
                IdempotenceCheck(),
            ],
            ctx,
        )
        n = len(compiled.steps)
        both = ctx.timings["apply steps"] + ctx.timings["idempotence check"]
        print(f"\n== {n} steps ==")
        print(f"  compile + validate           {compile_time:8.3f} s")
        print(
            f"  apply + no-op re-run         {both:8.3f} s  (one exec over SSH; {ctx.apply_counts.changed} changed, "
            f"then {ctx.rerun_counts.changed} changed)"
        )
        print(f"  per step, both runs          {both / (2 * n) * 1000:8.2f} ms")
        print(f"  SSH round trips              {ctx.session.round_trips:8d}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-web", action="store_true")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument(
        "--repo", type=Path, action="append", default=[], help="another kiln checkout, timed interleaved (repeatable)"
    )
    parser.add_argument(
        "--without-this",
        action="store_true",
        help="time only the --repo checkouts (frozen copies: others' edits in "
        "this working tree stay out of the comparison)",
    )
    args = parser.parse_args()
    kiln_log.configure(json_output=False, level=30)  # warnings only: the figures are the output
    if not args.skip_web:
        repos = {repo.name: repo for repo in args.repo}
        bench_web(repos if args.without_this and repos else {**repos, "this": REPO}, args.reps)
    if not args.skip_steps:
        with tempfile.TemporaryDirectory() as builds:
            bench_steps(Path(builds), args.steps)


if __name__ == "__main__":
    main()
