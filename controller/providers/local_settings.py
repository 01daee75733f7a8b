"""``providers.local`` of kiln.yaml, declared for the schema engine (controller/declared.py).

Kept apart from local.py so that loading kiln.yaml imports no engine or SSH code.
"""

from __future__ import annotations

from typing import Any


def _setting(description: str, **spec: Any) -> dict[str, Any]:
    return {"type": "str", "strict": True, "templated": False, "expect": "a string", **spec, "description": description}


LOCAL_SCHEMA: dict[str, Any] = {
    "key_noun": "providers.local setting",
    "description": "The local provider: a podman (or docker CLI) engine on this machine.",
    "args": {
        "engine": _setting(
            "The container CLI: `auto` (podman, else docker), `podman`, `docker` or a path; `KILN_ENGINE` overrides.",
            default="auto",
        ),
        "runtime": _setting(
            "The OCI runtime: `auto` (`runc` where crun fails on hybrid cgroups) or a name/path; "
            "`KILN_RUNTIME` overrides.",
            default="auto",
        ),
        "image_prefix": _setting(
            "Where kiln's images live instead of `localhost/kiln` (`KILN_IMAGE_PREFIX` overrides).", default=""
        ),
    },
}
#: the whole ``providers.local`` section (what the registry hands to controller/config.py)
LOCAL_SECTION: dict[str, Any] = {"type": "object", "nullable": True, "expect": "a mapping", **LOCAL_SCHEMA}
