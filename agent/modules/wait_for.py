"""Ansible's ``wait_for``: wait until a port answers or stops, a file appears (with a regexp) or goes,
or a port's connections drain; or just sleep ``timeout`` seconds when given neither port nor path.

Every wait is bounded: ``timeout`` (default 300 s, as Ansible's) and the step's own time limit,
whichever ends first. Nothing changes on the box; a wait that runs out fails with Ansible's message
(or ``msg``). Check mode skips it, as ansible-core does (it does not support check mode).

Example::

    - wait_for: {port: 8080, timeout: 30}
    - wait_for: {path: /var/log/app.log, search_regex: "started in (\\\\d+) ms"}
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any, Dict, List, Optional, Pattern

from ..api import Context, ModuleError, Result

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip

SCHEMA = {
    "description": "Ansible's wait_for: wait (bounded) for a port or a file to be there or gone, or sleep.",
    "args": {
        "host": {"type": "str", "default": "127.0.0.1", "description": "The host whose port is waited for."},
        "port": {"type": "int", "description": "A TCP port."},
        "path": {"type": "path", "description": "A file (with search_regex: a regexp in it)."},
        "state": {
            "type": "str",
            "choices": ["started", "present", "stopped", "absent", "drained"],
            "default": "started",
            "description": "started/present: answers or exists; stopped/absent: no longer; drained: the "
            "port's active connections are gone.",
        },
        "search_regex": {"type": "str", "description": "A regexp the file or the port's first bytes must match."},
        "timeout": {"type": "int", "default": 300, "description": "Seconds to wait at most."},
        "delay": {"type": "int", "default": 0, "description": "Seconds to wait before the first look."},
        "sleep": {"type": "int", "default": 1, "description": "Seconds between two looks."},
        "connect_timeout": {"type": "int", "default": 5, "description": "Seconds per connection try."},
        "msg": {"type": "str", "description": "The failure message instead of Ansible's."},
        "exclude_hosts": {"type": "list", "elements": "str", "description": "state=drained: ignore these peers."},
        "active_connection_states": {
            "type": "list",
            "elements": "str",
            "default": ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "SYN_RECV", "SYN_SENT", "TIME_WAIT"],
            "description": "state=drained: the TCP states that count as active.",
        },
    },
    "mutually_exclusive": [["port", "path"]],
    "check_mode": "none",
    "diff": False,
    "example": "- wait_for: {port: 8080, timeout: 30}",
}


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    state = params["state"]
    if state == "stopped" and params.get("path"):
        raise ModuleError("state=stopped should only be used for checking a port in the wait_for module")
    if state == "drained" and params.get("path"):
        raise ModuleError("state=drained should only be used for checking a port in the wait_for module")
    if params.get("exclude_hosts") and state != "drained":
        raise ModuleError("exclude_hosts should only be with state=drained")
    unknown = [s for s in params["active_connection_states"] if s not in TCP_STATES.values()]
    if unknown:
        raise ModuleError(f"unknown active_connection_state ({unknown[0]}) defined")
    if params.get("search_regex"):
        try:
            re.compile(params["search_regex"])
        except re.error as exc:
            raise ModuleError(f"Invalid regular expression: {exc}") from None
    return {}


class Waiter:
    """One wait: its deadline (timeout, or the step's limit if sooner) and what it found."""

    def __init__(self, params: Dict[str, Any], ctx: Context) -> None:
        self.params = params
        self.started = time.monotonic()
        limit = float(max(params["timeout"], 0))
        if ctx.clock is not None:
            limit = min(limit, max(0.0, ctx.clock.left() - 1.0))
        self.ends = self.started + limit
        self.regex: Optional[Pattern[bytes]] = (
            re.compile(params["search_regex"].encode(), re.MULTILINE) if params.get("search_regex") else None
        )
        self.match: Optional[re.Match[bytes]] = None

    def left(self) -> float:
        return self.ends - time.monotonic()

    def until(self, condition: Any) -> bool:
        while True:
            if condition():
                return True
            if self.left() <= 0:
                return False
            time.sleep(min(max(self.params["sleep"], 0.05), max(self.left(), 0.0)))

    def elapsed(self) -> int:
        return int(time.monotonic() - self.started)


def _connects(host: str, port: int, timeout: float) -> Optional[socket.socket]:
    try:
        return socket.create_connection((host, port), max(0.1, timeout))
    except OSError:
        return None


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _port_answers(waiter: Waiter) -> bool:
    params = waiter.params
    sock = _connects(params["host"], params["port"], min(params["connect_timeout"], waiter.left()))
    if sock is None:
        return False
    try:
        if waiter.regex is None:
            return True
        data = b""
        sock.settimeout(0.5)
        while waiter.left() > 0:
            try:
                chunk = sock.recv(1024)
            except socket.timeout:
                continue
            except OSError:
                return False
            if not chunk:
                return False
            data += chunk
            waiter.match = waiter.regex.search(data)
            if waiter.match:
                return True
        return False
    finally:
        _close(sock)


def _port_closed(waiter: Waiter) -> bool:
    params = waiter.params
    sock = _connects(params["host"], params["port"], min(params["connect_timeout"], waiter.left()))
    if sock is None:
        return True
    _close(sock)
    return False


def _file_there(waiter: Waiter) -> bool:
    path = waiter.params["path"]
    try:
        with open(path, "rb") as handle:
            if waiter.regex is None:
                return True
            waiter.match = waiter.regex.search(handle.read())
            return waiter.match is not None
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        return waiter.regex is None
    except OSError as exc:
        raise ModuleError(waiter.params.get("msg") or f"Failed to stat {path}, {exc.strerror}") from None


def active_connections(port: int, states: List[str], exclude: List[str]) -> int:
    """Connections to local ``port`` in one of ``states`` (from /proc/net/tcp and tcp6)."""
    wanted = {code for code, name in TCP_STATES.items() if name in states}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rsplit(":", 1)[1], 16) != port or state not in wanted:
                continue
            if exclude and _peer(remote) in exclude:
                continue
            count += 1
    return count


def _peer(hex_address: str) -> str:
    address = hex_address.rsplit(":", 1)[0]
    if len(address) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
    words = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8))
    return socket.inet_ntop(socket.AF_INET6, words)


def _timeout_message(params: Dict[str, Any]) -> str:
    host, port, path, regex = params["host"], params.get("port"), params.get("path"), params.get("search_regex")
    state = params["state"]
    if state == "stopped":
        return f"Timeout when waiting for {host}:{port} to stop."
    if state == "absent":
        return f"Timeout when waiting for {path} to be absent."
    if state == "drained":
        return f"Timeout when waiting for {host}:{port} to drain"
    if port is not None:
        return (
            f"Timeout when waiting for search string {regex} in {host}:{port}"
            if regex
            else (f"Timeout when waiting for {host}:{port}")
        )
    return (
        f"Timeout when waiting for search string {regex} in {path}"
        if regex
        else (f"Timeout when waiting for file {path}")
    )


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if ctx.check_mode:  # ansible-core's wait_for does not support check mode: the task is skipped
        return Result(False, "remote module (wait_for) does not support check mode", data={"skipped": True})
    waiter = Waiter(params, ctx)
    if params["delay"] > 0:
        time.sleep(min(params["delay"], max(waiter.left(), 0.0)))
    want, port, path = params["state"], params.get("port"), params.get("path")
    if port is None and not path and want != "drained":
        time.sleep(max(waiter.left(), 0.0))
        done = True
    elif want in ("absent", "stopped"):
        done = waiter.until(lambda: _port_closed(waiter) if port is not None else not _exists(path))
    elif want in ("started", "present"):
        done = waiter.until(lambda: _port_answers(waiter) if port is not None else _file_there(waiter))
    else:
        states, exclude = params["active_connection_states"], params.get("exclude_hosts") or []
        done = waiter.until(lambda: active_connections(port or 0, states, exclude) == 0)
    if not done:
        raise ModuleError(params.get("msg") or _timeout_message(params), elapsed=waiter.elapsed())
    match = waiter.match
    data = {
        "state": want,
        "port": port,
        "path": path,
        "search_regex": params.get("search_regex"),
        "match_groups": [_text(g) for g in match.groups()] if match else [],
        "match_groupdict": {k: _text(v) for k, v in match.groupdict().items()} if match else {},
        "elapsed": waiter.elapsed(),
    }
    shown = f"{params['host']}:{port}" if port is not None else (path or f"{params['timeout']}s")
    return Result(False, f"{shown}: {want} after {data['elapsed']}s", data=data)


def _exists(path: str) -> bool:
    return os.access(path, os.F_OK)


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode(errors="replace")
