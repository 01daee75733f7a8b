"""Nightly across several runners: 3 `invoke nightly --provider aws --sandbox` processes at once over
one moto server, each in a working directory of its own (as on three machines), sharing 12 small
roles (two dependency chains of three and six lone roles) through the per-role SSM lock, or through
`--shard K/3`; then `invoke nightly-report` merges their reports.

Every changed role is baked exactly once (one AMI and one version per role in moto), a dependent's
bake starts only after its dependency's finished (whichever runner baked each), and the wall time of
three runners is compared with one runner's over a fresh set of the same roles (printed and recorded
as a property of the test, not asserted: on a 2-core machine shared with other work the ratio is noise).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kiln.controller.sandbox import sandbox_client
from tests.aws_harness import AL2023
from tests.playbooks import invoke

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("sandbox_env")]

REGION = "us-east-1"
RUNNERS = 3
#: Bakes at once per runner: modest, since three runners share this machine's cores.
CONCURRENCY = 1
KILN_YAML = f"providers:\n  aws:\n    regions: [{REGION}]\nretention:\n  keep: 5\n"
#: role -> its dependencies: chains a0 <- a1 <- a2 and b0 <- {b1, b2}, and six lone roles.
SHAPE = {"a0": [], "a1": ["a0"], "a2": ["a1"], "b0": [], "b1": ["b0"], "b2": ["b0"]} | {f"c{i}": [] for i in range(6)}


def write_roles(root: Path, prefix: str) -> Path:
    """The 12 roles under ``prefix`` (role names are global in moto: each set has its own)."""
    playbooks = root / "playbooks"
    for name, deps in SHAPE.items():
        role = f"{prefix}{name}"
        d = playbooks / "roles" / role
        d.mkdir(parents=True)
        head = (
            f"depends: [{', '.join(prefix + x for x in deps)}]\n"
            if deps
            else f"base:\n  aws: {{ssm_parameter: {AL2023}}}\n"
        )
        (d / "role.yml").write_text(f"description: {role}\n{head}")
        (d / "steps.yml").write_text(step(role, "1"))
    (playbooks / "kiln.yaml").write_text(KILN_YAML)
    return playbooks


def step(role: str, release: str) -> str:
    mark = f"/etc/kiln-{role}-{release}"
    return f'- name: {role} mark\n  command: {{cmd: "touch {mark}", creates: "{mark}"}}\n'


def runner_dirs(root: Path, playbooks: Path, count: int) -> list[Path]:
    """A working directory per runner (its own builds/ and state), the same playbooks (one checkout)."""
    dirs = []
    for k in range(1, count + 1):
        d = root / f"runner{k}"
        d.mkdir(exist_ok=True)
        if not (d / "playbooks").exists():
            (d / "playbooks").symlink_to(playbooks)
        dirs.append(d)
    return dirs


def nightly(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return invoke(
        cwd,
        "nightly",
        "--provider",
        "aws",
        "--sandbox",
        "--concurrency",
        str(CONCURRENCY),
        *extra,
        env={"KILN_JSON": "1"},
        timeout=600,
    )


def at_once(dirs: list[Path], extra_of) -> tuple[list[subprocess.CompletedProcess], float]:
    """A nightly in each directory, all started together: their results, and the wall time of all."""
    done: dict[int, subprocess.CompletedProcess] = {}
    threads = [
        threading.Thread(target=lambda k=k, d=d: done.__setitem__(k, nightly(d, *extra_of(k))))
        for k, d in enumerate(dirs, 1)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    procs = [done[k] for k in range(1, len(dirs) + 1)]
    assert all(p.returncode == 0 for p in procs), [p.stderr[-3000:] for p in procs]
    return procs, wall


def newest_report(cwd: Path) -> dict:
    return max(
        (json.loads(p.read_text()) for p in (cwd / "builds").glob("nightly-2*.json")), key=lambda r: r["started"]
    )


def amis(url: str, role: str) -> list[str]:
    """The versions of ``role``'s AMIs in moto (one per bake that published)."""
    rows = sandbox_client("ec2", REGION, url).describe_images(
        Owners=["self"], Filters=[{"Name": "tag:kiln:role", "Values": [role]}]
    )["Images"]
    return sorted(next(t["Value"] for t in i["Tags"] if t["Key"] == "kiln:version") for i in rows)


def bakes(dirs: list[Path]) -> dict[str, list[dict]]:
    """role -> its manifest entries on every runner (one an artifact: one region here)."""
    found: dict[str, list[dict]] = {}
    for d in dirs:
        path = d / "builds" / "manifest.json"
        for entry in json.loads(path.read_text()) if path.exists() else []:
            found.setdefault(entry["role"], []).append(entry)
    return found


def assert_dependencies_first(dirs: list[Path], prefix: str) -> None:
    """Each dependent's newest bake started after its dependency's newest one finished."""
    newest = {role: max(entries, key=lambda e: e["started"]) for role, entries in bakes(dirs).items()}
    for name, deps in SHAPE.items():
        for dep in deps:
            child, parent = newest[prefix + name], newest[prefix + dep]
            started, finished = (
                dt.datetime.fromisoformat(child["started"]),
                dt.datetime.fromisoformat(parent["finished"]),
            )
            assert started >= finished, (
                f"{prefix}{name} started baking at {started} before its dependency {prefix}{dep} finished at {finished}"
            )


def merge(root: Path, run_id: str) -> dict:
    proc = invoke(root, "nightly-report", "--run-id", run_id, "--dir", str(root), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = json.loads(proc.stdout)
    assert merged == json.loads((root / f"nightly-run-{run_id}.json").read_text())
    rows = [line.split(" | ") for line in (root / f"nightly-run-{run_id}.md").read_text().splitlines()]
    assert sum(1 for row in rows if row[1:2] == ["baked"]) == merged["totals"]["baked"], rows
    return merged


def assert_baked_once(url: str, merged: dict, prefix: str, expected: set[str], versions: int | None = 1) -> None:
    roles = {r["role"]: r for r in merged["roles"]}
    assert sorted(roles) == sorted(prefix + n for n in SHAPE), "every role once in the merged report"
    baked = {role for role, r in roles.items() if r["result"] == "baked"}
    assert baked == {prefix + n for n in expected}, {role: r["result"] for role, r in roles.items()}
    assert not merged["duplicates"], merged["duplicates"]
    assert merged["totals"]["baked"] == len(expected) and not merged["totals"]["failed"]
    assert sum(r["baked"] for r in merged["runners"].values()) == len(expected), "no runner baked a role twice"
    for name in SHAPE:
        found = amis(url, prefix + name)
        assert len(found) == len(set(found)), f"{prefix}{name}: a version twice {found}"
        assert versions is None or len(found) == versions, f"{prefix}{name}: AMI versions {found}"


def test_three_runners_share_12_roles_through_the_lock_each_baked_once(engine, tmp_path, record_property):
    url = os.environ["AWS_ENDPOINT_URL"]  # set by sandbox_env

    # one runner over a fresh set: the time to beat
    alone = tmp_path / "alone"
    write_roles(alone, "o")
    started = time.monotonic()
    one = nightly(alone, "--run-id", "alone")
    one_wall = time.monotonic() - started
    assert one.returncode == 0, one.stderr[-3000:]
    assert {r["result"] for r in newest_report(alone)["roles"]} == {"baked"}

    # three runners, no shard: whichever role is free, through the lock
    root = tmp_path / "shared"
    playbooks = write_roles(root, "l")
    dirs = runner_dirs(root, playbooks, RUNNERS)
    _, three_wall = at_once(dirs, lambda k: ("--run-id", "night1", "--runner", f"r{k}"))
    merged = merge(root, "night1")
    assert sorted(merged["runners"]) == ["r1", "r2", "r3"]
    assert_baked_once(url, merged, "l", set(SHAPE))
    assert_dependencies_first(dirs, "l")
    ratio = three_wall / one_wall
    per_runner = [r["baked"] for r in merged["runners"].values()]
    record_property("nightly_wall_ratio_3_runners_to_1", round(ratio, 2))
    print(
        f"\nnightly of 12 roles, concurrency {CONCURRENCY} per runner: 1 runner {one_wall:.1f} s, "
        f"{RUNNERS} runners {three_wall:.1f} s (ratio {ratio:.2f}); baked per runner {per_runner}"
    )
    # The ratio is recorded, not asserted: on 2 shared cores three runners compete for the CPU that
    # one runner's bakes leave idle (0.48 to 0.88 measured here; see benchmarks/README.md).
    assert all(n >= 1 for n in per_runner), f"the work was not shared: {per_runner}"

    # the next night: a0 changed, so a0, a1 and a2 rebake (once each); the rest is unchanged everywhere
    steps = playbooks / "roles/la0/steps.yml"
    steps.write_text(step("la0", "2"))
    at_once(dirs, lambda k: ("--run-id", "night2", "--runner", f"r{k}"))
    merged = merge(root, "night2")
    assert_baked_once(url, merged, "l", {"a0", "a1", "a2"}, versions=None)
    for name in SHAPE:
        assert len(amis(url, f"l{name}")) == (2 if name in ("a0", "a1", "a2") else 1), name
    assert {r["result"] for r in merged["roles"] if r["result"] != "baked"} == {"skipped-unchanged"}
    assert_dependencies_first(dirs, "l")

    # a forced night: every role rebakes, still once each, whichever runner reaches it first
    at_once(dirs, lambda k: ("--run-id", "forced3", "--runner", f"r{k}", "--force"))
    merged = merge(root, "forced3")
    assert_baked_once(url, merged, "l", set(SHAPE), versions=None)
    for name in SHAPE:
        assert len(amis(url, f"l{name}")) == (3 if name in ("a0", "a1", "a2") else 2), name
    assert_dependencies_first(dirs, "l")


def test_three_shards_bake_each_role_once_and_keep_chains_whole(engine, tmp_path):
    url = os.environ["AWS_ENDPOINT_URL"]  # set by sandbox_env
    playbooks = write_roles(tmp_path, "s")
    dirs = runner_dirs(tmp_path, playbooks, RUNNERS)
    _, wall = at_once(dirs, lambda k: ("--shard", f"{k}/{RUNNERS}", "--run-id", "sharded"))
    shares = [{r["role"].removeprefix("s") for r in newest_report(d)["roles"]} for d in dirs]
    print(f"\n{RUNNERS} shards of 12 roles: {wall:.1f} s; shares {[sorted(s) for s in shares]}")
    assert sorted(len(s) for s in shares) == [4, 4, 4], shares
    assert set().union(*shares) == set(SHAPE) and sum(len(s) for s in shares) == len(SHAPE)
    for chain in ({"a0", "a1", "a2"}, {"b0", "b1", "b2"}):
        assert sum(1 for s in shares if chain <= s) == 1, f"the chain {chain} is split: {shares}"
    assert [newest_report(d)["shard"] for d in dirs] == ["1/3", "2/3", "3/3"]
    merged = merge(tmp_path, "sharded")
    assert len(merged["runners"]) == RUNNERS
    assert_baked_once(url, merged, "s", set(SHAPE))
    assert_dependencies_first(dirs, "s")


def launched(url: str, role: str) -> int:
    """Build machines moto ever launched for ``role`` (terminated ones stay listed)."""
    rows = sandbox_client("ec2", REGION, url).describe_instances(Filters=[{"Name": "tag:kiln:role", "Values": [role]}])[
        "Reservations"
    ]
    return sum(len(r["Instances"]) for r in rows)


def test_a_role_failing_on_one_runner_is_not_baked_again_and_its_dependent_waits(engine, tmp_path):
    """fx fails (slowly) on whichever runner takes it; the other, finding it held, waits for it
    instead of baking its dependent fy at once, then finds it let go still changed: fx is not
    baked a second time, and fy is never launched (the runner that failed fx reports it)."""
    url = os.environ["AWS_ENDPOINT_URL"]  # set by sandbox_env
    playbooks = tmp_path / "playbooks"
    roles = {
        "fx": (
            f"base:\n  aws: {{ssm_parameter: {AL2023}}}\n",
            '- name: fails late\n  shell: {cmd: "sleep 6; exit 3"}\n',
        ),
        "fy": ("depends: [fx]\n", step("fy", "1")),
    }
    for role, (head, steps) in roles.items():
        (playbooks / "roles" / role).mkdir(parents=True)
        (playbooks / "roles" / role / "role.yml").write_text(f"description: {role}\n{head}")
        (playbooks / "roles" / role / "steps.yml").write_text(steps)
    (playbooks / "kiln.yaml").write_text(KILN_YAML)
    dirs = runner_dirs(tmp_path, playbooks, 2)
    done: dict[int, subprocess.CompletedProcess] = {}
    threads = [
        threading.Thread(
            target=lambda k=k, d=d: done.__setitem__(k, nightly(d, "--run-id", "fails", "--runner", f"r{k}"))
        )
        for k, d in enumerate(dirs, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reports = {k: {r["role"]: r for r in newest_report(d)["roles"]} for k, d in enumerate(dirs, 1)}
    failed_on = [k for k, rep in reports.items() if rep["fx"]["result"] == "failed"]
    assert len(failed_on) == 1, reports
    other = 3 - failed_on[0]
    assert done[failed_on[0]].returncode == 1 and done[other].returncode == 0, [p.stderr[-2000:] for p in done.values()]
    assert reports[other]["fx"]["result"] == "locked" and "not baked twice" in reports[other]["fx"]["reason"]
    assert (
        reports[failed_on[0]]["fy"]["result"] == "failed"
        and "dependency failed" in reports[failed_on[0]]["fy"]["error"]
    )
    assert launched(url, "fx") == 1, "fx was baked by both runners"
    assert launched(url, "fy") == 0, "fy was baked while (or although) its dependency failed"
    merged = invoke(tmp_path, "nightly-report", "--run-id", "fails", "--dir", str(tmp_path), "--json")
    assert merged.returncode == 1, merged.stdout[-2000:]
    roles_merged = {r["role"]: r for r in json.loads(merged.stdout)["roles"]}
    assert {r: v["result"] for r, v in roles_merged.items()} == {"fx": "failed", "fy": "failed"}
    assert roles_merged["fx"]["runner"] == f"r{failed_on[0]}"
