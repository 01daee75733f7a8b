"""Benchmark: one AWS bake in the sandbox (moto + a local container), counted and timed.

    .venv/bin/python benchmarks/aws_sandbox.py [--role web] [--steps 1,50]

For the bake of ``--role`` (from playbooks/, regions us-east-1 + eu-west-1) it prints:
  * the AWS API calls, by operation (botocore's before-call: retries are not calls);
  * the SSH round trips (commands run over the bake's one connection);
  * where the wall time went: the cloud (API calls, the data plane booting containers and
    committing images, waiter sleeps), the box (SSH commands: the agent, package installs,
    waiting for sshd), and the controller itself: wall time outside those intervals.
Then bakes generated roles of N file steps to show the round trips do not grow with N.
Uses an embedded moto server unless AWS_ENDPOINT_URL is set.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kiln.controller import log as kiln_log  # noqa: E402
from kiln.controller import ssh  # noqa: E402
from kiln.controller.bake import bake  # noqa: E402
from kiln.controller.context import BakeOptions  # noqa: E402
from kiln.controller.providers.aws import make_aws_provider  # noqa: E402

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SETTINGS = {"regions": ["us-east-1", "eu-west-1"], "share": {"accounts": ["111122223333"]}}


class Intervals:
    """Time spent outside the controller, as a union of (start, end) intervals per kind."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float, str]] = []
        self.lock = threading.Lock()

    def add(self, start: float, kind: str) -> None:
        with self.lock:
            self.spans.append((start, time.monotonic(), kind))

    def timed(self, kind: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(t0, kind)

        return wrapper

    def union(self, kinds: set[str] | None = None) -> float:
        spans = sorted((s, e) for s, e, k in self.spans if kinds is None or k in kinds)
        total, end = 0.0, float("-inf")
        for start, stop in spans:
            if stop <= end:
                continue
            total += stop - max(start, end)
            end = stop
        return total


def instrument(prov: Any, spans: Intervals) -> collections.Counter:
    calls: collections.Counter = collections.Counter()

    def before(model: Any, context: dict, **kwargs: Any) -> None:
        calls[f"{model.service_model.signing_name}:{model.name}"] += 1
        context["bench_t0"] = time.monotonic()

    def after(context: dict, **kwargs: Any) -> None:
        if "bench_t0" in context:
            spans.add(context.pop("bench_t0"), "api")

    prov.session.events.register("before-call", before)
    prov.session.events.register("after-call", after)
    prov.session.events.register("after-call-error", after)
    plane = prov.data_plane
    for hook in ("launched", "address", "image_created", "image_copied", "image_removed", "terminated"):
        setattr(plane, hook, spans.timed("data plane", getattr(plane, hook)))
    prov.sleep = spans.timed("waits", prov.sleep)
    return calls


def one_bake(role: str, playbooks: Path, builds: Path) -> None:
    spans = Intervals()
    prov = make_aws_provider(SETTINGS, sandbox=True, state_dir=builds)
    calls = instrument(prov, spans)
    original_run, original_wait = ssh.Session.run, ssh.Session.wait_until_ready
    ssh.Session.run = spans.timed("box", original_run)
    ssh.Session.wait_until_ready = spans.timed("box", original_wait)
    try:
        t0 = time.monotonic()
        result = bake(role, "aws", BakeOptions(builds_dir=builds, playbooks_dir=playbooks), provider=prov)
        wall = time.monotonic() - t0
    finally:
        ssh.Session.run, ssh.Session.wait_until_ready = original_run, original_wait
    ctx = result.ctx
    if result.exit_code:
        print(f"{role}: bake failed: {result.error}")
        return
    round_trips = ctx.session.round_trips if ctx.session else 0
    print(f"\n== sandbox bake of {role} ({len(ctx.compiled.steps)} steps, regions {', '.join(SETTINGS['regions'])}) ==")
    print(f"  API calls: {sum(calls.values())}")
    for name, count in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {count:4d}  {name}")
    print(f"  SSH round trips: {round_trips}")
    print("  stages:")
    for name, seconds in ctx.timings.items():
        print(f"    {name:<28} {seconds:7.3f} s")
    cloud = spans.union({"api", "data plane", "waits"})
    box = spans.union({"box"})
    outside = spans.union()
    print(f"  wall                          {wall:7.3f} s")
    print(f"  cloud: API calls (moto)       {spans.union({'api'}):7.3f} s")
    print(f"  cloud: data plane (podman)    {spans.union({'data plane'}):7.3f} s")
    print(f"  cloud: waiter sleeps          {spans.union({'waits'}):7.3f} s")
    print(f"  box: SSH commands + sshd wait {box:7.3f} s")
    print(f"  controller (outside cloud and box) {wall - outside:7.3f} s  (aim: < 2 s; cloud {cloud:.3f} s)")
    prov.data_plane.cleanup()


def generated(root: Path, steps: int) -> Path:
    role_dir = root / "playbooks" / "roles" / f"gen{steps}"
    role_dir.mkdir(parents=True)
    (root / "playbooks" / "kiln.yaml").write_text("retention: {keep: 5}\n")
    (role_dir / "role.yml").write_text(
        f"description: {steps} generated steps\nbase:\n  aws: {{ssm_parameter: {AL2023}}}\n"
    )
    (role_dir / "steps.yml").write_text(
        "- name: directory\n  file: {path: /etc/kiln-bench, state: directory}\n"
        + "".join(
            f'- name: file {i}\n  copy: {{content: "{i}\\n", dest: /etc/kiln-bench/f{i}}}\n' for i in range(steps - 1)
        )
    )
    (role_dir / "verify.yml").write_text("- file: /etc/kiln-bench\n")
    return root / "playbooks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", default="web", help="a role of playbooks/ to bake ('' to skip)")
    parser.add_argument("--steps", default="1,50", help="generated roles of these step counts ('' to skip)")
    args = parser.parse_args()
    kiln_log.configure(json_output=True, level=40)  # errors only: the figures are the output
    with tempfile.TemporaryDirectory(prefix="kiln-bench-aws-") as tmp:
        if args.role:
            one_bake(args.role, REPO / "playbooks", Path(tmp) / "builds")
        for steps in [int(s) for s in args.steps.split(",") if s.strip()]:
            root = Path(tmp) / f"gen{steps}"
            one_bake(f"gen{steps}", generated(root, steps), root / "builds")


if __name__ == "__main__":
    main()
