"""Check that something listens on a port (or nothing does), read from /proc/net.

Example::

    - port: 80
    - port: {port: "tcp:22", ip: "0.0.0.0"}
    - port: {port: "udp:53", listening: false}
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Dict, List, Tuple

from ..api import Context, ModuleError

SCHEMA = {
    "description": "A TCP (or UDP) port has a listening socket (or has none).",
    "free_form": "port",
    "args": {
        "port": {
            "type": "str",
            "required": True,
            "description": "Port number, or protocol:port (tcp:80, tcp6:80, udp:53; plain number: tcp and tcp6).",
        },
        "listening": {"type": "bool", "default": True, "description": "true: something listens; false: nothing."},
        "ip": {
            "type": "list",
            "elements": "str",
            "description": "Address(es) it must listen on, exactly as bound (0.0.0.0 and :: are the wildcards).",
        },
    },
    "example": '- port: 80\n- port: {port: "tcp:22", ip: 0.0.0.0}',
}

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


def _address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", struct.unpack(">I", raw)[0]))
    words = struct.unpack(">4I", raw)
    packed = b"".join(struct.pack("<I", w) for w in words)
    return str(ipaddress.IPv6Address(packed))


def listeners(protocols: List[str], port: int) -> List[str]:
    """Addresses bound on ``port`` for the given /proc/net tables (tcp, tcp6, udp, udp6)."""
    found = []
    for proto in protocols:
        state_wanted = TCP_LISTEN if proto.startswith("tcp") else UDP_UNCONNECTED
        try:
            with open(f"/proc/net/{proto}") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 4:
                continue
            local, state = fields[1], fields[3]
            hexaddr, _, hexport = local.partition(":")
            if int(hexport, 16) == port and state == state_wanted:
                found.append(_address(hexaddr))
    return sorted(set(found))


def parse_port(value: str) -> Tuple[List[str], int]:
    proto, _, number = str(value).strip().rpartition(":")
    proto = proto.lower()
    tables = {
        "": ["tcp", "tcp6"],
        "tcp": ["tcp", "tcp6"],
        "tcp4": ["tcp"],
        "tcp6": ["tcp6"],
        "udp": ["udp", "udp6"],
        "udp4": ["udp"],
        "udp6": ["udp6"],
    }
    if proto not in tables or not number.isdigit() or not 0 < int(number) < 65536:
        raise ModuleError(f"port must be a number or tcp:N / tcp6:N / udp:N, got {value!r}")
    return tables[proto], int(number)


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    tables, port = parse_port(params["port"])
    found = listeners(tables, port)
    label = f"{'/'.join(tables)} port {port}"
    seen = f"{label} listening on {', '.join(found)}" if found else f"nothing listening on {label}"
    if not params["listening"]:
        return not found, seen
    if not found:
        return False, seen
    wanted = params.get("ip") or []
    missing = [ip for ip in wanted if ip not in found]
    if missing:
        return False, f"{seen}; not on {', '.join(missing)}"
    return True, seen
