"""``providers.ssh`` of kiln.yaml, as the schema engine sees it: a mapping, checked in detail by
ssh.py's ``parse_settings`` when the provider is made. Apart from ssh.py so kiln.yaml loads no paramiko."""

from __future__ import annotations

from typing import Any

SSH_SECTION: dict[str, Any] = {
    "type": "dict",
    "nullable": True,
    "expect": "a mapping",
    "description": "An existing host the developer loop converges and verifies (docs/internals.md); "
    "checked by controller/providers/ssh.py.",
}
