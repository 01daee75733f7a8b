"""Download a file over HTTP(S) to ``dest`` and verify its sha256.

When ``dest`` already has the wanted sha256 nothing is fetched. The download goes to
a temp file beside ``dest`` and replaces it only once the checksum matches.

Example::

    - download:
        url: https://example.org/tool-1.2.tar.gz
        dest: /opt/tool-1.2.tar.gz
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from typing import Any, Dict

from ..api import Context, ModuleError, Result, parse_mode
from ..modules import copy as copymod
from ..modules import file as filemod

SCHEMA = {
    "description": "Download a file over HTTP(S) to dest, verified by its sha256; skipped when dest already "
    "has that sha256.",
    "args": {
        "url": {"type": "str", "required": True, "description": "http:// or https:// URL."},
        "dest": {"type": "path", "required": True, "aliases": ["path"], "description": "Destination file."},
        "sha256": {
            "type": "str",
            "required": True,
            "aliases": ["checksum"],
            "description": 'Expected sha256 in hex ("sha256:" prefix allowed).',
        },
        "mode": {"type": "mode", "description": 'Mode, quoted octal ("0644") or symbolic.'},
        "owner": {"type": "str", "description": "Owning user name."},
        "group": {"type": "str", "description": "Owning group name."},
        "timeout": {"type": "int", "default": 30, "description": "Seconds before the request is given up."},
        "headers": {"type": "dict", "description": "Extra HTTP request headers."},
    },
    "check_mode": "full",
    "diff": True,
    "example": '- download: {url: "https://example.org/tool.tar.gz", dest: /opt/tool.tar.gz, sha256: "9f86d081..."}',
}

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _wanted_sha(params: Dict[str, Any]) -> str:
    value = params["sha256"].strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not HEX64.match(value):
        raise ModuleError(f"sha256 must be 64 hex digits, got {params['sha256']!r}")
    return value


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    _wanted_sha(params)
    return copymod.dest_state(params["dest"], ctx)


def fetch(params: Dict[str, Any], dest: str, want: str) -> str:
    """Download into a temp file beside dest; return its path once the sha256 matches."""
    url = params["url"]
    if not url.startswith(("http://", "https://")):
        raise ModuleError(f"url must be http:// or https://, got {url!r}")
    parent = os.path.dirname(dest) or "."
    if not os.path.isdir(parent):
        raise ModuleError(f"directory {parent} does not exist (create it first with file: state=directory)")
    request = urllib.request.Request(
        url, headers={"User-Agent": "kiln-agent", **{str(k): str(v) for k, v in (params.get("headers") or {}).items()}}
    )
    fd, tmp = tempfile.mkstemp(prefix=".kiln-download-", dir=parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=params["timeout"]) as response:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise ModuleError(f"download {url}: HTTP {exc.code} {exc.reason}", status=exc.code) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ModuleError(f"download {url}: {reason}") from None
        got = digest.hexdigest()
        if got != want:
            raise ModuleError(f"download {url}: sha256 mismatch: expected {want}, got {got}")
        return tmp
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    dest = state["dest"]
    want = _wanted_sha(params)
    exists = state["attrs"] is not None
    fetch_needed = not exists or state["sha256"] != want
    wanted = filemod.attributes_wanted(params, state["attrs"])
    if not exists and not params.get("mode"):
        wanted.pop("mode", None)
    if not fetch_needed and not wanted:
        return Result(False, f"{dest} already has sha256 {want[:12]}…", data={"dest": dest, "sha256": want})
    before: Dict[str, Any] = {}
    after: Dict[str, Any] = {}
    if fetch_needed:
        before["sha256"] = state.get("sha256") or "absent"
        after["sha256"] = want
    if wanted:
        if exists:
            before.update({k: state["attrs"].get(k) for k in wanted})
        after.update(wanted)
    msg = (
        f"{dest}: "
        + ("downloaded " + params["url"] if fetch_needed else "")
        + (("; " if fetch_needed and wanted else "") + ", ".join(f"{k} {v}" for k, v in sorted(wanted.items())))
    )
    diff = {"before": before, "after": after}
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode: nothing fetched)", diff=diff, data={"dest": dest, "sha256": want})
    if fetch_needed:
        tmp = fetch(params, dest, want)
        try:
            if exists:
                st = os.stat(dest)
                os.chown(tmp, st.st_uid, st.st_gid)
                mode = st.st_mode & 0o7777
            else:
                mode = 0o644
            if params.get("mode"):
                mode = parse_mode(params["mode"], mode)
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    if wanted:
        filemod.set_attributes(dest, wanted)
    return Result(True, msg, diff=diff, data={"dest": dest, "sha256": want})
