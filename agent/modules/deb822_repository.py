"""Ansible's ``deb822_repository``: an APT source in deb822 form, written byte for byte as ansible-core writes it.

The file is ``/etc/apt/sources.list.d/<slug>.sources`` (``slug``: ``name`` lower-cased, spaces and
``_`` as ``-``, anything else but ``[a-z0-9-]`` dropped), its fields in Ansible's order and spelling
(``X-Repolib-Name``, ``Types``, ``URIs``, ``Suites``, ``Components``, ``Signed-By``, ...; booleans as
yes/no). ``signed_by`` is a key file on the box (kept as a path), a URL (downloaded to
``/etc/apt/keyrings/<slug>.asc`` or ``.gpg``) or the key itself (written inline). ``state: absent``
removes the file and the slug's key files. Nothing else is touched, and nothing is refreshed (follow
with ``apt: update_cache``), as in ansible-core.

Example::

    - deb822_repository:
        name: backports
        uris: http://deb.debian.org/debian
        suites: bookworm-backports
        components: main
        signed_by: /usr/share/keyrings/debian-archive-keyring.gpg
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import textwrap
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, parse_mode

SOURCES_DIR = "/etc/apt/sources.list.d"
KEYRINGS_DIR = "/etc/apt/keyrings"
LISTS = ("architectures", "components", "languages", "suites", "targets", "types", "uris")
BOOLS = ("allow_downgrade_to_insecure", "allow_insecure", "allow_weak", "by_hash", "check_date", "check_valid_until",
         "enabled", "pdiffs", "trusted")  # fmt: skip


def _spec(kind: str, text: str) -> Dict[str, Any]:
    return (
        {"type": kind, "elements": "str", "description": text}
        if kind == "list"
        else {"type": kind, "description": text}
    )


SCHEMA = {
    "description": "Ansible's deb822_repository: an APT source as a deb822 .sources file (and its key).",
    "args": {
        "name": {
            "type": "str",
            "required": True,
            "description": "The source's name (X-Repolib-Name; the file's slug).",
        },
        "types": {
            "type": "list",
            "elements": "str",
            "default": ["deb"],
            "description": "deb and/or deb-src.",
        },
        "uris": _spec("list", "The repositories' URIs."),
        "suites": _spec("list", "Suites (e.g. bookworm-backports), or a path ending in / for a flat repository."),
        "components": _spec("list", "Components (e.g. main contrib)."),
        "signed_by": _spec("str", "A key file on the box, a URL to download it from, or the key itself."),
        "architectures": _spec("list", "Architectures to fetch."),
        "languages": _spec("list", "Translations to fetch."),
        "targets": _spec("list", "Index targets to fetch."),
        "inrelease_path": _spec("str", "Where the InRelease file is."),
        "date_max_future": _spec("int", "Seconds a Release file may be dated in the future."),
        **{name: _spec("bool", f"The source's {name.replace('_', '-').title()} option.") for name in BOOLS},
        "mode": {"type": "mode", "default": "0644", "description": "The .sources file's mode."},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present", "description": "Wanted."},
    },
    "check_mode": "full",
    "diff": True,
    "example": "- deb822_repository:\n    name: backports\n    uris: http://deb.debian.org/debian\n"
    "    suites: bookworm-backports\n    components: main\n",
}


def slug_of(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "", re.sub(r"[_\s]+", "-", name.lower()))


def field_name(key: str) -> str:
    return {"name": "X-Repolib-Name", "uris": "URIs"}.get(key) or key.replace("_", "-").title()


def multiline(text: str) -> str:
    return "\n" + textwrap.indent("\n".join(line.strip() or "." for line in text.strip().splitlines()), "    ")


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def signing_key(value: str, slug: str, ctx: Context) -> Tuple[str, Optional[str], Optional[bytes]]:
    """The Signed-By value, and the key file to write with its bytes (a downloaded key) if any."""
    if os.path.isfile(value):
        return value, None, None
    if not urllib.parse.urlsplit(value).scheme:
        return value, None, None  # the key itself, inline
    timeout = 10.0 if ctx.clock is None else max(0.1, min(10.0, ctx.clock.left()))
    try:
        with urllib.request.urlopen(value, timeout=timeout) as response:
            data = response.read()
    except OSError as exc:
        raise ModuleError(f"Could not fetch signed_by key: {getattr(exc, 'reason', exc)}") from None
    if not data:
        return value, None, None
    ext = "asc" if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" in data else "gpg"
    path = os.path.join(KEYRINGS_DIR, f"{slug}.{ext}")
    return path, path, data


def render(params: Dict[str, Any], signed_by: Optional[str]) -> str:
    """The deb822 paragraph as python-debian dumps it: fields in the arguments' name order."""
    lines: List[str] = []
    for key in sorted(k for k in params if k not in ("mode", "state")):
        value = params[key]
        if value is None:
            continue
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, list):
            text = " ".join(value)
        elif key == "signed_by":
            text = signed_by or ""
        else:
            text = str(value)
        if "\n" in text:
            text = multiline(text)
        name = field_name(key)
        lines.append(f"{name}:{text}\n" if not text or text[0] == "\n" else f"{name}: {text}\n")
    return "".join(lines)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    unknown = [t for t in params["types"] if t not in ("deb", "deb-src")]
    if unknown:
        raise ModuleError(f"types: value of each item must be one of: deb, deb-src, got: {unknown[0]}")
    slug = slug_of(params["name"])
    sources = os.path.join(SOURCES_DIR, f"{slug}.sources")
    keys = {ext: os.path.join(KEYRINGS_DIR, f"{slug}.{ext}") for ext in ("asc", "gpg")}
    state: Dict[str, Any] = {"slug": slug, "sources": sources, "keys": [p for p in keys.values() if os.path.exists(p)]}
    current = _read(sources)
    state["text"] = current.decode(errors="replace") if current is not None else None
    state["mode"] = "%04o" % (os.stat(sources).st_mode & 0o7777) if current is not None else None
    if params["state"] == "present":
        signed_by, key_path, key_data = (None, None, None)
        if params.get("signed_by") is not None:
            signed_by, key_path, key_data = signing_key(params["signed_by"], slug, ctx)
        state["wanted"] = render(params, signed_by)
        state["key"] = None
        if key_path and key_data is not None:
            have = _read(key_path)
            state["key"] = {
                "path": key_path,
                "data": key_data.hex(),
                "same": have is not None and _sha(have) == _sha(key_data),
            }
    return state


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    data = {"dest": state["sources"], "key_filename": None}
    if params["state"] == "absent":
        doomed = ([state["sources"]] if state["text"] is not None else []) + state["keys"]
        if not doomed:
            return Result(False, f"{state['sources']}: already absent", data=dict(data, repo=None))
        if not ctx.check_mode:
            for path in doomed:
                os.unlink(path)
        return Result(
            True, f"removed {', '.join(doomed)}", diff={"before": state["text"] or "", "after": ""}, data=data
        )
    mode = parse_mode(params["mode"], 0o644)
    key = state["key"]
    todo = []
    if key and not key["same"]:
        todo.append("key")
    if state["text"] != state["wanted"]:
        todo.append("sources")
    if state["text"] is not None and int(state["mode"], 8) != mode and "sources" not in todo:
        todo.append("mode")
    data.update(repo=state["wanted"], key_filename=key["path"] if key else None)
    if not todo:
        return Result(False, f"{state['sources']}: as wanted", data=data)
    diff = {"before": state["text"] or "", "after": state["wanted"]}
    if not ctx.check_mode:
        if "key" in todo:
            if not os.path.isdir(KEYRINGS_DIR):
                os.mkdir(KEYRINGS_DIR, 0o755)
            _write(key["path"], bytes.fromhex(key["data"]), 0o644)
        _write(state["sources"], state["wanted"].encode(), mode)
    return Result(True, f"{state['sources']}: {', '.join(todo)} written", diff=diff, data=data)


def _write(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
