"""The agent modules Ansible roles use that kiln lacked (timezone, service_facts, package_facts, stat, ...),
each applied in a real container: check mode changes nothing, the first apply changes, the second is ok. Facts
and results that ansible-core can produce are compared with its own module's output on the same container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.machines import AgentBox, converge, run_step, ssh_host, steps_of

pytestmark = pytest.mark.slow

ZONE_PROBE = "readlink /etc/localtime; cat /etc/timezone"


def test_timezone_converges_and_restores(box):
    box.sh("ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime && echo Etc/UTC > /etc/timezone")
    try:
        done = converge(box, "timezone", {"name": "Europe/Paris"}, ZONE_PROBE)
        assert done["after"] == "/usr/share/zoneinfo/Europe/Paris\nEurope/Paris\n"
        assert box.sh("date +%Z").strip() in ("CET", "CEST")
        unknown = run_step(box, "timezone", {"name": "Mars/Olympus"})
        assert unknown["status"] == "failed" and "Mars/Olympus" in unknown["msg"], unknown
    finally:
        box.sh("ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime && echo Etc/UTC > /etc/timezone")


@pytest.fixture(scope="module")
def ssh_box(engine, tmp_path_factory):
    """One container reachable over SSH (for ansible-core) with the agent in it (for kiln)."""
    with ssh_host(engine, tmp_path_factory.mktemp("ssh"), "ans2", agent=True) as found:
        yield AgentBox(engine, name=found.name), found.port, found.key_file


def ansible_module(ssh_box, module: str, args: str = "") -> dict:
    """ansible-core's own module run on the container over SSH: its result."""
    _, port, key_file = ssh_box
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_LOCAL_TEMP=str(key_file.parent / "tmp"))
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible"), "all", "-i", "127.0.0.1,", "-m", module]
    argv += ["-a", args] if args else []
    argv += ["-e", f"ansible_port={port} ansible_user=root ansible_ssh_private_key_file={key_file}"]
    argv += ["-e", "ansible_python_interpreter=/usr/bin/python3", "-o"]
    deadline = time.monotonic() + 60
    while True:  # sshd may still be starting
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


def values_after(box, steps: list[dict], expression: str) -> tuple[list[dict], object]:
    """Apply steps, then write ``expression`` (rendered on the box) as JSON: the step events and that value."""
    dump = {
        "module": "copy",
        "args": {"dest": "/tmp/kt-values.json", "content": "{{ (" + expression + ") | to_json }}"},
    }
    events = steps_of(box.apply(steps + [dump]))
    return events[:-1], json.loads(box.sh("cat /tmp/kt-values.json"))


def test_service_facts_equal_ansible_and_reach_later_steps(ssh_box):
    box = ssh_box[0]
    box.sh("systemctl mask cron.service")
    theirs = ansible_module(ssh_box, "service_facts")["ansible_facts"]["services"]
    later = {
        "that": [
            "services['cron.service'].status == 'masked'",
            "ansible_facts.services['ssh.service'].state == 'running'",
            "ansible_facts.distribution == 'Debian'",
        ]
    }
    steps, ours = values_after(
        box,
        [{"module": "service_facts", "args": {}, "register": "gathered"}, {"module": "assert", "args": later}],
        "gathered.ansible_facts.services",
    )
    assert [s["status"] for s in steps] == ["ok", "ok"], steps
    assert ours == theirs


def test_package_facts_equal_ansible(ssh_box):
    box = ssh_box[0]
    box.sh("apt-get install -y -q python3-apt >/dev/null 2>&1")  # what ansible-core's package_facts reads
    theirs = ansible_module(ssh_box, "package_facts")["ansible_facts"]["packages"]
    steps, ours = values_after(box, [{"module": "package_facts", "args": {}}], "ansible_facts.packages")
    assert [s["status"] for s in steps] == ["ok"], steps
    assert ours == theirs


@pytest.mark.parametrize("path", ["/etc/kt-stat/file", "/etc/kt-stat", "/etc/kt-stat/link", "/etc/kt-stat/none"])
def test_stat_equals_ansible(ssh_box, path):
    box = ssh_box[0]
    box.sh(
        "mkdir -p /etc/kt-stat && printf 'x = 1\\n' > /etc/kt-stat/file && chmod 4750 /etc/kt-stat/file"
        " && chown nobody:daemon /etc/kt-stat/file && ln -sfn file /etc/kt-stat/link"
    )
    theirs = ansible_module(ssh_box, "stat", f"path={path}")["stat"]
    steps, ours = values_after(box, [{"module": "stat", "args": {"path": path}, "register": "found"}], "found.stat")
    assert [s["status"] for s in steps] == ["ok"], steps
    assert {k: v for k, v in ours.items() if k != "atime"} == {k: v for k, v in theirs.items() if k != "atime"}
