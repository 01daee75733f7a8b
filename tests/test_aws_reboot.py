"""Reboots on the AWS provider: ``reboot_wait`` against moto in-process (fast), and a whole sandbox
bake whose ``reboot`` step stops the instance's container, which the data plane starts again."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from moto import mock_aws

from kiln.controller.model import Instance
from kiln.controller.providers.base import ProviderError
from tests.aws_harness import AL2023, RecordingPlane, context, provider, session
from tests.playbooks import invoke, make_playbooks
from tests.test_reboot import REBOOT_ROLE, json_events


class FakeSshd:
    """A TCP server greeting like sshd on 127.0.0.1 until ``stop()`` (then: connection refused)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.greeted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_fake\r\n")
                self.greeted += 1

    def stop(self) -> None:
        self.sock.close()


class RebootPlane(RecordingPlane):
    def rebooting(self, region: str, instance_id: str, timeout: float) -> None:
        self.calls.append(("rebooting", (region, instance_id, timeout)))


@pytest.fixture
def running(tmp_path, monkeypatch):
    """A provider, a context whose instance runs in moto (in-process, this test's own: the sandbox test
    below must not meet it), and a fake sshd as its SSH address."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield from _running(tmp_path)


def _running(tmp_path):
    plane = RebootPlane()
    prov = provider(tmp_path, plane=plane)
    ec2 = session().client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    sshd = FakeSshd()
    ctx = context(prov, tmp_path, "rebooty")
    ctx.instance = Instance(
        id=instance_id, provider="aws", region="us-east-1", ssh_host="127.0.0.1", ssh_port=sshd.port
    )
    yield prov, ctx, sshd, plane, ec2
    sshd.stop()


def test_reboot_wait_returns_once_ssh_stops_answering_and_tells_the_data_plane(running):
    prov, ctx, sshd, plane, _ = running
    prov.sleep = time.sleep
    threading.Timer(1.0, sshd.stop).start()
    started = time.monotonic()
    prov.reboot_wait(ctx.instance, timeout=30)
    assert 0.9 <= time.monotonic() - started < 10
    assert sshd.greeted >= 1, "SSH was polled while it still answered"
    [(hook, (region, instance_id, timeout))] = [c for c in plane.calls if c[0] == "rebooting"]
    assert (region, instance_id) == ("us-east-1", ctx.instance.id) and 0 < timeout <= 30


def test_reboot_wait_times_out_when_the_machine_never_goes_down(running):
    prov, ctx, _, plane, _ = running
    started = time.monotonic()
    with pytest.raises(ProviderError, match="still answered SSH .* 2s after it scheduled its reboot"):
        prov.reboot_wait(ctx.instance, timeout=2)
    assert time.monotonic() - started < 8
    assert not [c for c in plane.calls if c[0] == "rebooting"]


def test_reboot_wait_fails_at_once_when_the_instance_was_terminated_instead(running):
    prov, ctx, _, plane, ec2 = running
    ec2.terminate_instances(InstanceIds=[ctx.instance.id])
    with pytest.raises(ProviderError, match="is (terminated|shutting-down) instead of rebooting"):
        prov.reboot_wait(ctx.instance, timeout=60)


# --- a whole bake in the sandbox -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("sandbox_env")
def test_sandbox_bake_reboots_the_instance_and_runs_the_step_after_it(engine, tmp_path):
    files = {**REBOOT_ROLE, "role.yml": f"description: reboots\nbase:\n  aws: {{ssm_parameter: {AL2023}}}\n"}
    make_playbooks(tmp_path, files, role="awsreboot", kiln_yaml="providers:\n  aws:\n    regions: [us-east-1]\n")
    proc = invoke(
        tmp_path, "bake", "--role", "awsreboot", "--provider", "aws", "--sandbox", env={"KILN_JSON": "1"}, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = json_events(proc.stderr)
    names = [e["event"] for e in events]
    assert names.count("rebooting") == 1 and names.count("rebooted") == 1, names
    assert "instance down for its reboot" in names
    assert any("started again" in e["event"] for e in events), "the data plane restarted the container"
    steps = [(e["step"], e["status"]) for e in events if e["event"] == "step"]
    assert steps == [
        ("before the reboot", "changed"),
        ("reboot for the new kernel", "changed"),
        ("after the reboot", "changed"),
    ], steps
    assert any(e["event"] == "idempotent" for e in events)
    assert any(
        e["event"] == "check" and "kiln-pid1-before" in e.get("check", "") and e["status"] == "passed" for e in events
    ), "verify must see a new PID 1 after the reboot"
    entry = json.loads((tmp_path / "builds" / "manifest.json").read_text())[-1]
    assert entry["role"] == "awsreboot" and entry["steps"]["changed"] == 3
    assert not engine.containers(f"kiln.build-id={entry['build_id']}"), "the instance's container was left behind"
