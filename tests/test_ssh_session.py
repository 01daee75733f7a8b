"""The bake's SSH session against a real machine: Nagle off, and a close that is bounded.

Closing is bounded whatever state a signal left paramiko in: SIGINT/SIGTERM are raised in the main thread wherever it is (controller/pipeline.py); one that lands
inside paramiko between taking a channel's lock and the ``try`` that releases it leaves the lock
held, and paramiko's close then waits on it for ever (seen once as a hung unwind). The test leaves
a real channel's lock held, as such a signal would, and closes the session.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from kiln.controller.bake import make_provider
from kiln.controller.config import load_config
from kiln.controller.context import BakeContext, BakeOptions
from kiln.controller.ssh import CLOSE_SECONDS
from kiln.controller.stages.allocate_version import AllocateVersion
from kiln.controller.stages.connect import Connect
from kiln.controller.stages.launch_instance import LaunchInstance
from kiln.controller.stages.resolve_base import ResolveBase
from kiln.controller.stepfiles.compile import compile_role
from tests.playbooks import make_playbooks

pytestmark = pytest.mark.slow


def machine_context(tmp_path: Path) -> BakeContext:
    playbooks = make_playbooks(tmp_path, {"steps.yml": '- name: nothing\n  command: "true"\n'}, role="sshclose")
    config = load_config(playbooks / "kiln.yaml")
    options = BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks)
    compiled = compile_role(playbooks, "sshclose", "local", config)
    provider = make_provider("local", config, options.builds_dir)
    return BakeContext(role="sshclose", compiled=compiled, provider=provider, options=options, build_id="sshclose-1")


@pytest.fixture
def connected(engine, tmp_path):
    """A context whose build machine is launched and connected; removed afterwards."""
    ctx = machine_context(tmp_path)
    started_stages: list = []
    try:
        for stage in [ResolveBase(), AllocateVersion(), LaunchInstance(), Connect()]:
            started_stages.append(stage)
            stage.run(ctx)
        yield ctx
    finally:
        for stage in reversed(started_stages):
            stage.undo(ctx)
        assert not engine.containers("kiln.build-id=sshclose-1")


def test_nagle_is_off_as_openssh_has_it(connected):
    """With Nagle on, each exec's small packets (channel request, stdin) waited ~40 ms for a delayed ACK."""
    sock = connected.session.conn.transport.sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    connected.session.close()
    assert connected.session.run("cat >/dev/null", stdin=b"x" * 500, timeout=30).rc == 0, "reconnects"
    sock = connected.session.conn.transport.sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, "a reconnect too"


def test_close_is_bounded_when_a_signal_left_a_channel_lock_held(connected):
    ctx = connected
    assert ctx.session.run("true", timeout=30).rc == 0
    channel = ctx.session.conn.client.get_transport().open_session(timeout=10)
    channel.lock.acquire()  # what a signal raised between paramiko's acquire and its try leaves behind
    closer = threading.Thread(target=ctx.session.close, daemon=True)
    started = time.monotonic()
    closer.start()
    closer.join(CLOSE_SECONDS + 20)
    assert not closer.is_alive(), "closing the session waited on the held lock"
    assert time.monotonic() - started < CLOSE_SECONDS + 5
    transport = ctx.session.conn.transport
    assert transport is None or transport.sock.fileno() == -1, "the socket must be closed under paramiko"
