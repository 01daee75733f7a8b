"""Whole bakes through the real local engine: podman, systemd, SSH, the agent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.machines import SESSION_LABEL
from tests.playbooks import REPO, image_repo, invoke, left_behind, make_playbooks

pytestmark = pytest.mark.slow


def labels_of(engine, ref: str) -> dict:
    inspected = engine.image_inspect(ref)
    return inspected.get("Labels") or inspected["Config"]["Labels"]


def test_bake_web_then_the_image_serves_on_its_own(engine, tmp_path):
    """The README's main job: web baked, verified, tagged; a fresh container of it serves HTTP 200."""
    proc = invoke(tmp_path, "bake", "--role", "web", playbooks=REPO / "playbooks")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not left_behind(engine, proc.stderr), "the build container was left behind"

    entries = json.loads((tmp_path / "builds" / "manifest.json").read_text())
    entry = entries[-1]
    version = entry["version"]
    assert entry["role"] == "web" and entry["provider"] == "local"
    assert entry["steps"]["changed"] > 0 and entry["steps"]["failed"] == 0
    ref = f"{image_repo('web')}:{version}"
    labels = labels_of(engine, ref)
    assert labels["kiln.role"] == "web" and labels["kiln.version"] == version
    assert labels["kiln.inputs-hash"] == entry["inputs_hash"]
    assert labels["org.opencontainers.image.version"] == version
    assert engine.image_id(f"{image_repo('web')}:latest") == engine.image_id(ref)
    inventory = json.loads((tmp_path / "builds" / "packages" / "web" / f"{version}.json").read_text())
    assert inventory.get("nginx-light"), "the package inventory names what the bake installed"
    artifact = (tmp_path / "builds" / "packages" / "web" / f"{version}.json").read_bytes()
    assert labels["kiln.packages-sha256"] == hashlib.sha256(artifact).hexdigest()

    listing = invoke(tmp_path, "images", "--role", "web")
    assert version in listing.stdout and "latest" in listing.stdout

    # The image on its own: a new container (not the build one), nginx enabled at boot.
    port = _free_port()
    name = f"kiln-test-serve-{version.replace('.', '-')}"
    engine.run(
        "run",
        "-d",
        "--name",
        name,
        "--label",
        SESSION_LABEL,
        "--systemd",
        "always",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "-p",
        f"127.0.0.1:{port}:80",
        ref,
        "/sbin/init",
    )
    try:
        body = _get_with_retry(f"http://127.0.0.1:{port}/", timeout=60)
        assert "kiln web" in body and version in body
        # hygiene: a fresh identity per copy, none of the bake's access
        keys = engine.exec(name, "sh", "-c", "cat /root/.ssh/authorized_keys 2>/dev/null; echo END").strip()
        assert "kiln-build-" not in keys
        assert engine.exec(name, "sh", "-c", "test -e /var/lib/kiln && echo yes || echo no").strip() == "no"
    finally:
        engine.remove_container(name)


def test_failing_check_exits_1_no_tag_nothing_left(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": '- name: marker\n  copy: {content: "hello\\n", dest: /etc/kiln-marker}\n',
            "verify.yml": '- file: /etc/kiln-marker\n  contains: ["goodbye"]\n',
        },
    )
    proc = invoke(tmp_path, "bake", "--role", "tiny", playbooks=playbooks)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "check(s) failed" in proc.stderr and "goodbye" in proc.stderr
    assert not left_behind(engine, proc.stderr)
    assert not engine.images(image_repo("tiny")), "a failed bake must not leave an image"
    reserved = tmp_path / "state" / "versions" / "tiny"
    assert reserved.is_dir(), "the bake reserved its version in KILN_STATE_DIR"
    assert not any(reserved.iterdir()), "the version reservation must be released"


def test_failing_step_names_it_and_keep_on_error_keeps_the_machine(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": '- name: breaks\n  shell: {cmd: "echo doomed >&2; exit 3"}\n',
        },
    )
    proc = invoke(tmp_path, "bake", "--role", "tiny", playbooks=playbooks)
    assert proc.returncode == 1
    assert "breaks" in proc.stderr and "doomed" in proc.stderr
    assert not left_behind(engine, proc.stderr)

    kept = invoke(tmp_path, "bake", "--role", "tiny", "--keep-on-error", playbooks=playbooks)
    assert kept.returncode == 1
    left = left_behind(engine, kept.stderr)
    try:
        assert len(left) == 1 and "ssh -i" in kept.stderr
    finally:
        for cid in left:
            engine.remove_container(cid)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_apply_leaves_nothing(engine, tmp_path, signum):
    make_playbooks(
        tmp_path,
        {
            "steps.yml": "- name: slow\n  command: {cmd: sleep 60}\n",
        },
    )
    env = dict(os.environ, KILN_JSON="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", "tiny"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        seen.append(line)
        if '"stage": "apply steps"' in line and '"event": "stage"' in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    time.sleep(1.0)
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, "".join(seen) + rest
    assert "interrupted" in rest
    assert not left_behind(engine, "".join(seen) + rest)
    assert not engine.images(image_repo("tiny"))


def test_malformed_steps_exit_2_and_launch_nothing(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": "- name: typo\n  fiel: {path: /x}\n- name: octal\n  file: {path: /etc/x, mode: 644}\n",
        },
        role="malformed",
    )
    proc = invoke(tmp_path, "bake", "--role", "malformed", playbooks=playbooks)
    assert proc.returncode == 2
    out = proc.stdout
    assert "steps.yml:2:3" in out and "fiel" in out, out
    assert "steps.yml:4:" in out and "mode" in out, out
    assert "kiln: baking" not in proc.stderr and "==> launch" not in proc.stderr, "nothing may be launched"
    assert not engine.containers("kiln.role=malformed")


def _free_port() -> int:
    from kiln.controller.providers.local import free_port

    return free_port()


def _get_with_retry(url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return resp.read().decode()
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s: {last}")


STAGES = [
    "resolve base image",
    "launch instance",
    "connect",
    "push agent and bundle",
    "apply steps",
    "idempotence check",
    "verify",
    "clean machine",
    "snapshot",
    "publish",
]


@pytest.mark.parametrize("stage", STAGES)
def test_sigint_at_each_stage_leaves_nothing_half_done(engine, tmp_path, stage):
    """Whatever the moment: no build container remains, and either a whole image is published or none."""
    role = "interrupted"
    make_playbooks(
        tmp_path,
        {
            "steps.yml": '- name: marker\n  copy: {content: "x\\n", dest: /etc/kiln-marker}\n',
            "verify.yml": "- file: /etc/kiln-marker\n",
        },
        role=role,
    )
    repo = image_repo(role)
    before = {row["Id"] for row in engine.images(repo)}
    latest_before = engine.image_id(f"{repo}:latest") if engine.image_exists(f"{repo}:latest") else None
    env = dict(os.environ, KILN_JSON="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", role],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if f'"stage": "{stage}"' in line and '"event": "stage"' in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    output = "".join(seen) + rest
    assert "Traceback" not in output, output[-3000:]
    assert not left_behind(engine, output), "a build container was left behind"
    after = {row["Id"] for row in engine.images(repo)} - before
    latest_after = engine.image_id(f"{repo}:latest") if engine.image_exists(f"{repo}:latest") else None
    try:
        if code == 0:  # only once publishing has begun may the signal come too late: then the bake is whole
            assert stage == "publish", f"a SIGINT at '{stage}' did not interrupt the bake"
            assert len(after) == 1 and latest_after in after
        else:
            assert code == 1 and "interrupted" in rest, output[-2000:]
            assert not after, "an interrupted bake must not leave an image"
            assert latest_after == latest_before, "latest must not move on an interrupted bake"
    finally:
        for image_id in after:
            engine.remove_image(image_id)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--var", "facts=1"], "--var:1:1: error: 'facts' is reserved"),
        (["--var", "novalue"], "expected NAME=VALUE, got 'novalue'"),
        (["--provider", "gcp"], "unknown provider 'gcp'"),
        (["--role", "nosuch"], "no role 'nosuch'"),
    ],
)
def test_bad_command_line_is_invalid_input(tmp_path, args, message):
    make_playbooks(tmp_path, {"steps.yml": "- file: {path: /tmp, state: directory}\n"}, role="cli")
    argv = ["bake", "--role", "cli", *args] if "--role" not in args else ["bake", *args]
    proc = invoke(tmp_path, *argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout and "nothing was launched" in proc.stdout
    assert "Traceback" not in proc.stderr and "==> launch" not in proc.stderr


def _recording_engine(tmp_path):
    """The real engine behind a script that writes down each command it is given (one line each)."""
    from kiln.controller.engine import Engine

    real = Engine()
    calls = tmp_path / "engine-calls"
    script = tmp_path / "engine"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexec {real.command} "$@"\n')
    script.chmod(0o755)
    return Engine(command=str(script), runtime=real.runtime), calls


def _role_image(engine, container: str, repo: str, role: str, version: str) -> str:
    """An image of ``role`` at ``version``, as a bake's commit labels it (kiln.role, kiln.version)."""
    changes = ["--change", f"LABEL kiln.role={role}", "--change", f"LABEL kiln.version={version}"]
    return engine.run("commit", *changes, container, f"{repo}:{version}").strip()


def _published_versions(engine, repo: str) -> set[str]:
    return {name.rsplit(":", 1)[1] for row in engine.images(repo) for name in row.get("Names") or []}


def test_publish_then_retire_list_the_images_once(engine, tmp_path):
    """Publish and the retire after it: one listing of the role's images (publish's, under its lock), one tag, and
    one engine call per retired version; retire keeps the newest versions and latest's."""
    from kiln.controller.model import Image, PublishSpec
    from kiln.controller.providers.local import LocalProvider

    recording, calls = _recording_engine(tmp_path)
    provider = LocalProvider(engine=recording)
    role = "retiring"
    repo = provider.repo(role)
    holder = engine.run("create", "--label", SESSION_LABEL, "localhost/kiln-base/debian:bookworm", "true").strip()
    try:
        versions = [f"20200101.{n}" for n in range(1, 5)]
        ids = {version: _role_image(engine, holder, repo, role, version) for version in versions}
        engine.tag(f"{repo}:20200101.3", f"{repo}:latest")
        new = Image(id=ids["20200101.4"], role=role, version="20200101.4", provider="local", name=f"{repo}:20200101.4")
        calls.write_text("")
        provider.publish(PublishSpec(role, "20200101.4", "b-retiring", [new]), on_started=lambda _: None)
        retired = provider.retire(role, keep=2)
        commands = calls.read_text().splitlines()
        assert [i.version for i in retired] == ["20200101.2", "20200101.1"]
        assert _published_versions(engine, repo) == {"20200101.4", "20200101.3", "latest"}
        assert engine.image_id(f"{repo}:latest") == ids["20200101.4"]
        assert [c.split()[0] for c in commands if c.split()[0] in ("images", "image")] == ["images"], commands
        assert len(commands) == 1 + 1 + len(retired), commands  # the listing, the tag, one rmi per version
    finally:
        engine.run("rm", "-f", holder, check=False)
        for row in engine.images(repo):
            engine.remove_image(row["Id"])


def test_the_images_listed_while_the_image_is_tested_answer_publish(engine, tmp_path):
    """The snapshot stage has the role's images listed in a thread (during the test stage's engine time); publish
    decides from that listing under its lock, with no listing of its own: its one engine call is the tag, then one
    rmi per retired version."""
    from kiln.controller.model import Image, PublishSpec
    from kiln.controller.providers.local import LocalProvider

    recording, calls = _recording_engine(tmp_path)
    provider = LocalProvider(engine=recording)
    role = f"early-listed-{os.getpid()}"
    repo = provider.repo(role)
    holder = engine.run("create", "--label", SESSION_LABEL, "localhost/kiln-base/debian:bookworm", "true").strip()
    try:
        ids = {v: _role_image(engine, holder, repo, role, v) for v in (f"20200101.{n}" for n in range(1, 5))}
        engine.tag(f"{repo}:20200101.3", f"{repo}:latest")
        new = Image(id=ids["20200101.4"], role=role, version="20200101.4", provider="local", name=f"{repo}:20200101.4")
        provider.list_before_publish(role).thread.join(120)
        calls.write_text("")
        provider.publish(PublishSpec(role, "20200101.4", "b-early", [new]), on_started=lambda _: None)
        retired = provider.retire(role, keep=2)
        commands = calls.read_text().splitlines()
        assert commands[0] == f"tag {repo}:20200101.4 {repo}:latest", commands
        assert [c.split()[0] for c in commands] == ["tag"] + ["rmi"] * len(retired), commands
        assert [i.version for i in retired] == ["20200101.2", "20200101.1"]
        assert engine.image_id(f"{repo}:latest") == ids["20200101.4"]
    finally:
        engine.run("rm", "-f", holder, check=False)
        for row in engine.images(repo):
            engine.remove_image(row["Id"])


def test_latest_moved_after_the_early_listing_is_listed_again_and_never_moved_back(engine, tmp_path):
    """Another bake published a newer version between the early listing and this publish: the listing no longer says
    what latest names, so publish lists again under its lock, and latest stays at the newer version."""
    from kiln.controller.model import Image, PublishSpec
    from kiln.controller.providers.local import LocalProvider

    recording, calls = _recording_engine(tmp_path)
    mine, other = LocalProvider(engine=recording), LocalProvider(engine=engine)
    role = f"early-stale-{os.getpid()}"
    repo = mine.repo(role)
    holder = engine.run("create", "--label", SESSION_LABEL, "localhost/kiln-base/debian:bookworm", "true").strip()

    def image(version: str) -> Image:
        return Image(id=ids[version], role=role, version=version, provider="local", name=f"{repo}:{version}")

    try:
        ids = {v: _role_image(engine, holder, repo, role, v) for v in ("20200101.3", "20200101.4", "20200101.5")}
        engine.tag(f"{repo}:20200101.3", f"{repo}:latest")
        mine.list_before_publish(role).thread.join(120)
        other.publish(PublishSpec(role, "20200101.5", "b-other", [image("20200101.5")]), on_started=lambda _: None)
        calls.write_text("")
        mine.publish(PublishSpec(role, "20200101.4", "b-mine", [image("20200101.4")]), on_started=lambda _: None)
        assert engine.image_id(f"{repo}:latest") == ids["20200101.5"], "latest moved back to an older version"
        assert [c.split()[0] for c in calls.read_text().splitlines()] == ["images"]
    finally:
        engine.run("rm", "-f", holder, check=False)
        for row in engine.images(repo):
            engine.remove_image(row["Id"])


def test_retire_leaves_a_version_in_use_tagged(engine, tmp_path):
    """A version a container still runs from cannot be removed: it keeps its name (listed, retired by a later bake),
    never left as an untagged image nobody can name."""
    from kiln.controller.providers.local import LocalProvider

    provider = LocalProvider(engine=engine)
    role = "retire-in-use"
    repo = provider.repo(role)
    holder = engine.run("create", "--label", SESSION_LABEL, "localhost/kiln-base/debian:bookworm", "true").strip()
    user = ""
    try:
        ids = {v: _role_image(engine, holder, repo, role, v) for v in ("20200101.1", "20200101.2", "20200101.3")}
        engine.tag(f"{repo}:20200101.3", f"{repo}:latest")
        user = engine.run("create", "--label", SESSION_LABEL, f"{repo}:20200101.1", "true").strip()
        retired = provider.retire(role, keep=1)
        assert [i.version for i in retired] == ["20200101.2", "20200101.1"]
        assert _published_versions(engine, repo) == {"20200101.3", "20200101.1", "latest"}
        assert [i.version for i in provider.images(role)] == ["20200101.3", "20200101.1"]
        assert engine.image_id(f"{repo}:20200101.1") == ids["20200101.1"]
    finally:
        for container in (user, holder):
            if container:
                engine.run("rm", "-f", container, check=False)
        for row in engine.images(repo):
            engine.remove_image(row["Id"])


def test_the_apply_s_run_reports_what_it_set_for_the_image_s_checks(engine, tmp_path):
    """What the apply set reaches the test machine's checks without a command of its own on the build machine:
    the apply's run reports it with the package inventory. The build machine runs 2 commands over SSH (the apply
    and the hygiene script; reading run-vars.json was a third)."""
    from kiln.controller.bake import bake
    from kiln.controller.context import BakeOptions

    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": (
                "- name: the app's name\n  command: echo kilnapp\n  register: app_name\n  changed_when: false\n"
                '- name: the config\n  copy: {dest: "/etc/{{ app_name.stdout }}.conf", content: "x\\n"}\n'
            ),
            "verify.yml": '- file: "/etc/{{ app_name.stdout }}.conf"\n',
        },
        role="setvars",
    )
    options = BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks)
    try:
        result = bake("setvars", "local", options)
        assert result.exit_code == 0, result.error
        ctx = result.ctx
        assert ctx.checks.get("image_passed") == 1, ctx.checks
        assert b'"stdout": "kilnapp"' in ctx.run_variables, ctx.run_variables[:300]
        assert ctx.session.round_trips == 2, f"{ctx.session.round_trips} commands over SSH on the build machine"
    finally:
        for row in engine.images(image_repo("setvars")):
            engine.remove_image(row["Id"])


def test_the_base_asked_about_while_the_role_compiles_answers_the_resolve_stage(engine, tmp_path):
    """A local bake asks the engine about kiln's base in the background before compiling; the resolve stage takes
    that answer (once) and makes no engine call of its own. A later resolve asks the engine again."""
    from kiln.controller.engine import BASE_IMAGE
    from kiln.controller.providers.local import LocalProvider, prefetch_kiln_base

    recording, calls = _recording_engine(tmp_path)
    settings = {"engine": recording.command, "runtime": recording.runtime or "auto"}
    prefetch_kiln_base(settings).thread.join(120)
    asked = calls.read_text().splitlines()
    assert asked == [f"image inspect {BASE_IMAGE}"], asked
    provider = LocalProvider(settings=settings)
    base = provider.resolve_base(None)
    assert calls.read_text().splitlines() == asked, "the resolve stage asked the engine again"
    assert base.id == engine.image_id(BASE_IMAGE) and base.name == BASE_IMAGE
    assert provider.resolve_base(None).id == base.id
    assert calls.read_text().splitlines() == asked * 2, "a prefetch answers one resolve only"


def _claim(build_id: str):
    import datetime as dt

    from kiln.controller.ownership import BuildClaim

    return BuildClaim.for_build(build_id, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))


def test_the_versions_read_while_the_role_compiles_answer_the_allocate_stage(engine, tmp_path):
    """A local bake reads its role's reservations, then its images, in the background before compiling; the allocate
    stage takes them (once) and makes no engine call of its own, and still writes its build record before it
    returns. A later allocation reads again."""
    from kiln.controller.providers.local import LocalProvider, prefetch_versions, read_record
    from kiln.controller.versions import today

    recording, calls = _recording_engine(tmp_path)
    settings = {"engine": recording.command, "runtime": recording.runtime or "auto"}
    role = f"prefetched-{os.getpid()}-{time.monotonic_ns()}"
    provider = LocalProvider(settings=settings)
    prefetch_versions(settings, role).thread.join(120)
    asked = calls.read_text().splitlines()
    assert asked == [f"images --format json --filter reference={provider.repo(role)}"], asked
    assert not provider.reservations_folder(role).exists(), "reading created the reservations folder"
    version = provider.allocate_version(role, _claim("b-prefetched"))
    assert calls.read_text().splitlines() == asked, "the allocate stage asked the engine again"
    assert version == f"{today()}.1"
    record = read_record(provider.reservations_folder(role) / version)
    assert record is not None and record["claim"].build_id == "b-prefetched"
    assert provider.allocate_version(role, _claim("b-later")) == f"{today()}.2"
    assert calls.read_text().splitlines() == asked * 2, "a prefetch answers one allocation only"


def test_versions_read_before_another_bake_reserved_and_published_are_read_again(engine, tmp_path):
    """Between the background read and the allocate stage another bake reserved the next version, made its image and
    gave the reservation back (published): the reservations look as they did, but the version is taken. The stage
    sees the folder changed, reads again (reservations, then images) and takes the next one."""
    from kiln.controller.providers.local import LocalProvider, prefetch_versions
    from kiln.controller.versions import today

    recording, calls = _recording_engine(tmp_path)
    settings = {"engine": recording.command, "runtime": recording.runtime or "auto"}
    role = f"prefetch-stale-{os.getpid()}-{time.monotonic_ns()}"
    mine, other = LocalProvider(settings=settings), LocalProvider(engine=engine)
    repo = mine.repo(role)
    holder = engine.run("create", "--label", SESSION_LABEL, "localhost/kiln-base/debian:bookworm", "true").strip()
    mine.reservations_folder(role).mkdir(parents=True)  # as any earlier bake of the role leaves it
    try:
        prefetch_versions(settings, role).thread.join(120)
        taken = other.allocate_version(role, _claim("b-other"))
        _role_image(engine, holder, repo, role, taken)
        other.release_version(role, taken)
        assert sorted(os.listdir(mine.reservations_folder(role))) == [], "the other bake's reservation is given back"
        calls.write_text("")
        version = mine.allocate_version(role, _claim("b-mine"))
        assert (taken, version) == (f"{today()}.1", f"{today()}.2")
        assert calls.read_text().splitlines() == [f"images --format json --filter reference={repo}"]
    finally:
        engine.run("rm", "-f", holder, check=False)
        for row in engine.images(repo):
            engine.remove_image(row["Id"])


def test_background_reads_that_failed_or_went_stale_are_not_used_and_the_stage_reads_again(engine, tmp_path):
    """An engine that fails the background reads (the base's inspect, the role's versions): the stages do not take a
    missing answer for one (no base, no versions), they ask the engine again and get its real answer. A read older
    than its bound is asked again too."""
    from kiln.controller.engine import BASE_IMAGE, Engine
    from kiln.controller.providers import local
    from kiln.controller.versions import today

    real, calls = Engine(), tmp_path / "engine-calls"
    failing = tmp_path / "engine"  # the real engine, once healed; each command written down (one line each)
    failing.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n[ -e {tmp_path}/heal ] || exit 125\nexec {real.command} "$@"\n'
    )
    failing.chmod(0o755)
    settings = {"engine": str(failing), "runtime": real.runtime or "auto"}
    role = f"prefetch-failed-{os.getpid()}-{time.monotonic_ns()}"
    base_read = local.prefetch_kiln_base(settings)
    versions_read = local.prefetch_versions(settings, role)
    base_read.thread.join(120)
    versions_read.thread.join(120)
    assert not base_read.answered() and not versions_read.answered(), "a failed read counts as an answer"
    (tmp_path / "heal").touch()
    provider = local.LocalProvider(settings=settings)
    assert provider.resolve_base(None).id == engine.image_id(BASE_IMAGE)
    assert provider.allocate_version(role, _claim("b-after-a-failed-read")) == f"{today()}.1"
    asked = calls.read_text().splitlines()
    assert (
        asked.count(f"image inspect {BASE_IMAGE}") == 2
        and asked.count(f"images --format json --filter reference={provider.repo(role)}") == 2
    ), asked

    stale = local.prefetch_kiln_base(settings)
    stale.thread.join(120)
    assert stale.answered()
    stale.started -= local.PREFETCH_FRESH_SECONDS
    assert not stale.answered(), "an answer older than its bound is still used"
    provider.release_version(role, f"{today()}.1")


def test_a_bake_lists_the_role_s_images_outside_its_allocate_and_publish_stages(engine, tmp_path):
    """The whole command: the role's versions are read while it compiles and its images listed while the new image is
    tested, so neither the allocate nor the publish stage waits for an engine listing (each was one, ~50 ms)."""
    import datetime as dt
    import shutil

    calls = tmp_path / "engine-calls"
    wrapper = tmp_path / "bin" / "podman"  # named podman: the engine adds its runtime flag as for the real one
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s %s\\n" "$(date +%s.%N)" "$*" >> {calls}\nexec {shutil.which("podman")} "$@"\n'
    )
    wrapper.chmod(0o755)
    role = "listed"
    playbooks = make_playbooks(
        tmp_path,
        {"steps.yml": '- name: marker\n  copy: {content: "x\\n", dest: /etc/m}\n', "verify.yml": "- file: /etc/m\n"},
        role,
    )
    try:
        proc = invoke(
            tmp_path, "bake", "--role", role, "--json", playbooks=playbooks, env={"KILN_ENGINE": str(wrapper)}
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    finally:
        for row in engine.images(image_repo(role)):
            engine.remove_image(row["Id"])
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]

    def at(event: dict) -> float:
        return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()

    spans = {}
    for event in events:
        if event.get("event") in ("stage", "stage done"):
            spans.setdefault(event["stage"], []).append(at(event))
    listings = [float(line.split()[0]) for line in calls.read_text().splitlines() if " images " in f" {line} "]
    assert len(listings) == 2, calls.read_text()
    for stage in ("allocate version", "publish"):
        began, ended = spans[stage]
        assert not [t for t in listings if began <= t <= ended], f"the {stage} stage listed the role's images"


def test_the_agent_s_payloads_are_made_while_the_machines_boot(engine, tmp_path):
    """The build and the test machine's payloads (the agent, its byte code, the bundle or the checks) need no
    machine: each is made while its machine boots, not after the SSH connection."""
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": '- name: marker\n  copy: {content: "x\\n", dest: /etc/kiln-marker, mode: "0644"}\n',
            "verify.yml": "- file: /etc/kiln-marker\n",
        },
        role="booting",
    )
    try:
        proc = invoke(tmp_path, "bake", "--role", "booting", "--json", playbooks=playbooks)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
        staged = next(e for e in events if e["event"] == "staged")
        tested = next(e for e in events if e["event"] == "image tested")
        assert staged["made"] == "while the machine booted", staged
        assert tested["payload_made"] == "while the machine booted", tested
    finally:
        for row in engine.images(image_repo("booting")):
            engine.remove_image(row["Id"])


def test_the_ssh_wait_looks_again_within_a_quarter_second():
    """A booting machine's sshd is tried again after at most 0.25 s (a refused attempt costs next to nothing):
    the connection follows sshd's start closely (the pauses grew to 3 s: a local machine that answered at 0.6 s
    was reached at ~0.95 s)."""
    from itertools import islice

    from kiln.controller.ssh import retry_pauses

    pauses = list(islice(retry_pauses(), 40))
    assert pauses[0] <= 0.05 and max(pauses) <= 0.25, pauses
    assert pauses == sorted(pauses), "the pauses only grow"


def test_removing_a_machine_is_one_engine_call_and_a_paused_one_goes_too(engine, tmp_path):
    """A container the engine removes costs one call (no status look after it); a paused one, which the engine
    may refuse, is unpaused and removed."""
    recording, calls = _recording_engine(tmp_path)
    image = "localhost/kiln-base/debian:bookworm"
    plain = engine.run("create", "--label", SESSION_LABEL, image, "true").strip()
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
    paused = engine.run("run", "-d", "--label", SESSION_LABEL, *limits, image, "sleep", "300").strip()
    try:
        engine.run("pause", paused)
        calls.write_text("")
        recording.remove_container(plain)
        assert len(calls.read_text().splitlines()) == 1, calls.read_text()
        recording.remove_container(paused)
        assert not engine.container_exists(plain) and not engine.container_exists(paused)
    finally:
        for container in (plain, paused):
            engine.run("unpause", container, check=False)
            engine.run("rm", "-f", container, check=False)


def test_the_local_clean_stage_leaves_the_host_s_disks_alone():
    """A ``sync`` in a container flushes every disk of the host (other work's writes too): the local provider's
    commit reads the files through the same kernel and needs none. A cloud machine's disks are still flushed."""
    from kiln.controller.providers.aws import make_aws_provider
    from kiln.controller.providers.local import LocalProvider
    from kiln.controller.stages.clean_machine import hygiene_script

    local = hygiene_script(LocalProvider(), "b-1").splitlines()
    cloud = hygiene_script(make_aws_provider({"regions": ["us-east-1"]}), "b-1").splitlines()
    assert "sync" not in local and "rm -rf /var/lib/kiln" in local
    assert "sync" in cloud


def test_the_build_machine_goes_while_the_image_is_tested(engine, tmp_path):
    """Once the snapshot is made the build machine serves nothing: its removal begins with the test stage, in the
    background, while the test machine starts (the bake no longer waits for it at the end), and nothing is left."""
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": '- name: marker\n  copy: {content: "x\\n", dest: /etc/kiln-marker, mode: "0644"}\n',
            "verify.yml": "- file: /etc/kiln-marker\n",
        },
        role="early",
    )
    try:
        proc = invoke(tmp_path, "bake", "--role", "early", "--json", playbooks=playbooks)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
        order = [e["event"] if e["event"] != "stage" else f"stage {e['stage']}" for e in events]
        removing = order.index("removing the build machine while the image is tested and published")
        assert order.index("stage test image") < removing < order.index("test machine"), order
        assert not left_behind(engine, proc.stderr)
        assert not engine.containers("kiln.role=early")
    finally:
        for row in engine.images(image_repo("early")):
            engine.remove_image(row["Id"])
