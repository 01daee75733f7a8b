"""kiln logs in as a build user with sudo (as a cloud image's default user), never as root.

A role may forbid root's SSH login (``PermitRootLogin no``) as hardening roles do: the kept
instance still converges, the image it bakes still serves as a kiln base, and the image carries
no trace of the build user (account, home, sudoers file, key).
"""

from __future__ import annotations

import json
import time

import pytest

from kiln.controller.engine import BASE_IMAGE, _ulimit_args
from tests.machines import SESSION, SESSION_LABEL, ssh_host
from tests.playbooks import image_repo, invoke, left_behind, make_playbooks

pytestmark = pytest.mark.slow

#: a failure to log in waits for build.ssh_timeout: short, so a broken login fails the test soon
KILN_YAML = "retention:\n  keep: 3\nbuild:\n  ssh_timeout: 30\n"

NO_ROOT_LOGIN = """\
- name: no root login over SSH
  lineinfile: {path: /etc/ssh/sshd_config, regexp: '^#?PermitRootLogin', line: PermitRootLogin no}
  notify: reload sshd
"""
RELOAD_SSHD = """\
- name: reload sshd
  service: {name: ssh, state: reloaded}
"""
VERIFY_NO_ROOT_LOGIN = '- file: /etc/ssh/sshd_config\n  contains: ["PermitRootLogin no"]\n'

#: every place the build user or its key could be left in an image
TRACES = r"""
grep -l 'kiln-build' /etc/passwd* /etc/shadow* /etc/group* /etc/gshadow* /etc/subuid* /etc/subgid* 2>/dev/null
ls -d /home/kiln-build /etc/sudoers.d/kiln-build /var/mail/kiln-build /var/lib/sudo/lectured/kiln-build 2>/dev/null
grep -rls 'kiln-build' /etc/sudoers /etc/sudoers.d /root /home /var/lib/sudo 2>/dev/null
true
"""


def role_files(base: str = BASE_IMAGE) -> dict[str, str]:
    return {
        "role.yml": f"description: forbids root's SSH login\nbase:\n  local: {base}\n",
        "steps.yml": NO_ROOT_LOGIN,
        "handlers.yml": RELOAD_SSHD,
        "verify.yml": VERIFY_NO_ROOT_LOGIN,
    }


def traces_in_image(engine, ref: str) -> list[str]:
    """What of the build user a container of ``ref`` holds (run without booting it, removed after)."""
    name = f"kiln-test-traces-{SESSION}-{int(time.monotonic() * 1000)}"
    try:
        out = engine.run(
            "run", "--name", name, "--label", SESSION_LABEL, *_ulimit_args(), "--entrypoint", "sh", ref, "-c", TRACES
        )
    finally:
        engine.remove_container(name)
    return out.split()


def test_converge_again_after_the_role_forbids_root_login(engine, tmp_path):
    """The second converge reaches the kept instance at once: kiln never logged in as root."""
    playbooks = make_playbooks(tmp_path, role_files(), role="noroot", kiln_yaml=KILN_YAML)
    env = {"KILN_JSON": "1"}
    try:
        first = invoke(tmp_path, "converge", "--role", "noroot", playbooks=playbooks, env=env, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        container = json.loads((tmp_path / "builds/dev/noroot.json").read_text())["instance"]["id"]
        assert "PermitRootLogin no" in engine.exec(container, "cat", "/etc/ssh/sshd_config")

        started = time.monotonic()
        second = invoke(tmp_path, "converge", "--role", "noroot", playbooks=playbooks, env=env, timeout=300)
        took = time.monotonic() - started
        assert second.returncode == 0, second.stderr[-3000:]
        assert '"event": "reusing dev instance"' in second.stderr
        assert took < 20, f"the second converge took {took:.0f}s: it waited for a login"

        # the build user stays with the kept instance; root got no key from kiln
        assert engine.exec(container, "id", "-un", "kiln-build").strip() == "kiln-build"
        assert engine.exec(container, "cat", "/etc/sudoers.d/kiln-build").strip() == "kiln-build ALL=(ALL) NOPASSWD:ALL"
        root_keys = engine.exec(container, "sh", "-c", "cat /root/.ssh/authorized_keys 2>/dev/null; true")
        assert "kiln-build-" not in root_keys
        assert invoke(tmp_path, "verify", "--role", "noroot", env=env, timeout=300).returncode == 0
    finally:
        gone = invoke(tmp_path, "destroy", "--role", "noroot")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not engine.containers("kiln.role=noroot")


def test_image_without_root_login_serves_as_a_base_and_has_no_build_user(engine, tmp_path):
    """Bake the role that forbids root's login; bake another role on its image; neither image has the build user."""
    make_playbooks(tmp_path, role_files(), role="noroot", kiln_yaml=KILN_YAML)
    playbooks = make_playbooks(tmp_path, role_files(f"{image_repo('noroot')}:latest"), role="onnoroot")
    (playbooks / "kiln.yaml").write_text(KILN_YAML)
    baked = invoke(tmp_path, "bake", "--role", "noroot", playbooks=playbooks, timeout=600)
    assert baked.returncode == 0, baked.stdout + baked.stderr[-3000:]
    assert not left_behind(engine, baked.stderr)
    assert traces_in_image(engine, f"{image_repo('noroot')}:latest") == []

    started = time.monotonic()
    again = invoke(tmp_path, "bake", "--role", "onnoroot", playbooks=playbooks, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert time.monotonic() - started < 120
    assert not left_behind(engine, again.stderr)
    assert traces_in_image(engine, f"{image_repo('onnoroot')}:latest") == []


def image_from_base(engine, ref: str, script: str = "true", labels: dict[str, str] | None = None) -> str:
    """``ref`` (under this session's prefix): kiln's base after ``script`` ran in it, with ``labels``."""
    name = f"kiln-test-image-{SESSION}-{int(time.monotonic() * 1000)}"
    changes = [arg for key, value in (labels or {}).items() for arg in ("--change", f"LABEL {key}={value}")]
    try:
        engine.run("run", "--name", name, "--label", SESSION_LABEL, *_ulimit_args(), BASE_IMAGE, "sh", "-c", script)
        engine.run("commit", *changes, "--change", 'CMD ["/sbin/init"]', name, ref)
    finally:
        engine.remove_container(name)
    return ref


def test_a_base_without_sudo_is_refused_saying_why_and_nothing_is_left(engine, tmp_path):
    """The build user needs sudo: an image without it fails the launch, saying so, not a login 180 s later."""
    base = image_from_base(engine, f"{image_repo('nosudo-base')}:1", "rm /usr/bin/sudo")
    playbooks = make_playbooks(tmp_path, role_files(base), role="onnosudo", kiln_yaml=KILN_YAML)
    started = time.monotonic()
    proc = invoke(tmp_path, "bake", "--role", "onnosudo", playbooks=playbooks, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert f"{base} cannot serve as a base: the image has no sudo" in said, said[-3000:]
    assert time.monotonic() - started < 30
    assert not left_behind(engine, proc.stderr)
    assert not engine.images(f"{image_repo('onnosudo')}")


def test_kiln_base_of_another_recipe_is_stale(engine):
    """kiln's base carries its recipe: one an older kiln built (no label) or of another recipe is built again."""
    from kiln.controller.engine import BASE_RECIPE_LABEL, base_recipe

    assert engine.base_staleness(BASE_IMAGE) == "", "the base the session uses is today's"
    assert engine.image_labels(BASE_IMAGE)[BASE_RECIPE_LABEL] == base_recipe()
    other = image_from_base(engine, f"{image_repo('other-recipe')}:1", labels={BASE_RECIPE_LABEL: "0123abcd"})
    assert engine.base_staleness(other) == f"stale: built from recipe 0123abcd, kiln's is now {base_recipe()}"
    older = image_from_base(engine, f"{image_repo('older-kiln')}:1", labels={BASE_RECIPE_LABEL: ""})
    assert engine.base_staleness(older) == "stale: built by an older kiln (no recipe label)"
    assert engine.base_staleness(f"{image_repo('no-such-base')}:1") == "missing"


@pytest.fixture
def host_with_admin(engine, tmp_path):
    """An existing host (not kiln's) reached as its own sudo user ``admin``, as a Debian cloud image is."""
    with ssh_host(engine, tmp_path, "admin-host", user="admin") as found:
        yield found.name, found.port, found.key_file, found.host_key.fingerprint


def test_ssh_provider_converges_as_its_sudo_user_after_root_login_is_forbidden(engine, tmp_path, host_with_admin):
    """providers.ssh.user that is not root: every command goes through sudo; root's login is never needed."""
    name, port, key_file, fingerprint = host_with_admin
    kiln_yaml = (
        f"build:\n  ssh_timeout: 30\nproviders:\n  ssh:\n    host: 127.0.0.1\n    port: {port}\n    user: admin\n"
        f"    key: {key_file}\n    host_key: '{fingerprint}'\n"
    )
    playbooks = make_playbooks(tmp_path, role_files(), role="sshnoroot", kiln_yaml=kiln_yaml)
    for _ in range(2):
        started = time.monotonic()
        done = invoke(tmp_path, "converge", "--provider", "ssh", "--role", "sshnoroot", playbooks=playbooks)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert time.monotonic() - started < 20
    assert "PermitRootLogin no" in engine.exec(name, "cat", "/etc/ssh/sshd_config")
    assert engine.exec(name, "stat", "-c", "%U", "/var/lib/kiln").strip() == "root", "the agent ran as root"
    assert invoke(tmp_path, "verify", "--provider", "ssh", "--role", "sshnoroot").returncode == 0
