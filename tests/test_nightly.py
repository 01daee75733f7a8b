"""Nightly rebuilds on the local provider: only what changed, in parallel, with a report."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from controller.nightly import RoleReport, package_changes, render_markdown
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
    from controller.engine import BASE_IMAGE

    name = f"kiln-test-basebuild-{marker}"
    engine.run("create", "--name", name, "--label", SESSION_LABEL, BASE_IMAGE, "/bin/true")
    try:
        engine.run("cp", "-", f"{name}:/", input=_tar({"etc/kiln-base-release": marker.encode()}))
        engine.run("commit", name, BASE_REF)
    finally:
        engine.remove_container(name)


def _tar(files: dict[str, bytes]) -> bytes:
    from controller.engine import tar_of

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
