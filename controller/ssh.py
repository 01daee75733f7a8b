"""One SSH connection per bake (Fabric over paramiko), with the host key pinned.

kiln never trusts an unknown host key: the local provider injects a per-instance
host key and pins it exactly; the AWS provider pins the fingerprints cloud-init
prints to the console. The client key is a per-bake ed25519 key.

A frozen or vanished machine does not close its TCP connection: it just stops
answering. paramiko's own keepalive only sends, so a :class:`Heartbeat` asks the
server for a reply (``keepalive@openssh.com`` with want-reply, as OpenSSH's
``ServerAliveInterval`` does) and closes the transport once the machine has been
silent for ``interval x misses`` seconds; a command waiting on it then raises
:class:`ConnectionLost`, which says for how long the machine was silent.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import paramiko
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric import Config, Connection

log = structlog.get_logger("kiln.ssh")

#: How often a command with a time bound wakes up to look at it.
POLL_SECONDS = 1.0
#: How long a TCP connection to sshd may take to open.
CONNECT_SECONDS = 10.0
#: The longest pause between two attempts to reach a booting machine's sshd: a refused attempt costs next to
#: nothing, and the connection comes at most this long after sshd does (it was a back-off to 3 s).
RETRY_PAUSE_MAX = 0.25


def retry_pauses() -> Iterator[float]:
    """The pauses between attempts to connect: 0.05 s, growing by half to :data:`RETRY_PAUSE_MAX`."""
    pause = 0.05
    while True:
        yield pause
        pause = min(pause * 1.5, RETRY_PAUSE_MAX)


#: How long closing a connection may take before its socket is dropped under it.
CLOSE_SECONDS = 5.0


class SSHError(RuntimeError):
    pass


class HostKeyMismatch(SSHError):
    pass


class ConnectionLost(SSHError):
    """The machine stopped answering (or the connection dropped) while a command ran."""


class CommandTimeout(SSHError):
    """A command ran past the bound its caller gave; the channel was closed."""


@dataclass(frozen=True)
class Keepalive:
    """Probe every ``interval`` seconds; ``misses`` unanswered intervals in a row and the machine is lost."""

    interval: float = 15.0
    misses: int = 3

    @property
    def silence(self) -> float:
        return self.interval * self.misses


class Heartbeat:
    """A thread that notices a peer which stopped answering, and closes the transport.

    One ``keepalive@openssh.com`` request with want-reply is outstanding at a time, sent
    from a probe thread (paramiko's ``global_request`` waits with no bound of its own; it
    returns once the transport closes). ``lost`` says why the connection was given up.
    """

    REQUEST = "keepalive@openssh.com"

    def __init__(self, transport: paramiko.Transport, address: str, keepalive: Keepalive) -> None:
        self.transport = transport
        self.address = address
        self.keepalive = keepalive
        self.last_reply = time.monotonic()
        self.lost = ""
        self.stopped = threading.Event()
        self.context = structlog.contextvars.get_contextvars()  # the bake's role and build id, for its log line
        self.thread = threading.Thread(target=self._loop, name="kiln-keepalive", daemon=True)

    def start(self) -> Heartbeat:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def silent_for(self) -> float:
        return time.monotonic() - self.last_reply

    def _loop(self) -> None:
        structlog.contextvars.bind_contextvars(**self.context)
        probe: threading.Thread | None = None
        while not self.stopped.wait(self.keepalive.interval):
            if not self.transport.is_active():
                return
            if probe is None or not probe.is_alive():
                probe = threading.Thread(target=self._probe, name="kiln-keepalive-probe", daemon=True)
                probe.start()
            silent = self.silent_for()
            if silent >= self.keepalive.silence:
                self.lost = (
                    f"the machine stopped answering: no reply to SSH keepalives for {silent:.0f}s "
                    f"({self.keepalive.misses} probes, every {self.keepalive.interval:g}s)"
                )
                log.error("connection lost", address=self.address, silent_seconds=round(silent, 1))
                self.transport.close()
                return

    def _probe(self) -> None:
        try:
            self.transport.global_request(self.REQUEST, wait=True)
        except (OSError, EOFError, paramiko.SSHException):
            return
        if self.transport.is_active():  # a reply (OpenSSH refuses the request: that is an answer too)
            self.last_reply = time.monotonic()


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


class Deadline:
    """A command's time bound, which its caller may start again while it runs (one bound per part of a run)."""

    def __init__(self, seconds: float) -> None:
        self.restart(seconds)

    def restart(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def extend(self, seconds: float) -> None:
        self.seconds += seconds
        self.at += seconds

    def left(self) -> float:
        return self.at - time.monotonic()


@dataclass
class Completed:
    rc: int
    stdout: str
    stderr: str


class PromptAckSocket(socket.socket):
    """A client socket that acknowledges every read at once (Linux's TCP_QUICKACK, set again before each read: the
    kernel drops it as it pleases).

    sshd keeps Nagle's algorithm on for a command without a terminal, so a small packet it sends while an earlier
    one is not yet acknowledged waits for that ACK, which a client delays up to 40 ms. Right after the login sshd
    sends its host keys (``hostkeys-00@openssh.com``), then the confirmation of the first channel: a fresh
    machine's first command waited 40-50 ms for nothing (measured: it started 54 ms after it was sent; 12-31 ms
    with this). Elsewhere a no-op (not Linux)."""

    QUICKACK = getattr(socket, "TCP_QUICKACK", None)

    @classmethod
    def taking(cls, sock: socket.socket) -> socket.socket:
        """``sock``'s connection as one of these (``sock`` itself where there is no TCP_QUICKACK)."""
        if cls.QUICKACK is None:
            return sock
        timeout = sock.gettimeout()
        taken = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        taken.settimeout(timeout)
        return taken

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            self.setsockopt(socket.IPPROTO_TCP, self.QUICKACK, 1)
        except OSError:  # closed under us: the read says so
            pass
        return super().recv(bufsize, flags)


class Session:
    """A lazily opened SSH connection; ``close()`` is safe twice; a context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        key: KeyPair,
        expect: HostKeyExpectation,
        keepalive: Keepalive | None = None,
    ) -> None:
        config = Config(overrides={"load_ssh_configs": False})
        self.address = f"{user}@{host}:{port}"
        self.keepalive = keepalive or Keepalive()
        self.heartbeat: Heartbeat | None = None
        self.conn = Connection(
            host,
            user=user,
            port=port,
            config=config,
            connect_kwargs={
                "pkey": key.paramiko_key(),
                "allow_agent": False,
                "look_for_keys": False,
                "banner_timeout": 20,
                "auth_timeout": 20,
            },
            connect_timeout=CONNECT_SECONDS,
        )
        self.conn.client.set_missing_host_key_policy(_Pinned(expect))
        self.round_trips = 0
        #: how long the connection that succeeded took (the rest of a wait is the machine booting)
        self.handshake_seconds = 0.0

    def wait_until_ready(self, timeout: float = 120.0) -> float:
        """Connect, retrying with backoff while sshd is not up yet; returns seconds waited."""
        started = time.monotonic()
        pauses = retry_pauses()
        last: Exception | None = None
        while time.monotonic() - started < timeout:
            attempt = time.monotonic()
            sock: socket.socket | None = None
            try:
                sock = self.conn.connect_kwargs["sock"] = self._socket()
                self.conn.open()
                self._start_heartbeat()
                self.handshake_seconds = time.monotonic() - attempt
                return time.monotonic() - started
            except HostKeyMismatch:
                if sock is not None:
                    sock.close()
                raise
            except (TimeoutError, OSError, EOFError, paramiko.SSHException) as exc:
                last = exc
                self.conn.close()
                if sock is not None:
                    sock.close()
                time.sleep(next(pauses))
        raise SSHError(f"SSH to {self.address} not ready after {timeout:.0f}s: {last}")

    def _socket(self) -> socket.socket:
        """A TCP connection to sshd with Nagle's algorithm off, as OpenSSH's client has it, that acknowledges
        what it reads at once (:class:`PromptAckSocket`).

        paramiko leaves Nagle on: a command's small packets (the channel request, then stdin) wait for
        the server's delayed ACK, ~40 ms each, ~85 ms an exec here."""
        sock = socket.create_connection((self.conn.host, self.conn.port), timeout=CONNECT_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return PromptAckSocket.taking(sock)

    def use_keepalive(self, keepalive: Keepalive) -> None:
        """Probe with these settings from now on (and after every reconnect)."""
        self.keepalive = keepalive
        if self.conn.is_connected:
            self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.heartbeat = Heartbeat(self.conn.transport, self.address, self.keepalive).start()

    def run(
        self,
        command: str,
        stdin: bytes | None = None,
        on_line: Callable[[str], None] | None = None,
        timeout: float | Deadline | None = None,
    ) -> Completed:
        """Run one command; stream stdout lines to ``on_line``; feed ``stdin`` (binary) first.

        ``timeout``: seconds for the whole command, or a :class:`Deadline` that ``on_line`` may
        start again (CommandTimeout past it); a machine that stops answering raises
        ConnectionLost within the keepalive's silence.
        """
        if not self.conn.is_connected:
            self.wait_until_ready()
        self.round_trips += 1
        deadline = timeout if isinstance(timeout, Deadline) or timeout is None else Deadline(timeout)
        try:
            chan = self.conn.client.get_transport().open_session(timeout=self._left(deadline))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost_or(exc) from exc
        interrupted = False
        try:
            return self._exchange(chan, command, stdin, on_line, deadline)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost_or(exc) from exc
        except BaseException as exc:
            # a signal (not an Exception), maybe raised inside paramiko with the channel's lock held: closing
            # it here could wait for ever; the session's close (bounded) drops the channel with the connection
            interrupted = not isinstance(exc, Exception)
            raise
        finally:
            if not interrupted:
                chan.close()

    def _exchange(
        self,
        chan: paramiko.Channel,
        command: str,
        stdin: bytes | None,
        on_line: Callable[[str], None] | None,
        deadline: Deadline | None,
    ) -> Completed:
        chan.exec_command(command)
        err_chunks: list[bytes] = []
        drain = threading.Thread(target=_drain, args=(chan, err_chunks), daemon=True)
        drain.start()
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        if deadline is not None:
            chan.settimeout(POLL_SECONDS)  # wake up to look at the deadline (not while sending: slow is fine)
        out_lines = []
        buffer = b""
        while True:
            try:
                data = chan.recv(65536)
            except TimeoutError:
                self._check_deadline(deadline)
                continue
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
        # the status event is set when the exit status arrives or the channel closes (a lost transport
        # closes its channels): wake at once for either, and every POLL_SECONDS to look at the bounds
        while not chan.status_event.wait(POLL_SECONDS):
            self._check_deadline(deadline)
        rc = chan.recv_exit_status()
        if rc == -1:  # no exit status came: the command ended by a signal, or the connection went
            self._check_alive()
        drain.join(5)
        return Completed(rc, "\n".join(out_lines), b"".join(err_chunks).decode(errors="replace"))

    @staticmethod
    def _left(deadline: Deadline | None) -> float | None:
        return None if deadline is None else max(deadline.left(), 0.1)

    def _check_deadline(self, deadline: Deadline | None) -> None:
        self._check_alive()
        if deadline is not None and deadline.left() <= 0:
            raise CommandTimeout(f"the command on {self.address} did not finish in time")

    def _check_alive(self) -> None:
        """Raise ConnectionLost when the heartbeat gave the machine up or the transport is gone."""
        transport = self.conn.client.get_transport()
        if self.heartbeat is not None and self.heartbeat.lost:
            raise ConnectionLost(f"lost the connection to {self.address}: {self.heartbeat.lost}")
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"lost the connection to {self.address}: the connection closed")

    def _lost_or(self, exc: Exception) -> Exception:
        try:
            self._check_alive()
        except ConnectionLost as lost:
            return lost
        return exc

    def close(self) -> None:
        """Close the connection, within CLOSE_SECONDS whatever state paramiko was left in.

        A signal that interrupted a command (SIGINT, SIGTERM: raised in the main thread wherever it
        was) can land inside paramiko between taking one of its locks and the ``try`` that releases
        it; closing would then wait on that lock for ever. The close runs in a thread and, past the
        bound, the socket is closed under it: the peer sees the connection drop, and the unwinding
        goes on."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        transport = self.conn.transport
        closer = threading.Thread(target=self._close_quietly, name="kiln-ssh-close", daemon=True)
        closer.start()
        closer.join(CLOSE_SECONDS)
        if closer.is_alive() and transport is not None:
            log.warning("SSH close did not finish; dropping the socket", address=self.address, seconds=CLOSE_SECONDS)
            try:
                transport.sock.close()
            except OSError:
                pass

    def _close_quietly(self) -> None:
        try:
            self.conn.close()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("SSH close", address=self.address, error=str(exc))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(chan: paramiko.Channel, chunks: list[bytes]) -> None:
    while True:
        try:
            data = chan.recv_stderr(65536)
        except TimeoutError:  # the channel's poll interval, when its command has a deadline
            continue
        if not data:
            return
        chunks.append(data)
