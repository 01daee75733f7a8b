"""Real podman containers booting systemd, for tests that need a machine.

``AgentBox`` runs the real agent zipapp inside a container through ``podman exec``
(module and check tests); full bakes go through SSH in the bake tests.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.controller.agent_build import agent_zipapp
from kiln.controller.engine import BASE_IMAGE, HOSTKEYS_UNIT, HOSTKEYS_UNIT_PATH, Engine, tar_of
from kiln.controller.providers.local import ensure_kiln_base, free_port
from kiln.controller.ssh import KeyPair

TEST_LABEL = "kiln.test"
#: Containers of this test session (concurrent sessions must not remove each other's).
SESSION = uuid.uuid4().hex[:8]
SESSION_LABEL = f"{TEST_LABEL}={SESSION}"


def ensure_base_image(engine: Engine) -> None:
    ensure_kiln_base(engine)


@dataclass(frozen=True)
class SshHost:
    """A container of this test session reachable over SSH on 127.0.0.1:``port`` (not one kiln made)."""

    name: str
    port: int
    key_file: Path  # the private key ``user`` logs in with
    host_key: KeyPair
    user: str


@contextlib.contextmanager
def ssh_host(engine: Engine, key_dir: Path, kind: str, user: str = "root", agent: bool = False) -> Iterator[SshHost]:
    """A container booting systemd with sshd, its own host key, a fresh key authorised for ``user``
    (anyone but root gets passwordless sudo, as a cloud image's default user has) and, with ``agent``,
    the agent zipapp where kiln's bootstrap leaves it; removed when the block ends."""
    user_key, host_key = KeyPair.generate(comment=user), KeyPair.generate(comment="host")
    name, port = f"kiln-test-{kind}-{uuid.uuid4().hex[:8]}", free_port()
    home = "/root" if user == "root" else f"/home/{user}"
    files: dict[str, tuple[bytes | None, int]] = {
        "/etc/ssh/ssh_host_ed25519_key": (host_key.private_openssh, 0o600),
        "/etc/ssh/ssh_host_ed25519_key.pub": (host_key.public_openssh.encode() + b"\n", 0o644),
        HOSTKEYS_UNIT_PATH: (HOSTKEYS_UNIT.encode(), 0o644),
    }
    if user == "root":
        files["/root/.ssh"] = (None, 0o700)
        files["/root/.ssh/authorized_keys"] = (user_key.public_openssh.encode() + b"\n", 0o600)
    else:
        files["/etc/sudoers.d/90-cloud-init-users"] = (f"{user} ALL=(ALL) NOPASSWD:ALL\n".encode(), 0o440)
    if agent:
        files["/var/lib/kiln/agent.pyz"] = (agent_zipapp(), 0o644)
    engine.create_machine(BASE_IMAGE, name, {TEST_LABEL: SESSION}, ssh_port=port)
    try:
        engine.copy_in(name, files)
        engine.start(name)
        if user != "root":
            add = f"useradd -m -s /bin/bash {user} && install -d -m 700 -o {user} -g {user} {home}/.ssh && "
            add += f"cat > {home}/.ssh/authorized_keys && chown {user}: {home}/.ssh/authorized_keys"
            engine.exec(name, "sh", "-c", add, input=user_key.public_openssh.encode() + b"\n")
        key_file = key_dir / f"{name}.key"
        key_file.write_bytes(user_key.private_openssh)
        key_file.chmod(0o600)
        yield SshHost(name, port, key_file, host_key, user)
    finally:
        engine.remove_container(name)


@dataclass
class AgentBox:
    engine: Engine
    name: str = field(default_factory=lambda: f"kiln-test-{uuid.uuid4().hex[:8]}")
    image: str = BASE_IMAGE

    def start(self) -> AgentBox:
        self.engine.create_machine(self.image, self.name, {TEST_LABEL: SESSION})
        self.engine.copy_in(self.name, {"/var/lib/kiln/agent.pyz": (agent_zipapp(), 0o644)})
        self.engine.start(self.name)
        # wait for systemd to be up enough for systemctl
        for _ in range(100):
            out = self.engine.exec(self.name, "systemctl", "is-system-running", check=False).strip()
            if out in ("running", "degraded"):
                break
            import time

            time.sleep(0.1)
        return self

    def stop(self) -> None:
        self.engine.remove_container(self.name)

    def sh(self, script: str, check: bool = True) -> str:
        return self.engine.exec(self.name, "bash", "-c", script, check=check)

    def put(self, files: dict[str, tuple[bytes | None, int]]) -> None:
        self.engine.run("cp", "-", f"{self.name}:/", input=tar_of(files))

    def apply(
        self,
        steps: list[dict[str, Any]],
        handlers: list[dict[str, Any]] | None = None,
        variables: dict[str, Any] | None = None,
        check: bool = False,
        diff: bool = False,
        files: dict[str, bytes] | None = None,
        templates: dict[str, bytes] | None = None,
    ) -> list[dict]:
        """Apply steps (bundle format) with the real agent; return its events."""
        for i, step in enumerate(steps, 1):
            step.setdefault("index", i)
            step.setdefault("name", f"step {i}")
        bundle = {"steps": steps, "handlers": handlers or [], "vars": variables or {}}
        content: dict[str, tuple[bytes | None, int]] = {
            "/var/lib/kiln/t/bundle.json": (json.dumps(bundle).encode(), 0o600)
        }
        for name, data in (files or {}).items():
            content[f"/var/lib/kiln/t/files/{name}"] = (data, 0o644)
        for name, data in (templates or {}).items():
            content[f"/var/lib/kiln/t/templates/{name}"] = (data, 0o644)
        self.sh("rm -rf /var/lib/kiln/t")
        self.put(content)
        flags = (["--check"] if check else []) + (["--diff"] if diff else [])
        out = self.engine.exec(
            self.name, "python3", "/var/lib/kiln/agent.pyz", "apply", "/var/lib/kiln/t", *flags, check=False
        )
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def verify(self, checks: list[dict[str, Any]]) -> list[dict]:
        self.put({"/var/lib/kiln/checks.json": (json.dumps(checks).encode(), 0o600)})
        out = self.engine.exec(
            self.name, "python3", "/var/lib/kiln/agent.pyz", "verify", "/var/lib/kiln/checks.json", check=False
        )
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def steps_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "step"]


def summary_of(events: list[dict]) -> dict:
    return next(e for e in events if e["event"] == "summary")


def run_step(box: AgentBox, module: str, args: dict[str, Any], **kwargs: Any) -> dict:
    """Apply one step; return its step event."""
    steps = steps_of(box.apply([{"module": module, "args": args}], **kwargs))
    assert len(steps) == 1, steps
    return steps[0]


def converge(box: AgentBox, module: str, args: dict[str, Any], probe: str, **kwargs: Any) -> dict:
    """The module contract in a real box: check mode changes nothing, the first apply
    changes, the second is ok. ``probe`` is a shell script reading the state; returns
    {"check", "first", "second"} step events and "before"/"after" probe outputs."""
    before = box.sh(probe, check=False)
    checked = run_step(box, module, args, check=True, **kwargs)
    assert checked["status"] == "changed", checked
    assert box.sh(probe, check=False) == before, "check mode changed the box"
    first = run_step(box, module, args, **kwargs)
    assert first["status"] == "changed", first
    after = box.sh(probe, check=False)
    assert after != before, f"the state did not change: {after!r}"
    second = run_step(box, module, args, **kwargs)
    assert second["status"] == "ok", second
    assert box.sh(probe, check=False) == after
    return {"check": checked, "first": first, "second": second, "before": before, "after": after}
