"""``providers.ssh`` of kiln.yaml, declared for the schema engine (controller/declared.py).

Apart from ssh.py so that loading kiln.yaml imports no paramiko. Whether ``key`` names a readable
private key is the one check left to ssh.py: it needs the file, relative to kiln.yaml, and paramiko.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
HOST_KEY_EXPECTED = "the host's public key line (ssh-ed25519 AAAA...) or its SHA256:... fingerprint"


def host_fingerprint(text: str) -> str | None:
    """``SHA256:...`` as given, or worked out from a public key line (``ssh-ed25519 AAAA... comment``)."""
    text = text.strip()
    if _FINGERPRINT.match(text):
        return text.rstrip("=")
    parts = text.split()
    if len(parts) >= 2:
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            return None
        if blob[4 : 4 + len(parts[0])] == parts[0].encode():
            return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return None


def _host_key_problem(value: Any) -> str | None:
    return None if host_fingerprint(str(value)) else f"must be {HOST_KEY_EXPECTED}"


def _setting(kind: str, description: str, expect: str, **spec: Any) -> dict[str, Any]:
    return {"type": kind, "strict": True, "templated": False, "expect": expect, **spec, "description": description}


SSH_SCHEMA: dict[str, Any] = {
    "key_noun": "providers.ssh setting",
    "args": {
        "host": _setting("str", "The host's name or address.", "a host name or address", required=True, pattern=r"\S"),
        "port": _setting(
            "int", "The SSH port.", "a port number (1-65535)", minimum=1, maximum=65535, default=22, nullable=True
        ),
        "user": _setting(
            "str",
            "Who kiln logs in as; anyone but root runs the agent through `sudo -n` (passwordless sudo needed).",
            "a user name",
            pattern=r"^[^\s:/]+$",
            default="root",
            nullable=True,
        ),
        "key": _setting(
            "str",
            "A private key file the host accepts for `user` (no passphrase; `~` expanded, relative to kiln.yaml).",
            "a private key file",
            required=True,
            pattern=r"\S",
        ),
        "host_key": _setting(
            "str",
            "The host's public key line or its SHA256 fingerprint: pinned, never trusted on first use.",
            HOST_KEY_EXPECTED,
            required=True,
            checks=[_host_key_problem],
        ),
    },
}

SSH_SECTION: dict[str, Any] = {
    "type": "object",
    "nullable": True,
    "expect": "a mapping of host, port, user, key, host_key",
    "description": "An existing host the developer loop converges and verifies (docs/internals.md).",
    **SSH_SCHEMA,
}
