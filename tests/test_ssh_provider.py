"""The ssh provider: converge and verify an existing host (a container kiln did not make), host key pinned."""

from __future__ import annotations

import socket
import uuid

import pytest

from kiln.controller.engine import BASE_IMAGE, HOSTKEYS_UNIT, HOSTKEYS_UNIT_PATH
from kiln.controller.ssh import KeyPair
from tests.machines import SESSION, TEST_LABEL
from tests.playbooks import invoke, make_playbooks

pytestmark = pytest.mark.slow

STEPS = '- name: marker\n  copy: {content: "ssh provider\\n", dest: /etc/kiln-ssh-provider}\n'
CHECKS = '- file: /etc/kiln-ssh-provider\n  contains: ["ssh provider"]\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def host(engine, tmp_path):
    """An existing host: a container with sshd, the user's key authorised, its own host key."""
    user_key, host_key = KeyPair.generate(comment="user"), KeyPair.generate(comment="host")
    name, port = f"kiln-test-host-{uuid.uuid4().hex[:8]}", free_port()
    engine.create_machine(BASE_IMAGE, name, {TEST_LABEL: SESSION}, ssh_port=port)
    engine.copy_in(
        name,
        {
            "/root/.ssh": (None, 0o700),
            "/root/.ssh/authorized_keys": (user_key.public_openssh.encode() + b"\n", 0o600),
            "/etc/ssh/ssh_host_ed25519_key": (host_key.private_openssh, 0o600),
            "/etc/ssh/ssh_host_ed25519_key.pub": (host_key.public_openssh.encode() + b"\n", 0o644),
            HOSTKEYS_UNIT_PATH: (HOSTKEYS_UNIT.encode(), 0o644),
        },
    )
    engine.start(name)
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(user_key.private_openssh)
    key_file.chmod(0o600)
    yield name, port, key_file, host_key
    engine.remove_container(name)


def kiln_yaml(port: int, key_file, host_key: str) -> str:
    return f"providers:\n  ssh:\n    host: 127.0.0.1\n    port: {port}\n    user: root\n    key: {key_file}\n    host_key: '{host_key}'\n"


def test_converge_and_verify_an_existing_host_with_its_host_key_pinned(engine, tmp_path, host):
    name, port, key_file, host_key = host
    make_playbooks(
        tmp_path,
        {"steps.yml": STEPS, "verify.yml": CHECKS},
        role="sshrole",
        kiln_yaml=kiln_yaml(port, key_file, host_key.fingerprint),
    )
    converged = invoke(tmp_path, "converge", "--provider", "ssh", "--role", "sshrole")
    assert converged.returncode == 0, converged.stdout[-2000:] + converged.stderr[-2000:]
    assert engine.exec(name, "cat", "/etc/kiln-ssh-provider").strip() == "ssh provider"
    verified = invoke(tmp_path, "verify", "--provider", "ssh", "--role", "sshrole")
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert engine.container_exists(name), "never kiln's to remove"

    baked = invoke(tmp_path, "bake", "--provider", "ssh", "--role", "sshrole")
    assert baked.returncode == 2
    assert "the ssh provider converges and verifies an existing host; it makes no images" in baked.stdout

    # the host's public key line pins it as well as its fingerprint; another key is refused
    (tmp_path / "playbooks/kiln.yaml").write_text(kiln_yaml(port, key_file, host_key.public_openssh))
    assert invoke(tmp_path, "verify", "--provider", "ssh", "--role", "sshrole").returncode == 0
    wrong = KeyPair.generate().fingerprint
    (tmp_path / "playbooks/kiln.yaml").write_text(kiln_yaml(port, key_file, wrong))
    refused = invoke(tmp_path, "converge", "--provider", "ssh", "--role", "sshrole")
    assert refused.returncode == 1 and "refusing to connect" in refused.stdout + refused.stderr


def test_bad_ssh_settings_are_invalid_input_with_their_place(tmp_path):
    make_playbooks(
        tmp_path,
        {"steps.yml": STEPS},
        role="sshbad",
        kiln_yaml="providers:\n  ssh:\n    host: 127.0.0.1\n    key: /nonexistent/key\n    host_key: nope\n",
    )
    result = invoke(tmp_path, "converge", "--provider", "ssh", "--role", "sshbad")
    assert result.returncode == 2
    assert "kiln.yaml:5:15: error: providers.ssh.host_key must be the host's public key line" in result.stdout

    # the key file is read once the section's shape is right (kiln.yaml loads without paramiko)
    pinned = f"    host_key: {KeyPair.generate().fingerprint}\n"
    (tmp_path / "playbooks/kiln.yaml").write_text(
        "providers:\n  ssh:\n    host: 127.0.0.1\n    key: /nonexistent/key\n" + pinned
    )
    result = invoke(tmp_path, "converge", "--provider", "ssh", "--role", "sshbad")
    assert result.returncode == 2
    assert "kiln.yaml:4:10: error: providers.ssh.key: /nonexistent/key is not a readable private key" in result.stdout
