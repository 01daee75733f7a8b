"""Benchmark: nightly over generated roles on the AWS sandbox, with simulated cloud latency.

    .venv/bin/python benchmarks/nightly.py [--roles 20] [--concurrency 1,8] [--latency 0.05,0.10]
                                           [--boot 2] [--image 2] [--regions us-east-1]

One moto server on 127.0.0.1 (started here, so its state lasts across the nightlies), local
containers as instances (the sandbox's data plane). ``--roles`` tiny independent roles
(three file steps and one check each, on AWS's AL2023 parameter). Then:

  1. a nightly at each ``--concurrency`` in turn, every role baked (the first finds no image,
     the later ones are ``--force``d): wall time, the longest single bake, the sum of the
     bakes, API calls;
  2. a no-change nightly at each concurrency: every role skipped-unchanged, nothing launched.

The latency model (moto answers in ~1 ms and flips states at once; AWS does neither):
  * every API request the provider sends waits uniform(``--latency``) seconds first (a
    botocore ``before-send`` hook on the provider's session; retries count again), a
    typical EC2/SSM round trip from outside the region being 50-100 ms;
  * an instance takes ``--boot`` extra seconds to boot after run_instances, and an AMI
    ``--image`` extra seconds after create_image before the waiter sees it (sleeps in the
    data plane's ``launched`` and ``image_created`` hooks, which the provider calls right
    after those calls). Real figures are 20-60 s and minutes: scaled down so that the
    benchmark stays under ~10 minutes on 2 cores, and because in both cases the point is
    that such waiting overlaps across roles while the CPU-bound part (containers booting,
    commits, SSH, the agent) competes for the machine's cores.
The data plane's own reads of moto (the stand-in for cloud-init and the hypervisor) are not
delayed: they are not calls kiln makes on AWS.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kiln.controller import log as kiln_log  # noqa: E402
from kiln.controller.config import load_config  # noqa: E402
from kiln.controller.context import BakeOptions  # noqa: E402
from kiln.controller.engine import Engine  # noqa: E402
from kiln.controller.nightly import BAKED, UNCHANGED, Nightly, RoleReport  # noqa: E402
from kiln.controller.providers.aws import make_aws_provider  # noqa: E402
from kiln.controller.sandbox import LOCAL_IMAGES, MOTO_ENV, sandbox_client  # noqa: E402

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


class Latency:
    """Sleep before every request a session sends; count the calls and the time slept."""

    def __init__(self, low: float, high: float, seed: int = 7) -> None:
        self.low, self.high = low, high
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.calls: collections.Counter = collections.Counter()
        self.slept = 0.0

    def install(self, session: Any) -> None:
        session.events.register_first("before-send", self.before_send)
        session.events.register("before-call", self.before_call)

    def before_call(self, model: Any, **kwargs: Any) -> None:
        with self.lock:
            self.calls[f"{model.service_model.signing_name}:{model.name}"] += 1

    def before_send(self, request: Any, **kwargs: Any) -> None:
        with self.lock:
            delay = self.random.uniform(self.low, self.high)
            self.slept += delay
        time.sleep(delay)
        return None  # the request goes on to moto


def slow_cloud(plane: Any, boot: float, image: float) -> None:
    """An instance boots ``boot`` s after run_instances; an AMI takes ``image`` s after create_image."""
    launched, created = plane.launched, plane.image_created

    def booting(region: str, instance_ids: list[str]) -> None:
        launched(region, instance_ids)
        time.sleep(boot)

    def snapshotting(region: str, instance_id: str, image_id: str) -> None:
        created(region, instance_id, image_id)
        time.sleep(image)

    plane.launched, plane.image_created = booting, snapshotting


def generate(root: Path, count: int, regions: list[str]) -> Path:
    playbooks = root / "playbooks"
    (playbooks / "roles").mkdir(parents=True)
    (playbooks / "kiln.yaml").write_text(
        f"providers:\n  aws:\n    regions: [{', '.join(regions)}]\nretention:\n  keep: 2\n"
    )
    for i in range(count):
        role = playbooks / "roles" / f"gen{i:02d}"
        role.mkdir()
        (role / "role.yml").write_text(f"description: generated role {i}\nbase:\n  aws: {{ssm_parameter: {AL2023}}}\n")
        (role / "steps.yml").write_text(
            f"- name: directory\n  file: {{path: /etc/gen{i:02d}, state: directory}}\n"
            f'- name: first\n  copy: {{content: "{i} one\\n", dest: /etc/gen{i:02d}/one}}\n'
            f'- name: second\n  copy: {{content: "{i} two\\n", dest: /etc/gen{i:02d}/two}}\n'
        )
        (role / "verify.yml").write_text(f'- file: /etc/gen{i:02d}/two\n  contains: ["{i} two"]\n')
    return playbooks


def one_nightly(
    playbooks: Path, builds: Path, roles: list[str], concurrency: int, force: bool, args: argparse.Namespace
) -> tuple[float, list[RoleReport], Latency]:
    prov = make_aws_provider({"regions": args.regions}, sandbox=True, state_dir=builds)
    latency = Latency(*args.latency)
    latency.install(prov.session)
    slow_cloud(prov.data_plane, args.boot, args.image)
    run = Nightly(
        prov,
        load_config(playbooks / "kiln.yaml"),
        BakeOptions(builds_dir=builds, playbooks_dir=playbooks),
        roles,
        force=force,
        concurrency=concurrency,
        provider_name="aws",
    )
    started = time.monotonic()
    try:
        reports = run.run()
    finally:
        wall = time.monotonic() - started
        prov.data_plane.cleanup()  # this server outlives the provider: its containers and images do not
    return wall, reports, latency


def describe(label: str, wall: float, reports: list[RoleReport], latency: Latency) -> None:
    counts = collections.Counter(r.result for r in reports)
    baked = [r.duration for r in reports if r.result == BAKED]
    calls = sum(latency.calls.values())
    print(f"  {label:<34} wall {wall:7.1f} s   " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if baked:
        print(
            f"  {'':<34} longest bake {max(baked):5.1f} s, shortest {min(baked):5.1f} s, sum of bakes "
            f"{sum(baked):6.1f} s (wall / longest {wall / max(baked):.1f}x, sum / wall {sum(baked) / wall:.1f}x)"
        )
    print(
        f"  {'':<34} {calls} API calls ({calls / len(reports):.1f} a role), {latency.slept:.1f} s of simulated "
        f"latency, {latency.calls['ec2:RunInstances']} RunInstances"
    )
    failed = [r for r in reports if r.result not in (BAKED, UNCHANGED)]
    for r in failed:
        print(f"    {r.role}: {r.result} {r.error[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roles", type=int, default=20, help="how many generated roles")
    parser.add_argument("--concurrency", default="1,8", help="the nightlies' --concurrency, in turn")
    parser.add_argument("--latency", default="0.05,0.10", help="seconds added to each API request: low,high")
    parser.add_argument("--boot", type=float, default=2.0, help="extra seconds an instance takes to boot")
    parser.add_argument("--image", type=float, default=2.0, help="extra seconds an AMI takes to be available")
    parser.add_argument("--regions", default="us-east-1", help="the first builds, the others receive copies")
    args = parser.parse_args()
    args.latency = tuple(float(x) for x in args.latency.split(","))
    args.regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    kiln_log.configure(json_output=True, level=logging.CRITICAL)  # the figures are the output

    from moto.server import ThreadedMotoServer

    for key, value in MOTO_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("werkzeug").disabled = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    sandbox_client("ec2", args.regions[0], os.environ["AWS_ENDPOINT_URL"]).describe_regions()  # moto's AMIs, once
    engine = Engine()
    before = {row["Id"] for row in engine.images(LOCAL_IMAGES)}
    print(
        f"nightly over {args.roles} generated roles, AWS sandbox ({', '.join(args.regions)}); latency "
        f"{args.latency[0] * 1000:.0f}-{args.latency[1] * 1000:.0f} ms a request, boot +{args.boot:g} s, "
        f"AMI +{args.image:g} s; {os.cpu_count()} cores"
    )
    total = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="kiln-bench-nightly-") as tmp:
            playbooks = generate(Path(tmp), args.roles, args.regions)
            builds = Path(tmp) / "builds"
            roles = [f"gen{i:02d}" for i in range(args.roles)]
            for n, level in enumerate(levels):
                wall, reports, latency = one_nightly(playbooks, builds, roles, level, n > 0, args)
                describe(f"bake all, concurrency {level}" + (" (--force)" if n else ""), wall, reports, latency)
            for level in sorted(set(levels)):
                wall, reports, latency = one_nightly(playbooks, builds, roles, level, False, args)
                describe(f"no change, concurrency {level}", wall, reports, latency)
    finally:
        server.stop()
        for row in engine.images(LOCAL_IMAGES):
            if row["Id"] not in before:
                engine.run("rmi", "-f", row["Id"], check=False)
    print(f"  total {time.monotonic() - total:.0f} s")


if __name__ == "__main__":
    main()
