"""The ssh provider: an existing host, reached over SSH, for the developer loop.

It bakes nothing (``makes_images = False``: ``invoke bake`` refuses it, exit 2). ``invoke converge
--provider ssh`` and ``invoke verify --provider ssh`` apply and check a role on the host kiln.yaml names::

    providers:
      ssh:
        host: 192.0.2.10
        port: 22
        user: root
        key: ~/.ssh/id_ed25519          # a private key file the host accepts for ``user``
        host_key: SHA256:abc...          # or the host's public key line: pinned, never trusted on first use

kiln never made the host, so it never removes, starts or stops it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import structlog

from kiln.controller.declared import check_document
from kiln.controller.model import BaseImage, Diagnostic, InvalidInput, Machine
from kiln.controller.providers.base import MachineSpec, ProviderError, ssh_answers
from kiln.controller.providers.ssh_settings import SSH_SECTION, host_fingerprint
from kiln.controller.ssh import HostKeyExpectation, KeyPair

log = structlog.get_logger("kiln.ssh-provider")

REFUSED_BAKE = "the ssh provider converges and verifies an existing host; it makes no images"


@dataclass(frozen=True)
class SshSettings:
    host: str
    port: int
    user: str
    key_path: Path
    host_fingerprint: str


@dataclass(frozen=True)
class FileKey(KeyPair):
    """A private key the user keeps in a file (any type paramiko reads), not one kiln generated."""

    path: Path = Path()

    @classmethod
    def read(cls, path: Path) -> FileKey:
        key = paramiko.PKey.from_path(path)
        return cls(path.read_bytes(), f"{key.get_name()} {key.get_base64()}", path)

    def paramiko_key(self) -> paramiko.PKey:
        return paramiko.PKey.from_path(self.path)


def parse_settings(raw: Any, config: Any = None) -> SshSettings:
    """``providers.ssh`` checked whole (every problem at once, file:line:column): InvalidInput, nothing launched."""

    def diag(keys: tuple[Any, ...], message: str, _at_key: bool = False) -> Diagnostic:
        return config.diagnostic(keys, message) if config is not None else Diagnostic("kiln.yaml", 1, 1, message)

    values, problems = check_document(SSH_SECTION, raw or {}, diag, ("providers", "ssh"))
    key_path = Path(str(values.get("key") or "")).expanduser()
    if not key_path.is_absolute() and config is not None:
        key_path = Path(config.path).parent / key_path
    if isinstance(values.get("key"), str) and values["key"].strip():
        try:
            paramiko.PKey.from_path(key_path)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            message = f"providers.ssh.key: {key_path} is not a readable private key file without a passphrase ({exc})"
            problems.append(diag(("providers", "ssh", "key"), message))
    if problems:
        raise InvalidInput(problems)
    fingerprint = host_fingerprint(values["host_key"]) or ""
    return SshSettings(values["host"], values["port"], values["user"], key_path, fingerprint)


def make_provider(settings: dict[str, Any] | None, config: Any, builds_dir: Path, sandbox: bool) -> SshProvider:
    """The registry's factory (controller/providers/__init__.py): the host of ``providers.ssh``."""
    return SshProvider(parse_settings(settings, config))


class SshProvider:
    """Machines only: the one existing host. Images and coordination are not this provider's."""

    name = "ssh"
    makes_images = False
    no_images_reason = REFUSED_BAKE

    def __init__(self, settings: SshSettings) -> None:
        self.settings = settings
        self.key = FileKey.read(settings.key_path)

    @property
    def address(self) -> str:
        s = self.settings
        return f"ssh://{s.user}@{s.host}:{s.port}"

    def resolve_base(self, spec: Any) -> BaseImage:
        return BaseImage(id=self.address, name=self.address, spec="an existing host (providers.ssh)")

    def launch(self, spec: MachineSpec) -> Machine:
        s = self.settings
        return Machine(
            id=self.address,
            provider=self.name,
            ssh_host=s.host,
            ssh_port=s.port,
            ssh_user=s.user,
            owned=False,
            login_key=self.key,
        )

    def host_key_expectation(self, machine: Machine) -> HostKeyExpectation:
        return HostKeyExpectation(fingerprints={self.settings.host_fingerprint})

    def reboot_wait(self, machine: Machine, timeout: float = 300) -> None:
        """The host reboots by itself: return once its SSH stops answering (the caller reconnects)."""
        deadline = time.monotonic() + timeout
        while ssh_answers(self.settings.host, self.settings.port, timeout=2.0):
            if time.monotonic() >= deadline:
                raise ProviderError(f"{self.address} still answered SSH {timeout:.0f}s after it scheduled its reboot")
            time.sleep(0.5)

    def machine_status(self, machine: Machine) -> str:
        return "running"  # kiln cannot start or stop a host it did not make: a silent host is an SSH error

    def start(self, machine: Machine) -> None:
        raise ProviderError(f"{self.address} is not kiln's: start it yourself")

    def hygiene_script(self) -> str:
        return ""

    def keep_build(self, spec: MachineSpec) -> None:
        """The host is never removed anyway."""

    def terminate(self, machine: Machine) -> None:
        """Not kiln's to remove."""
