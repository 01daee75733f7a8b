"""A warm agent for the developer loop: what a converge leaves on its kept machine, so that the next
one pays neither python's start nor the agent's imports on the box.

``apply --linger SECONDS`` ends by forking a process that listens on 127.0.0.1 (a port the kernel
picks) and runs the agent's commands, one connection at a time, for whoever proves it holds the
token this apply handed the controller over its SSH channel (the ``warm`` event); the warm agent
proves it holds it too, before it is sent anything. A run is what an exec of the bootstrap would
have done: the same payload unpacked into the run directory, the same command line, its events on
the connection, then an ``exit`` event with the exit status. It exits when nobody came for SECONDS,
when ``warm.json`` in the run directory no longer names it (a later apply left another; the clean
stage removed the directory), when the agent file it was started from (checked by the bootstrap)
is no longer what it was (it imports the rest of its modules from there), and with the machine.
Stdlib only, Python >= 3.9.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
import shutil
import socket
import sys
import time
import traceback
import zlib
from typing import Any, Callable, Dict, List

from .protocol import Event, encode

STATE = "warm.json"
#: Seconds between the idle agent's looks at warm.json.
CHECK_SECONDS = 1.0
#: Seconds a connection may take to prove the token and send its request.
REQUEST_SECONDS = 30.0

Run = Callable[[List[str]], int]


def proof(token: str, side: str, nonce: str) -> str:
    """What ``side`` answers to ``nonce``: only a holder of the token can say it."""
    return hmac.new(token.encode(), f"{side}:{nonce}".encode(), hashlib.sha256).hexdigest()


def linger(run_dir: str, seconds: float, run: Run, emit: Callable[[Dict[str, Any]], None]) -> None:
    """Leave a warm agent serving ``run`` for ``seconds`` of idleness, and say where it listens."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    token, marker = secrets.token_hex(32), secrets.token_hex(8)
    source = Source()
    _put(os.path.join(run_dir, STATE), json.dumps({"port": port, "marker": marker}).encode())
    child = os.fork()
    if child == 0:  # the warm agent: its own session, no tie to the SSH channel's pipes
        try:
            os.setsid()
            if os.fork() == 0:
                _detach()
                serve(listener, token, run_dir, marker, seconds, run, source)
        finally:
            os._exit(0)
    listener.close()
    os.waitpid(child, 0)
    emit({"event": Event.WARM, "port": port, "token": token})


def _detach() -> None:
    """stdin, stdout and stderr on /dev/null: the exec that forked this ends when its own process does."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def named(run_dir: str, marker: str) -> bool:
    try:
        with open(os.path.join(run_dir, STATE)) as handle:
            return json.load(handle).get("marker") == marker
    except (OSError, ValueError, AttributeError):
        return False


class Source:
    """The agent file this process runs from (a zip the bootstrap checked by sha256), as it was at the start."""

    def __init__(self) -> None:
        self.path = getattr(__loader__, "archive", "")  # a zipimporter's; "" when run from a directory
        self.sha256 = self.now()

    def now(self) -> str:
        if not self.path:
            return ""
        try:
            with open(self.path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return "gone"

    def unchanged(self) -> bool:
        return self.now() == self.sha256


def serve(
    listener: socket.socket, token: str, run_dir: str, marker: str, idle: float, run: Run, source: Source
) -> None:
    listener.settimeout(CHECK_SECONDS)
    last = time.monotonic()
    while time.monotonic() - last < idle and named(run_dir, marker):
        try:
            conn, _ = listener.accept()
        except OSError:  # the look's timeout
            continue
        with conn:
            if not source.unchanged():  # nothing more runs here: the peer, refused, runs the agent afresh
                break
            serve_one(conn, token, run_dir, run)
        last = time.monotonic()
    listener.close()


def serve_one(conn: socket.socket, token: str, run_dir: str, run: Run) -> None:
    """One run for a peer that proves the token (after this agent proved it first); anyone else gets nothing."""
    conn.settimeout(REQUEST_SECONDS)
    reader = conn.makefile("rb")
    try:
        hello = json.loads(reader.readline(4096))
        nonce = secrets.token_hex(16)
        conn.sendall(encode({"proof": proof(token, "agent", str(hello["nonce"])), "nonce": nonce}).encode() + b"\n")
        request = json.loads(reader.readline(1 << 16))
        if not hmac.compare_digest(str(request.get("proof", "")), proof(token, "controller", nonce)):
            return
        payload = reader.read(int(request.get("size", 0)))
        args = [str(arg) for arg in request["args"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    conn.settimeout(None)  # the run: the controller bounds it, as it bounds an exec
    rc, stderr = run_request(conn, run_dir, payload, args, run)
    try:
        conn.sendall(encode({"event": Event.EXIT, "rc": rc, "stderr": stderr[-4000:]}).encode() + b"\n")
    except OSError:
        pass


def run_request(conn: socket.socket, run_dir: str, payload: bytes, args: List[str], run: Run) -> tuple:
    """(exit status, stderr) of one command, its events written to ``conn`` as an exec writes them to stdout."""
    out = io.TextIOWrapper(conn.makefile("wb"), encoding="utf-8", write_through=True)
    err = io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        if payload:
            role_umask = os.umask(0o077)  # private, as the bootstrap unpacks; the role runs with root's umask
            try:
                unpack(run_dir, payload)
            finally:
                os.umask(role_umask)
        rc = run(args)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # noqa: BLE001 - reported as an exec's traceback would be; the warm agent goes on
        traceback.print_exc()
        rc = 1
    finally:
        sys.stdout, sys.stderr = saved
    try:
        out.flush()
    except OSError:
        pass
    return rc, err.getvalue()


def unpack(run_dir: str, payload: bytes) -> None:
    """The bundle in the bootstrap's payload format (controller/remote.py) into ``run_dir``, as the bootstrap does."""
    head, _, body = payload.partition(b"\n")
    meta = json.loads(head)
    for name, _size, _packed in meta["files"]:
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or parts[0] != "bundle":
            raise SystemExit("refusing payload entry " + name)
    if meta.get("bundle"):
        shutil.rmtree(os.path.join(run_dir, "bundle"), ignore_errors=True)
    at = 0
    for name, size, packed in meta["files"]:
        data = body[at : at + size]
        _put(os.path.join(run_dir, name), zlib.decompress(data) if packed else data)
        at += size


def _put(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
