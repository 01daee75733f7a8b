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

import base64
import binascii
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import structlog

from kiln.controller.model import BaseImage, Diagnostic, InvalidInput, Machine
from kiln.controller.providers.base import MachineSpec, ProviderError, ssh_answers
from kiln.controller.ssh import HostKeyExpectation, KeyPair, fingerprint_of

log = structlog.get_logger("kiln.ssh-provider")

REFUSED_BAKE = "the ssh provider converges and verifies an existing host; it makes no images"
KEYS = ("host", "port", "user", "key", "host_key")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")


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
    problems: list[Diagnostic] = []

    def problem(key: str, message: str) -> None:
        keys = ("providers", "ssh", key) if key else ("providers", "ssh")
        if config is not None:
            problems.append(config.diagnostic(keys, f"providers.ssh{'.' + key if key else ''}: {message}"))
        else:
            problems.append(Diagnostic("kiln.yaml", 1, 1, f"providers.ssh{'.' + key if key else ''}: {message}"))

    raw = raw or {}
    if not isinstance(raw, dict):
        problem("", "must be a mapping of host, port, user, key, host_key")
        raise InvalidInput(problems)
    for unknown in sorted(set(raw) - set(KEYS), key=str):
        problem(str(unknown), f"unknown setting (known: {', '.join(KEYS)})")
    for required in ("host", "key", "host_key"):
        if not raw.get(required):
            problem(required, "is required: the ssh provider reaches an existing host, pinned by its host key")
    port = raw.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        problem("port", f"must be a port number (1-65535); got {port!r}")
    user = raw.get("user", "root")
    if not isinstance(user, str) or not user:
        problem("user", f"must be a user name; got {user!r}")
    key_path = _key_path(raw.get("key"), config, problem)
    fingerprint = _host_fingerprint(raw.get("host_key"), problem)
    if problems:
        raise InvalidInput(problems)
    return SshSettings(str(raw["host"]), port, user, key_path, fingerprint)


def _key_path(value: Any, config: Any, problem: Any) -> Path:
    """The private key file (``~`` expanded; relative to kiln.yaml's directory), readable as a private key."""
    if not value:
        return Path()
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and config is not None:
        path = Path(config.path).parent / path
    try:
        paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as exc:
        problem("key", f"{path} is not a readable private key file without a passphrase ({exc})")
    return path


def _host_fingerprint(value: Any, problem: Any) -> str:
    """``SHA256:...`` as given, or worked out from a public key line (``ssh-ed25519 AAAA... comment``)."""
    if not value:
        return ""
    text = str(value).strip()
    if _FINGERPRINT.match(text):
        return text.rstrip("=")
    parts = text.split()
    if len(parts) >= 2:
        try:
            blob = base64.b64decode(parts[1], validate=True)
            if blob[4 : 4 + len(parts[0])] == parts[0].encode():
                return fingerprint_of(blob)
        except (binascii.Error, ValueError):
            pass
    problem("host_key", "must be the host's public key line (ssh-ed25519 AAAA...) or its SHA256:... fingerprint")
    return ""


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
