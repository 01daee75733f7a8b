"""Benchmark: a local bake of `web`, stage by stage, and a 100-step role's apply.

    .venv/bin/python benchmarks/bake_local.py [--steps 100] [--skip-web]

Prints the time of each stage of a real `web` bake and kiln's own overhead: the bake's
wall time minus what the engine and the network spend (container start and removal,
`podman commit`, the package step that downloads nginx). Then bakes a generated role
of N file/line steps up to the idempotence check: the first apply, and the no-op
re-run (both timed on the box by the agent, and end to end over SSH).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller import log as kiln_log  # noqa: E402
from controller.bake import bake  # noqa: E402
from controller.config import load_config  # noqa: E402
from controller.context import BakeContext, BakeOptions  # noqa: E402
from controller.pipeline import run_stages  # noqa: E402
from controller.providers.local import LocalProvider  # noqa: E402
from controller.stages.allocate_version import AllocateVersion  # noqa: E402
from controller.stages.apply_steps import ApplySteps, IdempotenceCheck  # noqa: E402
from controller.stages.connect import Connect  # noqa: E402
from controller.stages.launch_instance import LaunchInstance  # noqa: E402
from controller.stages.push_bundle import PushBundle  # noqa: E402
from controller.stages.resolve_base import ResolveBase  # noqa: E402
from controller.stepfiles.compile import compile_role  # noqa: E402

ENGINE_STAGES = ("launch instance", "snapshot", "undo launch instance")


def bench_web(builds: Path) -> None:
    t0 = time.monotonic()
    result = bake("web", "local", BakeOptions(builds_dir=builds, playbooks_dir=REPO / "playbooks"))
    wall = time.monotonic() - t0
    ctx = result.ctx
    if result.exit_code:
        print(f"web bake failed: {result.error}")
        return
    print("\n== bake web (local) ==")
    for name, seconds in ctx.timings.items():
        print(f"  {name:<28} {seconds:8.3f} s")
    package_time = sum(e.get("duration", 0) for e in ctx.step_events if e.get("module") == "package")
    engine_time = sum(ctx.timings.get(n, 0) for n in ENGINE_STAGES)
    print(f"  {'wall':<28} {wall:8.3f} s")
    print(f"  engine (start/commit/remove) {engine_time:8.3f} s")
    print(f"  package downloads/installs   {package_time:8.3f} s")
    print(f"  kiln overhead                {wall - engine_time - package_time:8.3f} s  (aim: < 2 s)")


def generated_role(root: Path, steps: int) -> Path:
    playbooks = root / "playbooks"
    role = playbooks / "roles" / "bench"
    role.mkdir(parents=True)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 2\n")
    (role / "role.yml").write_text("description: generated\nbase:\n  local: localhost/kiln-base/debian:bookworm\n")
    lines = []
    for i in range(steps):
        if i % 2:
            lines.append(f"- name: dir {i}\n  file: {{path: /srv/bench/d{i}, state: directory, mode: \"0755\"}}\n")
        else:
            lines.append(f"- name: line {i}\n  copy: {{content: \"value {i}\\n\", dest: /srv/bench-f{i}, mode: \"0644\"}}\n")
    (role / "steps.yml").write_text("- name: base dir\n  file: {path: /srv/bench, state: directory}\n" + "".join(lines))
    return playbooks


def bench_steps(builds: Path, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        playbooks = generated_role(Path(tmp), steps)
        options = BakeOptions(builds_dir=builds, playbooks_dir=playbooks)
        t0 = time.monotonic()
        compiled = compile_role(playbooks, "bench", "local", load_config(playbooks / "kiln.yaml"))
        compile_time = time.monotonic() - t0
        ctx = BakeContext(role="bench", compiled=compiled, provider=LocalProvider(state_dir=builds),
                          options=options, build_id=f"bench-{int(time.time())}")
        run_stages([ResolveBase(), AllocateVersion(), LaunchInstance(), Connect(), PushBundle(), ApplySteps(),
                    IdempotenceCheck()], ctx)
        n = len(compiled.steps)
        print(f"\n== {n} steps ==")
        print(f"  compile + validate           {compile_time:8.3f} s")
        print(f"  first apply (over SSH)       {ctx.timings['apply steps']:8.3f} s  "
              f"({ctx.apply_counts.changed} changed)")
        print(f"  no-op re-run (over SSH)      {ctx.timings['idempotence check']:8.3f} s  "
              f"({ctx.rerun_counts.changed} changed; aim: < 1 s)")
        print(f"  per step, no-op              {ctx.timings['idempotence check'] / n * 1000:8.2f} ms")
        print(f"  SSH round trips              {ctx.session.round_trips:8d}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--skip-web", action="store_true")
    args = parser.parse_args()
    kiln_log.configure(json_output=False, level=30)  # warnings only: the figures are the output
    with tempfile.TemporaryDirectory() as builds:
        if not args.skip_web:
            bench_web(Path(builds))
        bench_steps(Path(builds), args.steps)


if __name__ == "__main__":
    main()
