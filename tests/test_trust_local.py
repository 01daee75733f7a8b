"""The local provider removes, ships and publishes only what is its own: through crashes, races, interrupts.

Real podman, real SSH, real bakes. A bake is "crashed" by kill -9 of its process group; to stop one at an
exact point, ``DRIVER`` runs kiln's own stages up to a stage and then holds (a test stage appended to the
chain, nothing of kiln replaced) until it is killed or told to go on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.controller.engine import BASE_IMAGE
from tests.machines import SESSION, SESSION_LABEL, TEST_LABEL
from tests.playbooks import REPO, build_ids, image_repo, invoke, make_playbooks

pytestmark = pytest.mark.slow

MARKER_STEPS = '- name: marker\n  copy: {content: "x\\n", dest: /etc/kiln-marker}\n'

#: Runs kiln's stages up to one (argv[2]), then holds: until killed, or until the file argv[3] exists.
DRIVER = r"""
import sys, time
from pathlib import Path
from kiln.controller import log
from kiln.controller.bake import compile_for_bake, make_provider, new_build_id, stages_for, with_build_settings
from kiln.controller.config import load_config
from kiln.controller.context import BakeContext, BakeOptions
from kiln.controller.pipeline import run_stages

role, upto, gate = sys.argv[1], sys.argv[2], Path(sys.argv[3])
log.configure(json_output=True)  # log lines on stderr; stdout says where the bake holds

class Hold:
    name = "hold (test)"
    def run(self, ctx):
        print("HOLD", ctx.build_id, ctx.version, ctx.instance.id if ctx.instance else "-", flush=True)
        deadline = time.monotonic() + 600
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    def undo(self, ctx):
        pass

options = BakeOptions(playbooks_dir=Path("playbooks"), builds_dir=Path("builds"))
config = load_config(options.playbooks_dir / "kiln.yaml")
options = with_build_settings(options, config)
compiled = compile_for_bake(role, "local", config, options, {}, None, None)
provider = make_provider("local", config, options.builds_dir)
ctx = BakeContext(role=role, compiled=compiled, provider=provider, options=options, build_id=new_build_id())
stages = stages_for(options, config.retention)
at = [s.name for s in stages].index(upto) + 1
run_stages(stages[:at] + [Hold()] + stages[at:], ctx)
print("DONE", ctx.version, flush=True)
"""


class Held:
    """A bake held by ``DRIVER`` after a stage: its build id, version and machine, and its process."""

    def __init__(self, cwd: Path, role: str, upto: str) -> None:
        self.gate = cwd / f"go-{upto.replace(' ', '-')}-{time.monotonic_ns()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, role, upto, str(self.gate)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "KILN_STATE_DIR": str(cwd / "state"), "KILN_JSON": "1"},
            start_new_session=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("HOLD"):
            self.proc.kill()
            raise AssertionError(f"the bake did not reach {upto}: {line}{self.proc.stderr.read()[-3000:]}")
        _, self.build_id, self.version, self.container = line.split()

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def go_on(self) -> subprocess.CompletedProcess:
        self.gate.touch()
        out, err = self.proc.communicate(timeout=600)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)


def leftovers(engine, cwd: Path, role: str, build_id: str, version: str = "") -> list[str]:
    """Everything of ``build_id`` that still exists: its machine, its images, its version reservation."""
    found = [f"container {row['Names'][0]}" for row in engine.containers(f"kiln.build-id={build_id}")]
    found += [
        f"image {row['Id'][:12]}"
        for row in engine.images(image_repo(role))
        if (row.get("Labels") or {}).get("kiln.build-id") == build_id
    ]
    reserved = cwd / "state" / "versions" / role
    for path in reserved.iterdir() if reserved.is_dir() else []:
        if path.name == version or build_id in path.read_text():
            found.append(f"reservation {path.name}")
    return found


def labels_of(engine, ref: str) -> dict[str, str]:
    inspected = engine.image_inspect(ref)
    return inspected.get("Labels") or inspected["Config"]["Labels"]


def sweep_apply(cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = invoke(cwd, "sweep", "--apply")
    return proc, time.monotonic() - started


def remove_role_images(engine, role: str) -> None:
    for row in engine.images(image_repo(role)):
        engine.remove_image(row["Id"])


# --- 1 and 8: what an image carries ------------------------------------------------------------------

HOSTKEY_STEPS = """\
- name: the build machine's host keys, written into the image for the test to compare
  shell:
    cmd: "for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $f; done > /etc/kiln-build-hostkeys"
    creates: /etc/kiln-build-hostkeys
"""


@pytest.fixture(scope="module")
def baked(engine, tmp_path_factory):
    """One tiny image whose temporaries expire after about a second (build.deadline_hours)."""
    cwd = tmp_path_factory.mktemp("baked")
    role = f"marks-{SESSION}"
    make_playbooks(
        cwd,
        {"steps.yml": HOSTKEY_STEPS},
        role=role,
        kiln_yaml="retention:\n  keep: 3\nbuild:\n  deadline_hours: 0.0003\n",
    )
    proc = invoke(cwd, "bake", "--role", role)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    yield cwd, role, json.loads((cwd / "builds" / "manifest.json").read_text())[-1]["image_name"]
    remove_role_images(engine, role)


def start_workload(engine, ref: str, name: str) -> None:
    engine.run(
        "run",
        "-d",
        "--name",
        name,
        "--label",
        SESSION_LABEL,
        "--label",
        "app=shop",
        "--systemd",
        "always",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        ref,
        "/sbin/init",
    )


def test_images_carry_no_temporary_marks_and_their_workloads_survive_sweep(engine, baked):
    cwd, role, ref = baked
    labels = labels_of(engine, ref)
    assert labels["kiln.role"] == role, labels
    assert "kiln.temporary" not in labels and "kiln.expires" not in labels, labels
    name = f"kiln-test-workload-{SESSION}"
    start_workload(engine, ref, name)
    try:
        time.sleep(2)  # past the bake's deadline (0.0003 h)
        swept = invoke(cwd, "sweep", "--apply")
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert engine.container_exists(name), f"sweep removed a workload: {swept.stdout}"
        assert name not in swept.stdout
    finally:
        engine.remove_container(name)


def test_each_copy_gets_every_stock_host_key_of_its_own(engine, baked):
    _, _, ref = baked
    in_image = engine.run(
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--entrypoint",
        "sh",
        ref,
        "-c",
        "ls /etc/ssh/ | grep ssh_host_ || true; cat /etc/kiln-build-hostkeys",
    )
    build_keys = [line for line in in_image.splitlines() if "SHA256:" in line]
    assert not [line for line in in_image.splitlines() if line.startswith("ssh_host_")], "the image holds host keys"
    assert {line.rsplit("(", 1)[1] for line in build_keys} == {"ED25519)", "RSA)", "ECDSA)"}, in_image
    build_fingerprints = {line.split()[1] for line in build_keys}
    copies = {}
    for n in (1, 2):
        name = f"kiln-test-hostkeys-{n}-{SESSION}"
        start_workload(engine, ref, name)
        try:
            copies[name] = wait_for_host_keys(engine, name)
        finally:
            engine.remove_container(name)
    for name, keys in copies.items():
        assert set(keys) == {"ED25519", "RSA", "ECDSA"}, (name, keys)
        assert not set(keys.values()) & build_fingerprints, "a copy kept the build machine's host key"
    first, second = copies.values()
    assert not set(first.values()) & set(second.values()), "two copies share a host key"


def wait_for_host_keys(engine, name: str, timeout: float = 60) -> dict[str, str]:
    """key type -> fingerprint, once ssh.service is up (the host-key unit runs before it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.exec(name, "systemctl", "is-active", "ssh", check=False).strip() == "active":
            break
        time.sleep(0.3)
    out = engine.exec(name, "sh", "-c", "for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $f; done")
    return {line.rsplit("(", 1)[1].rstrip(")"): line.split()[1] for line in out.splitlines() if "(" in line}


# --- 4: what sweep removes, and what it never touches ------------------------------------------------


def test_sweep_leaves_sandbox_containers_and_unrecorded_machines_alone(engine, tmp_path):
    """The AWS sandbox's containers (labelled temporary, expired) belong to moto instances that live on."""
    names = [f"kiln-sandbox-i-{SESSION}0001", f"kiln-build-nobody-{SESSION}"]
    for name in names:
        engine.create_machine(
            BASE_IMAGE,
            name,
            {
                "kiln.temporary": "true",
                "kiln.build-id": f"gone-{SESSION}",
                "kiln.expires": "2020-01-01T00:00:00+00:00",
                TEST_LABEL: SESSION,
            },
        )
    try:
        listed = invoke(tmp_path, "sweep")
        removed = invoke(tmp_path, "sweep", "--apply")
        assert listed.returncode == 0 and removed.returncode == 0, removed.stdout + removed.stderr
        for name in names:
            assert engine.container_exists(name), f"sweep removed {name}: {removed.stdout}"
        assert "nothing to sweep" in removed.stdout
    finally:
        for name in names:
            engine.remove_container(name)


@pytest.mark.parametrize("moment", ["after launch", "paused machine", "after snapshot"])
def test_sweep_removes_everything_of_a_killed_bake(engine, tmp_path, moment):
    role = f"crash-{SESSION}"
    make_playbooks(tmp_path, {"steps.yml": MARKER_STEPS}, role=role)
    upto = "snapshot" if moment == "after snapshot" else "connect"
    try:
        held = Held(tmp_path, role, upto)
        if moment == "paused machine":
            engine.run("pause", held.container)
        if moment == "after snapshot":
            assert engine.image_exists(f"{image_repo(role)}:{held.version}")
        held.kill9()
        left = leftovers(engine, tmp_path, role, held.build_id, held.version)
        assert any(x.startswith("container") for x in left), left
        assert any(x.startswith("reservation") for x in left), left

        dry = invoke(tmp_path, "sweep")
        assert dry.returncode == 0 and "dry run" in dry.stdout, dry.stdout + dry.stderr
        assert leftovers(engine, tmp_path, role, held.build_id, held.version) == left, "a dry run removes nothing"
        assert "is dead" in dry.stdout and held.build_id in dry.stdout, dry.stdout

        swept, seconds = sweep_apply(tmp_path)
        assert swept.returncode == 0, swept.stdout + swept.stderr
        print(f"sweep --apply after a kill -9 {moment}: {seconds:.2f} s for {len(left)} leftovers")
        assert leftovers(engine, tmp_path, role, held.build_id, held.version) == [], swept.stdout
        assert not engine.container_exists(held.container)

        images = invoke(tmp_path, "images", "--role", role)
        assert held.version not in images.stdout
    finally:
        remove_role_images(engine, role)


def test_sweep_after_a_kill_during_apply_then_the_next_bake_works(engine, tmp_path):
    role = f"crashapply-{SESSION}"
    make_playbooks(tmp_path, {"steps.yml": "- name: slow\n  command: {cmd: sleep 60}\n"}, role=role)
    env = {**os.environ, "KILN_JSON": "1", "KILN_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", role],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    build_id = ""
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        build_id = build_id or event.get("build_id", "")
        if event.get("event") == "stage" and event.get("stage") == "apply steps":
            break
        assert time.monotonic() < deadline
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        assert leftovers(engine, tmp_path, role, build_id), "the kill left nothing: nothing to prove"
        swept, seconds = sweep_apply(tmp_path)
        print(f"sweep --apply after a kill -9 during apply: {seconds:.2f} s")
        assert leftovers(engine, tmp_path, role, build_id) == [], swept.stdout
        (tmp_path / "playbooks" / "roles" / role / "steps.yml").write_text(MARKER_STEPS)
        again = invoke(tmp_path, "bake", "--role", role)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        remove_role_images(engine, role)


def test_keep_on_error_is_kept_until_its_deadline_and_destroy_removes_it(engine, tmp_path):
    role = f"kept-{SESSION}"
    make_playbooks(tmp_path, {"steps.yml": '- name: breaks\n  command: {cmd: "false"}\n'}, role=role)
    kept = invoke(tmp_path, "bake", "--role", role, "--keep-on-error")
    assert kept.returncode == 1
    build_id = build_ids(kept.stderr)[0]
    version = re.search(r"version=(\d{8}\.\d+)", kept.stderr).group(1)
    try:
        swept = invoke(tmp_path, "sweep", "--apply")  # the bake's process is gone, but it was kept on purpose
        assert swept.returncode == 0 and build_id not in swept.stdout, swept.stdout
        assert leftovers(engine, tmp_path, role, build_id, version), "the kept machine was swept before its deadline"
        gone = invoke(tmp_path, "destroy", "--build-id", build_id)
        assert gone.returncode == 0, gone.stderr
        assert leftovers(engine, tmp_path, role, build_id, version) == [], gone.stdout
    finally:
        for row in engine.containers(f"kiln.build-id={build_id}"):
            engine.remove_container(row["Id"])


# --- 4: the nightly lock -----------------------------------------------------------------------------

LOCK_HOLDER = r"""
import subprocess, sys, time
from kiln.controller.providers.local import LocalProvider
provider = LocalProvider()
lock = provider.acquire_lock(sys.argv[1], "nightly-test-holder", wait=False, ttl=float(sys.argv[2]))
assert lock
# a child that outlives us: the engine's conmon does; a lock it inherited would outlive us too
subprocess.Popen(["sleep", "30"], start_new_session=True)
print("LOCKED", flush=True)
time.sleep(600)
"""


def hold_lock(cwd: Path, role: str, ttl: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, role, str(ttl)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "KILN_STATE_DIR": str(cwd / "state")},
    )
    assert proc.stdout.readline().strip() == "LOCKED"
    return proc


def test_a_killed_nightly_lock_holder_is_taken_over_and_reported(engine, tmp_path):
    role = f"locked-{SESSION}"
    make_playbooks(tmp_path, {"steps.yml": MARKER_STEPS}, role=role)
    holder = hold_lock(tmp_path, role, ttl=4 * 3600)
    holder.kill()
    holder.wait()
    try:
        proc = invoke(tmp_path, "nightly", "--roles", role, env={"KILN_JSON": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(max((tmp_path / "builds").glob("nightly-*.json")).read_text())["roles"][0]
        assert report["result"] == "baked", report
        assert "took over the lock of nightly-test-holder" in report["reason"] and "dead" in report["reason"]
        assert "took over a stale lock" in proc.stderr
    finally:
        remove_role_images(engine, role)


def test_a_lock_held_past_its_ttl_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_STATE_DIR", str(tmp_path / "state"))
    from kiln.controller.providers.local import LocalProvider

    holder = hold_lock(tmp_path, "web", ttl=2)
    try:
        provider = LocalProvider()
        assert not provider.acquire_lock("web", "me", wait=False, ttl=60), "a live holder within its ttl keeps it"
        time.sleep(2.5)
        lock = provider.acquire_lock("web", "me", wait=False, ttl=60)
        assert lock, "a lock past its ttl must be taken over"
        assert "nightly-test-holder" in lock.took_over and "expired" in lock.took_over, lock
        provider.release_lock("web", "me")
        again = provider.acquire_lock("web", "me", wait=False)
        assert again and not again.took_over, "a released lock is no stale holder"
        provider.release_lock("web", "me")
    finally:
        holder.kill()
        holder.wait()


# --- 3: latest only moves forward --------------------------------------------------------------------


def test_an_older_bake_finishing_last_leaves_latest_at_the_newer_version(engine, tmp_path):
    role = f"race-{SESSION}"
    make_playbooks(tmp_path, {"steps.yml": MARKER_STEPS}, role=role)
    try:
        older = Held(tmp_path, role, "snapshot")  # reserved its version first; publishes last
        newer = invoke(tmp_path, "bake", "--role", role)
        assert newer.returncode == 0, newer.stderr[-3000:]
        repo = image_repo(role)
        newest = labels_of(engine, f"{repo}:latest")["kiln.version"]
        assert newest != older.version
        finished = older.go_on()
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert "latest stays at the newer version" in finished.stderr
        assert labels_of(engine, f"{repo}:latest")["kiln.version"] == newest, "latest moved backwards"
        assert engine.image_exists(f"{repo}:{older.version}"), "the older bake keeps its version"
    finally:
        if "older" in locals() and older.proc.poll() is None:
            older.kill9()
            invoke(tmp_path, "sweep", "--apply")
        remove_role_images(engine, role)


# --- 5: an interrupted snapshot owns its image ---------------------------------------------------------


def test_sigint_during_the_commit_leaves_no_image(engine, tmp_path):
    role = f"snapint-{SESSION}"
    # a few hundred MB make `podman commit` take seconds: the interrupt lands inside it
    make_playbooks(
        tmp_path,
        {
            "steps.yml": "- name: bulk\n  command:\n    cmd: dd if=/dev/urandom of=/opt/bulk"
            " bs=1M count=300\n    creates: /opt/bulk\n"
        },
        role=role,
    )
    env = {**os.environ, "KILN_JSON": "1", "KILN_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", role],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen, build_id = [], ""
    for line in proc.stderr:
        seen.append(line)
        event = json.loads(line) if line.startswith("{") else {}
        build_id = build_id or event.get("build_id", "")
        if event.get("event") == "stage" and event.get("stage") == "snapshot":
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    try:
        assert proc.wait(timeout=300) == 1, "".join(seen[-20:]) + rest
        assert "interrupted" in rest
        assert leftovers(engine, tmp_path, role, build_id) == [], rest[-3000:]
        listing = invoke(tmp_path, "images", "--role", role)
        assert listing.stdout.count("\n") == 1, listing.stdout  # the header only
    finally:
        remove_role_images(engine, role)


# --- 7: tests bake in their own namespace --------------------------------------------------------------


def test_a_real_bake_of_web_leaves_every_users_kiln_tag_as_it_was(engine, tmp_path):
    users = "localhost/kiln"
    dummy = ""
    if not engine.images(f"{users}/web"):
        dummy = f"{users}/web:kiln-test-dummy-{SESSION}"
        engine.tag(BASE_IMAGE, dummy)
    before = user_tags(engine, users)
    try:
        proc = invoke(tmp_path, "bake", "--role", "web", playbooks=REPO / "playbooks")
        assert proc.returncode == 0, proc.stderr[-3000:]
        after = user_tags(engine, users)
        # (other test sessions may add roles of their own meanwhile: compare what was there, and web)
        assert {tag: after.get(tag) for tag in before} == before, "a test bake changed the user's images"
        assert {t for t in after if t.startswith(f"{users}/web:")} == {t for t in before if "/web:" in t}
        assert engine.images(image_repo("web")), "the test bake went to its own namespace"
    finally:
        if dummy:
            engine.untag(dummy)


def user_tags(engine, prefix: str) -> dict[str, str]:
    return {
        name: row["Id"]
        for row in engine.images(f"{prefix}/*")
        for name in row.get("Names") or []
        if name.startswith(f"{prefix}/")
    }
