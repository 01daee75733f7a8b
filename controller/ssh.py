"""One SSH connection per bake (Fabric over paramiko), with the host key pinned.

kiln never trusts an unknown host key: the local provider injects a per-instance
host key and pins it exactly; the AWS provider pins the fingerprints cloud-init
prints to the console. The client key is a per-bake ed25519 key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric import Config, Connection

log = structlog.get_logger("kiln.ssh")


class SSHError(RuntimeError):
    pass


class HostKeyMismatch(SSHError):
    pass


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair in OpenSSH formats."""

    private_openssh: bytes
    public_openssh: str  # "ssh-ed25519 AAAA... comment"

    @classmethod
    def generate(cls, comment: str = "kiln") -> KeyPair:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return cls(private, f"{public.decode()} {comment}")

    def paramiko_key(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh.decode()))

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(base64.b64decode(self.public_openssh.split()[1]))


def fingerprint_of(key_blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint: ``SHA256:<base64 without padding>``."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


@dataclass
class HostKeyExpectation:
    """What the server's host key must be: one of these fingerprints, or (explicitly) unverified."""

    fingerprints: set[str] = field(default_factory=set)
    unverified_reason: str = ""  # non-empty: accept any key, and say why in the log

    def check(self, hostname: str, key: paramiko.PKey) -> None:
        seen = fingerprint_of(key.asbytes())
        if self.fingerprints:
            if seen not in self.fingerprints:
                raise HostKeyMismatch(
                    f"host key of {hostname} is {seen}, expected one of {sorted(self.fingerprints)}: "
                    "refusing to connect (possible man-in-the-middle)"
                )
            return
        if not self.unverified_reason:
            raise HostKeyMismatch(f"no known host key for {hostname}; refusing to connect")
        log.warning("host key not verified", host=hostname, fingerprint=seen, reason=self.unverified_reason)


class _Pinned(paramiko.MissingHostKeyPolicy):
    def __init__(self, expectation: HostKeyExpectation) -> None:
        self.expectation = expectation

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.expectation.check(hostname, key)


@dataclass
class Completed:
    rc: int
    stdout: str
    stderr: str


class Session:
    """A lazily opened SSH connection; ``close()`` is safe twice; a context manager."""

    def __init__(self, host: str, port: int, user: str, key: KeyPair, expect: HostKeyExpectation) -> None:
        config = Config(overrides={"load_ssh_configs": False})
        self.address = f"{user}@{host}:{port}"
        self.conn = Connection(
            host, user=user, port=port, config=config,
            connect_kwargs={"pkey": key.paramiko_key(), "allow_agent": False, "look_for_keys": False,
                            "banner_timeout": 20, "auth_timeout": 20},
            connect_timeout=10,
        )
        self.conn.client.set_missing_host_key_policy(_Pinned(expect))
        self.round_trips = 0

    def wait_until_ready(self, timeout: float = 120.0) -> float:
        """Connect, retrying with backoff while sshd is not up yet; returns seconds waited."""
        started = time.monotonic()
        delay = 0.2
        last: Exception | None = None
        while time.monotonic() - started < timeout:
            try:
                self.conn.open()
                self.conn.transport.set_keepalive(15)
                return time.monotonic() - started
            except HostKeyMismatch:
                raise
            except (TimeoutError, OSError, EOFError, paramiko.SSHException) as exc:
                last = exc
                self.conn.close()
                time.sleep(delay)
                delay = min(delay * 1.5, 3.0)
        raise SSHError(f"SSH to {self.address} not ready after {timeout:.0f}s: {last}")

    def run(self, command: str, stdin: bytes | None = None,
            on_line: Callable[[str], None] | None = None, timeout: float | None = None) -> Completed:
        """Run one command; stream stdout lines to ``on_line``; feed ``stdin`` (binary) first."""
        if not self.conn.is_connected:
            self.wait_until_ready()
        self.round_trips += 1
        chan = self.conn.client.get_transport().open_session()
        try:
            if timeout:
                chan.settimeout(timeout)
            chan.exec_command(command)
            err_chunks: list[bytes] = []
            drain = threading.Thread(target=_drain, args=(chan, err_chunks), daemon=True)
            drain.start()
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out_lines = []
            buffer = b""
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    out_lines.append(line)
                    if on_line:
                        on_line(line)
            if buffer:
                out_lines.append(buffer.decode(errors="replace"))
                if on_line:
                    on_line(out_lines[-1])
            rc = chan.recv_exit_status()
            drain.join(5)
            return Completed(rc, "\n".join(out_lines), b"".join(err_chunks).decode(errors="replace"))
        finally:
            chan.close()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(chan: paramiko.Channel, chunks: list[bytes]) -> None:
    while True:
        data = chan.recv_stderr(65536)
        if not data:
            return
        chunks.append(data)
