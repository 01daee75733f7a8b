"""The agent's Ansible facts equal what ansible-core's own ``setup`` module reports on the same container
(over SSH, the box's /usr/bin/python3): each fact the agent gives is compared by name, no expected values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.machines import ssh_host

pytestmark = pytest.mark.slow
pytest.importorskip("ansible")

CHANGING = {"memfree_mb", "swapfree_mb"}  # read at different instants


@pytest.fixture
def facts_host(engine, tmp_path):
    with ssh_host(engine, tmp_path, "facts", agent=True) as found:
        yield found.name, found.port, found.key_file


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


def test_facts_equal_ansible_setup(engine, facts_host, tmp_path):
    name, port, key_file = facts_host
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
