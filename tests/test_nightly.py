"""Nightly rebuilds on the local provider: only what changed, in parallel, with a report."""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from kiln.controller.nightly import RoleReport, package_changes, render_markdown
from tests.machines import SESSION, SESSION_LABEL
from tests.playbooks import image_repo, invoke

BASE_REF = f"localhost/kiln-test/nightly-base:{SESSION}"
#: Role names carry this session's id: concurrent test sessions must not share images.
ROLE = {name: f"{name}-{SESSION}" for name in ("common", "app", "solo", "pkgdiff")}


def three_roles(root: Path) -> Path:
    """common <- app, and an independent solo; all on a test base we can 'rebuild'."""
    playbooks = root / "playbooks"
    roles = {
        "common": (
            "description: shared\nbase:\n  local: " + BASE_REF + "\n",
            '- name: common marker\n  copy: {content: "common 1\\n", dest: /etc/kiln-common}\n',
        ),
        "app": (
            "description: app\ndepends: [common]\n",
            '- name: app marker\n  copy: {content: "app 1\\n", dest: /etc/kiln-app}\n',
        ),
        "solo": (
            "description: solo\nbase:\n  local: " + BASE_REF + "\n",
            '- name: solo marker\n  copy: {content: "solo 1\\n", dest: /etc/kiln-solo}\n',
        ),
    }
    for name, (role_yml, steps) in roles.items():
        d = playbooks / "roles" / ROLE[name]
        role_yml = role_yml.replace("[common]", f"[{ROLE['common']}]")
        d.mkdir(parents=True)
        (d / "role.yml").write_text(role_yml)
        (d / "steps.yml").write_text(steps)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 5\n")
    return playbooks


def rebuild_test_base(engine, marker: str) -> None:
    """A 'new base release': the real base plus one file, under the test base's name."""
    from kiln.controller.engine import BASE_IMAGE

    name = f"kiln-test-basebuild-{marker}"
    engine.run("create", "--name", name, "--label", SESSION_LABEL, BASE_IMAGE, "/bin/true")
    try:
        engine.run("cp", "-", f"{name}:/", input=_tar({"etc/kiln-base-release": marker.encode()}))
        engine.run("commit", name, BASE_REF)
    finally:
        engine.remove_container(name)


def _tar(files: dict[str, bytes]) -> bytes:
    from kiln.controller.engine import tar_of

    return tar_of({k: (v, 0o644) for k, v in files.items()})


def logical(role: str) -> str:
    return role.removesuffix(f"-{SESSION}")


def latest_report(builds: Path) -> dict:
    """The newest report, keyed by the roles' names without the session suffix."""
    path = max(builds.glob("nightly-*.json"), key=lambda p: p.stat().st_mtime)
    return {logical(r["role"]): r for r in json.loads(path.read_text())["roles"]}


def cleanup_images(engine) -> None:
    for role in ("common", "app", "solo"):
        for row in engine.images(image_repo(ROLE[role])):
            engine.remove_image(row["Id"])


@pytest.fixture()
def nightly_env(engine, tmp_path):
    cleanup_images(engine)
    rebuild_test_base(engine, "r1")
    playbooks = three_roles(tmp_path)
    yield tmp_path, playbooks
    cleanup_images(engine)
    engine.remove_image(BASE_REF)


def run_nightly(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return invoke(cwd, "nightly", "--concurrency", "3", *extra)


@pytest.mark.slow
def test_skip_unchanged_rebake_changed_and_dependents_rebake_all_on_new_base(engine, nightly_env):
    cwd, playbooks = nightly_env
    first = run_nightly(cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    # concurrent bakes on one terminal: every line says its role; a line per finished role
    assert f"[{ROLE['common']}] ==> apply steps" in first.stderr and f"[{ROLE['solo']}] ==> snapshot" in first.stderr
    assert any(line.startswith("baked") and ROLE["app"] in line for line in first.stderr.splitlines())
    assert {r: v["result"] for r, v in latest_report(cwd / "builds").items()} == {
        "common": "baked",
        "app": "baked",
        "solo": "baked",
    }

    second = run_nightly(cwd)
    assert second.returncode == 0
    report = latest_report(cwd / "builds")
    assert {r: v["result"] for r, v in report.items()} == {
        "common": "skipped-unchanged",
        "app": "skipped-unchanged",
        "solo": "skipped-unchanged",
    }

    # touching common's content rebakes common and app (which includes it), not solo
    steps = playbooks / "roles" / ROLE["common"] / "steps.yml"
    steps.write_text(steps.read_text().replace("common 1", "common 2"))
    third = run_nightly(cwd)
    assert third.returncode == 0, third.stderr[-3000:]
    report = latest_report(cwd / "builds")
    assert {r: v["result"] for r, v in report.items()} == {
        "common": "baked",
        "app": "baked",
        "solo": "skipped-unchanged",
    }
    assert report["app"]["old_version"] and report["app"]["new_version"] != report["app"]["old_version"]

    # a new base image release rebakes everything
    rebuild_test_base(engine, "r2")
    fourth = run_nightly(cwd)
    assert fourth.returncode == 0
    assert {v["result"] for v in latest_report(cwd / "builds").values()} == {"baked"}
    md = sorted((cwd / "builds").glob("nightly-*.md"))[-1].read_text()
    assert f"| {ROLE['common']} | baked |" in md


@pytest.mark.slow
def test_failing_role_is_reported_while_others_bake(engine, nightly_env):
    cwd, playbooks = nightly_env
    (playbooks / "roles" / ROLE["solo"] / "steps.yml").write_text(
        '- name: solo breaks\n  shell: {cmd: "echo broken-on-purpose >&2; exit 4"}\n'
    )
    proc = run_nightly(cwd)
    assert proc.returncode == 1
    report = latest_report(cwd / "builds")
    assert report["solo"]["result"] == "failed"
    assert report["solo"]["failed_step"] == "solo breaks"
    assert "broken-on-purpose" in report["solo"]["error"]
    assert report["common"]["result"] == "baked" and report["app"]["result"] == "baked"
    md = sorted((cwd / "builds").glob("nightly-*.md"))[-1].read_text()
    assert f"{ROLE['solo']}: failed" in md and "broken-on-purpose" in md


@pytest.mark.slow
def test_two_nightlies_at_once_bake_each_role_once(engine, nightly_env):
    cwd, _ = nightly_env
    results = {}

    def go(key: str) -> None:
        results[key] = run_nightly(cwd, "--on-locked", "wait")

    threads = [threading.Thread(target=go, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), [r.stderr[-2000:] for r in results.values()]
    reports = [json.loads(p.read_text()) for p in sorted((cwd / "builds").glob("nightly-*.json"))]
    baked = [logical(r["role"]) for rep in reports for r in rep["roles"] if r["result"] == "baked"]
    assert sorted(baked) == ["app", "common", "solo"], reports
    for role in ("common", "app", "solo"):
        versions = [row for row in engine.images(image_repo(ROLE[role]))]
        assert len({tuple(sorted(r.get("Names") or [])) for r in versions}) == 1


@pytest.mark.slow
def test_three_nightlies_at_once_through_the_flock_bake_dependencies_first_and_once(engine, nightly_env):
    """Without --on-locked wait: a runner finding common held waits for it (app depends on it)
    instead of baking app at once; every role is baked once, on whichever runner."""
    import datetime as dt

    cwd, _ = nightly_env
    results = {}
    threads = [
        threading.Thread(target=lambda k=k: results.__setitem__(k, run_nightly(cwd, "--runner", f"r{k}")))
        for k in (1, 2, 3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), [r.stderr[-2000:] for r in results.values()]
    reports = [json.loads(p.read_text()) for p in sorted((cwd / "builds").glob("nightly-*.json"))]
    baked = sorted(logical(r["role"]) for rep in reports for r in rep["roles"] if r["result"] == "baked")
    assert baked == ["app", "common", "solo"], reports
    entries = {logical(e["role"]): e for e in json.loads((cwd / "builds/manifest.json").read_text())}
    started = dt.datetime.fromisoformat(entries["app"]["started"])
    finished = dt.datetime.fromisoformat(entries["common"]["finished"])
    assert started >= finished, f"app started baking at {started}, before common was baked ({finished})"
    for role in ("common", "app", "solo"):
        assert len({r["Id"] for r in engine.images(image_repo(ROLE[role]))}) == 1, role


@pytest.mark.slow
def test_package_diff_names_a_really_changed_package(engine, tmp_path):
    """Two versions of a role: the second installs a package; the report names it."""
    from tests.playbooks import make_playbooks

    playbooks = make_playbooks(
        tmp_path,
        {"steps.yml": '- name: nothing\n  command: {cmd: "true"}\n  changed_when: false\n'},
        role=ROLE["pkgdiff"],
    )
    try:
        assert invoke(tmp_path, "nightly", "--roles", ROLE["pkgdiff"]).returncode == 0
        (playbooks / "roles" / ROLE["pkgdiff"] / "steps.yml").write_text(
            "- name: a tiny package\n  package: {name: hello, update_cache: true}\n"
        )
        proc = invoke(tmp_path, "nightly", "--roles", ROLE["pkgdiff"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = latest_report(tmp_path / "builds")["pkgdiff"]
        assert "hello" in report["packages"]["added"], report["packages"]
        md = sorted((tmp_path / "builds").glob("nightly-*.md"))[-1].read_text()
        assert "added: `hello`" in md
    finally:
        for row in engine.images(image_repo(ROLE["pkgdiff"])):
            engine.remove_image(row["Id"])


def test_package_changes_pure():
    before = {"a": "1", "b": "1", "c": "1"}
    after = {"a": "1", "b": "2", "d": "1"}
    assert package_changes(before, after) == {"added": {"d": "1"}, "removed": {"c": "1"}, "upgraded": {"b": "1 -> 2"}}


def test_markdown_names_failure_and_versions():
    import datetime as dt

    md = render_markdown(
        [
            RoleReport("web", "baked", "20260101.1", "20260102.1", duration=3.0),
            RoleReport("db", "failed", error="boom", failed_step="install"),
        ],
        "local",
        dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
    )
    assert "20260101.1 → 20260102.1" in md and "Failing step: **install**" in md and "boom" in md


# --- several runners: shards and merged reports (no machine launched) -------------------------
def chains_playbooks(root: Path) -> Path:
    """Chains of 4 (d0 <- d1 <- d2, d1 <- d3), 2 (e0 <- e1, through a role not selected below) and 5 lone roles."""
    shape = {"d0": [], "d1": ["d0"], "d2": ["d1"], "d3": ["d1"], "e0": [], "e1": ["e0"]}
    shape |= {f"f{i}": [] for i in range(5)}
    playbooks = root / "playbooks"
    for name, deps in shape.items():
        d = playbooks / "roles" / name
        d.mkdir(parents=True)
        head = f"depends: [{', '.join(deps)}]\n" if deps else "base:\n  local: localhost/kiln-base/debian:bookworm\n"
        (d / "role.yml").write_text(f"description: {name}\n{head}")
        (d / "steps.yml").write_text(f'- name: {name}\n  command: {{cmd: "true"}}\n')
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 3\n")
    return playbooks


def test_shards_keep_chains_whole_cover_every_role_once_and_balance(tmp_path):
    from kiln.controller.config import load_config
    from kiln.controller.nightly import Shard, dependency_chains, shard_roles
    from kiln.controller.stepfiles.compile import compile_role

    playbooks = chains_playbooks(tmp_path)
    config = load_config(playbooks / "kiln.yaml")
    names = sorted(p.name for p in (playbooks / "roles").iterdir() if p.name != "e0")  # e0 not selected
    compiled = {n: compile_role(playbooks, n, "local", config) for n in names}
    assert dependency_chains(compiled)[:2] == [["d0", "d1", "d2", "d3"], ["e1"]]
    for count in range(1, 6):
        shares = [shard_roles(compiled, Shard(k, count)) for k in range(1, count + 1)]
        assert sorted(r for s in shares for r in s) == names, f"{count}: every role in exactly one share"
        assert sum(1 for s in shares if {"d0", "d1", "d2", "d3"} <= s) == 1, shares
        assert shares == [shard_roles(dict(reversed(compiled.items())), Shard(k, count)) for k in range(1, count + 1)]
        sizes = sorted(len(s) for s in shares)
        assert sizes[-1] - sizes[0] <= 4, f"{count}: balanced up to the largest chain: {shares}"
    assert sorted(len(shard_roles(compiled, Shard(k, 3))) for k in (1, 2, 3)) == [3, 3, 4]


@pytest.mark.parametrize("shard", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", "1/3/5"])
def test_a_bad_shard_is_invalid_input_and_launches_nothing(tmp_path, shard):
    chains_playbooks(tmp_path)
    proc = invoke(tmp_path, "nightly", "--shard", shard)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--shard:1:1: error: expected K/N with 1 <= K <= N, got '{shard}'" in proc.stdout
    assert not (tmp_path / "builds").exists(), "no report: nothing was looked at"


def write_runner_report(builds: Path, runner: str, started: str, roles: dict[str, str], run_id: str = "n1") -> None:
    """A runner's report as `invoke nightly` writes it, in a folder of its own (a CI artifact)."""
    finished = started.replace(":00+", ":30+")
    lines = [
        {**asdict(RoleReport(r, result, new_version="20260102.1" if result == "baked" else "")), "duration": 1.0}
        for r, result in roles.items()
    ]
    data = {
        "started": started,
        "finished": finished,
        "provider": "aws",
        "run_id": run_id,
        "runner": runner,
        "shard": "",
        "roles": lines,
    }
    (builds / runner).mkdir(parents=True, exist_ok=True)
    (builds / runner / f"nightly-{started[:19].replace(':', '')}.json").write_text(json.dumps(data))


def test_nightly_report_merges_the_newest_report_of_each_runner_of_a_run(tmp_path):
    t = "2026-01-02T02:{:02d}:00+00:00"
    write_runner_report(tmp_path, "r1", t.format(0), {"web": "baked", "db": "locked", "cache": "skipped-unchanged"})
    write_runner_report(tmp_path, "r2", t.format(1), {"web": "locked", "db": "failed", "cache": "skipped-unchanged"})
    write_runner_report(tmp_path, "r2", t.format(5), {"web": "locked", "db": "baked", "cache": "skipped-unchanged"})
    write_runner_report(tmp_path, "r3", t.format(2), {"web": "baked"}, run_id="other")
    proc = invoke(tmp_path, "nightly-report", "--run-id", "n1", "--dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    merged = json.loads(proc.stdout)
    assert {r["role"]: (r["result"], r["runner"]) for r in merged["roles"]} == {
        "web": ("baked", "r1"),
        "db": ("baked", "r2"),
        "cache": ("skipped-unchanged", "r1"),
    }
    assert merged["totals"] == {"baked": 2, "skipped-unchanged": 1, "failed": 0, "locked": 0}
    assert sorted(merged["runners"]) == ["r1", "r2"] and merged["runners"]["r2"]["baked"] == 1
    assert merged["wall_seconds"] == 330.0 and not merged["duplicates"]
    md = (tmp_path / "nightly-run-n1.md").read_text()
    assert "| web | baked | r1 |" in md and "| db | baked | r2 |" in md

    # the newest run by default; a role two runners baked is flagged (exit 1)
    write_runner_report(tmp_path, "r4", t.format(9), {"web": "baked"}, run_id="other")
    proc = invoke(tmp_path, "nightly-report", "--dir", str(tmp_path), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["duplicates"] == {"web": ["r3 20260102.1", "r4 20260102.1"]}
    assert "baked by more than one runner" in (tmp_path / "nightly-run-other.md").read_text()


def test_nightly_report_of_nothing_or_garbage_is_invalid_input(tmp_path):
    proc = invoke(tmp_path, "nightly-report", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "no nightly reports" in proc.stdout
    (tmp_path / "nightly-x.json").write_text("{not json")
    proc = invoke(tmp_path, "nightly-report", "--report", str(tmp_path / "nightly-x.json"))
    assert (
        proc.returncode == 2 and f"{tmp_path}/nightly-x.json:1:1: error: not a readable nightly report" in proc.stdout
    )
    proc = invoke(tmp_path, "nightly-report", "--run-id", "../x", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "--run-id:1:1" in proc.stdout
