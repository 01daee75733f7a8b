"""The agent's Ansible facts equal what ansible-core's own ``setup`` module reports on the same container
(over SSH, the box's /usr/bin/python3): each fact the agent gives is compared by name, no expected values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from kiln.controller.engine import BASE_IMAGE, HOSTKEYS_UNIT, HOSTKEYS_UNIT_PATH
from kiln.controller.ssh import KeyPair
from tests.machines import SESSION, TEST_LABEL, agent_zipapp
from tests.test_ssh_provider import free_port

pytestmark = pytest.mark.slow
pytest.importorskip("ansible")

CHANGING = {"memfree_mb", "swapfree_mb"}  # read at different instants


@pytest.fixture
def ssh_host(engine, tmp_path):
    user_key = KeyPair.generate(comment="user")
    name, port = f"kiln-test-facts-{uuid.uuid4().hex[:8]}", free_port()
    engine.create_machine(BASE_IMAGE, name, {TEST_LABEL: SESSION}, ssh_port=port)
    engine.copy_in(
        name,
        {
            "/root/.ssh": (None, 0o700),
            "/root/.ssh/authorized_keys": (user_key.public_openssh.encode() + b"\n", 0o600),
            HOSTKEYS_UNIT_PATH: (HOSTKEYS_UNIT.encode(), 0o644),
            "/var/lib/kiln/agent.pyz": (agent_zipapp(), 0o644),
        },
    )
    engine.start(name)
    key_file = tmp_path / "id"
    key_file.write_bytes(user_key.private_openssh)
    key_file.chmod(0o600)
    yield name, port, key_file
    engine.remove_container(name)


def ansible_setup(port: int, key_file, tmp_path) -> dict:
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    argv = [
        os.path.join(os.path.dirname(sys.executable), "ansible"),
        "all",
        "-i",
        "127.0.0.1,",
        "-m",
        "setup",
        "-e",
        f"ansible_port={port} ansible_user=root ansible_ssh_private_key_file={key_file}",
        "-e",
        "ansible_python_interpreter=/usr/bin/python3",
        "-o",
    ]
    for _ in range(30):  # sshd may still be starting
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        if done.returncode == 0:
            return json.loads(done.stdout[done.stdout.index("{") :])["ansible_facts"]
    raise AssertionError(done.stdout[-2000:] + done.stderr[-2000:])


def test_facts_equal_ansible_setup(engine, ssh_host, tmp_path):
    name, port, key_file = ssh_host
    theirs = ansible_setup(port, key_file, tmp_path)
    out = engine.exec(name, "python3", "/var/lib/kiln/agent.pyz", "facts")
    ours = next(json.loads(line) for line in out.splitlines() if line.startswith("{"))["facts"]["ansible"]
    compared = {k: v for k, v in ours.items() if k not in CHANGING}
    assert {k: theirs.get(f"ansible_{k}", "<not in setup>") for k in compared} == compared
    wanted = {
        "os_family",
        "distribution",
        "distribution_major_version",
        "distribution_version",
        "distribution_release",
        "architecture",
        "processor_vcpus",
        "memtotal_mb",
        "default_ipv4",
        "service_mgr",
        "pkg_mgr",
        "python",
        "system",
        "kernel",
        "hostname",
        "fqdn",
        "nodename",
        "selinux",  # dev-sec's ssh_hardening reads ansible_facts.selinux.status
        "selinux_python_present",
    }
    assert wanted <= set(compared)
