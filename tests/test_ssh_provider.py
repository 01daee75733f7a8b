"""The ssh provider: converge and verify an existing host (a container kiln did not make), host key pinned."""

from __future__ import annotations

import pytest

from kiln.controller.ssh import KeyPair
from tests.machines import ssh_host
from tests.playbooks import invoke, make_playbooks

pytestmark = pytest.mark.slow

STEPS = '- name: marker\n  copy: {content: "ssh provider\\n", dest: /etc/kiln-ssh-provider}\n'
CHECKS = '- file: /etc/kiln-ssh-provider\n  contains: ["ssh provider"]\n'


@pytest.fixture
def host(engine, tmp_path):
    """An existing host: a container with sshd, the user's key authorised, its own host key."""
    with ssh_host(engine, tmp_path, "host") as found:
        yield found.name, found.port, found.key_file, found.host_key


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
