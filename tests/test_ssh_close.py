"""Closing a bake's SSH connection is bounded, whatever state a signal left paramiko in.

SIGINT/SIGTERM are raised in the main thread wherever it is (controller/pipeline.py); one that lands
inside paramiko between taking a channel's lock and the ``try`` that releases it leaves the lock
held, and paramiko's close then waits on it for ever (seen once as a hung unwind). The test leaves
a real channel's lock held, as such a signal would, and closes the session.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from controller.bake import make_provider
from controller.config import load_config
from controller.context import BakeContext, BakeOptions
from controller.ssh import CLOSE_SECONDS
from controller.stages.allocate_version import AllocateVersion
from controller.stages.connect import Connect
from controller.stages.launch_instance import LaunchInstance
from controller.stages.resolve_base import ResolveBase
from controller.stepfiles.compile import compile_role
from tests.playbooks import make_playbooks

pytestmark = pytest.mark.slow


def machine_context(tmp_path: Path) -> BakeContext:
    playbooks = make_playbooks(tmp_path, {"steps.yml": '- name: nothing\n  command: "true"\n'}, role="sshclose")
    config = load_config(playbooks / "kiln.yaml")
    options = BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks)
    compiled = compile_role(playbooks, "sshclose", "local", config)
    provider = make_provider("local", config, options.builds_dir)
    return BakeContext(role="sshclose", compiled=compiled, provider=provider, options=options, build_id="sshclose-1")


def test_close_is_bounded_when_a_signal_left_a_channel_lock_held(engine, tmp_path):
    ctx = machine_context(tmp_path)
    stages = [ResolveBase(), AllocateVersion(), LaunchInstance(), Connect()]
    started_stages = []
    try:
        for stage in stages:
            started_stages.append(stage)
            stage.run(ctx)
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
    finally:
        for stage in reversed(started_stages):
            stage.undo(ctx)
        assert not engine.containers("kiln.build-id=sshclose-1")
