"""Ansible's ``get_url``: download a URL to a file, verified by ``checksum: <algorithm>:<hex>``.

As in ansible-core: an existing ``dest`` whose checksum matches is not fetched again; without a
checksum an existing ``dest`` is left alone unless ``force``; a ``dest`` that is a directory gets
the URL's file name. The download goes to a temp file beside ``dest`` and replaces it only once
its checksum matches. http(s), ftp and file URLs, as urllib reads them; bounded by ``timeout``.

Example::

    - get_url:
        url: https://example.org/tool-1.2.tar.gz
        dest: /opt/tool-1.2.tar.gz
        checksum: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, Tuple

from ..api import Context, ModuleError, Result, parse_mode
from ..modules import file as filemod

ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
SCHEMES = ("http", "https", "ftp", "file")

SCHEMA = {
    "description": "Ansible's get_url: download a URL to a file, verified by checksum (<algorithm>:<hex>) when given.",
    "args": {
        "url": {"type": "str", "required": True, "description": "http(s)://, ftp:// or file:// URL."},
        "dest": {
            "type": "path",
            "required": True,
            "description": "Destination file; a directory gets the URL's file name.",
        },
        "checksum": {
            "type": "str",
            "default": "",
            "description": "<algorithm>:<hex digest> (md5, sha1, sha224, sha256, sha384, sha512): an existing dest "
            "that matches is not fetched again, and a download that does not match fails.",
        },
        "force": {
            "type": "bool",
            "default": False,
            "aliases": ["thirsty"],
            "description": "Download even when dest exists (without a checksum an existing dest is kept).",
        },
        "mode": {"type": "mode", "description": 'Mode, quoted octal ("0644") or symbolic.'},
        "owner": {"type": "str", "description": "Owning user name."},
        "group": {"type": "str", "description": "Owning group name."},
        "timeout": {"type": "int", "default": 10, "description": "Seconds before the request is given up."},
        "headers": {"type": "dict", "description": "Extra HTTP request headers."},
        "validate_certs": {
            "type": "bool",
            "default": True,
            "description": "Verify the server's TLS certificate (false: do not).",
        },
    },
    "check_mode": "full",
    "diff": True,
    "example": '- get_url: {url: "https://example.org/tool.tar.gz", dest: /opt/tool.tar.gz, '
    'checksum: "sha256:9f86d081..."}',
}


def wanted_checksum(text: str) -> Tuple[str, str]:
    """``sha256:ABC...`` as (algorithm, hex digest); ("", "") without one."""
    if not text:
        return "", ""
    if ":" not in text:
        raise ModuleError("The checksum parameter has to be in format <algorithm>:<checksum>")
    algorithm, digest = text.split(":", 1)
    algorithm = algorithm.strip().lower()
    if algorithm not in ALGORITHMS:
        raise ModuleError(f"checksum: unsupported algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
    digest = re.sub(r"\W+", "", digest).lower()
    if not re.match(r"^[0-9a-f]+$", digest) or len(digest) != hashlib.new(algorithm).digest_size * 2:
        raise ModuleError("The checksum format is invalid")
    return algorithm, digest


def digest_of(path: str, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def target(url: str, dest: str) -> str:
    """dest, or the URL's file name inside dest when dest is a directory (as Ansible names it)."""
    if not os.path.isdir(dest):
        return dest
    name = posixpath.basename(urllib.parse.urlsplit(url).path)
    if not name:
        raise ModuleError(f"dest {dest} is a directory and the URL {url} names no file: give dest a file name")
    return os.path.join(dest, name)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    wanted_checksum(params["checksum"])
    scheme = urllib.parse.urlsplit(params["url"]).scheme
    if scheme not in SCHEMES:
        raise ModuleError(f"url must be one of {', '.join(s + '://' for s in SCHEMES)}, got {params['url']!r}")
    dest = target(params["url"], params["dest"])
    attrs = filemod.check({"path": dest}, ctx)
    state: Dict[str, Any] = {"dest": dest, "attrs": attrs, "digest": None}
    algorithm, _ = wanted_checksum(params["checksum"])
    if attrs is not None and algorithm:
        state["digest"] = digest_of(dest, algorithm)
    return state


def fetch(params: Dict[str, Any], dest: str, clock_left: Optional[float]) -> str:
    """Download into a temp file beside dest; its path once the checksum (if any) matches."""
    url = params["url"]
    parent = os.path.dirname(dest) or "."
    if not os.path.isdir(parent):
        raise ModuleError(f"Destination {parent} does not exist")
    request = urllib.request.Request(
        url, headers={"User-Agent": "kiln-agent", **{str(k): str(v) for k, v in (params.get("headers") or {}).items()}}
    )
    context = None
    if not params["validate_certs"]:
        import ssl

        context = ssl._create_unverified_context()
    timeout = params["timeout"] if clock_left is None else max(0.1, min(params["timeout"], clock_left))
    fd, tmp = tempfile.mkstemp(prefix=".kiln-get_url-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise ModuleError(
                    f"Request failed: HTTP Error {exc.code}: {exc.reason}", status_code=exc.code
                ) from None
            except (urllib.error.URLError, OSError) as exc:
                raise ModuleError(f"Request failed: {getattr(exc, 'reason', exc)}") from None
        algorithm, want = wanted_checksum(params["checksum"])
        if algorithm:
            got = digest_of(tmp, algorithm)
            if got != want:
                raise ModuleError(
                    f"The checksum for {dest} did not match {want}; it was {got}.", checksum_dest=None, checksum_src=got
                )
        return tmp
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fetch_needed(params: Dict[str, Any], state: Dict[str, Any]) -> bool:
    if state["attrs"] is None or params["force"]:
        return True
    _, want = wanted_checksum(params["checksum"])
    return bool(want) and state["digest"] != want


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    dest = state["dest"]
    exists = state["attrs"] is not None
    fetch_needed = _fetch_needed(params, state)
    wanted = filemod.attributes_wanted(params, state["attrs"]) if exists else {}
    data = {"dest": dest, "url": params["url"]}
    if not fetch_needed and not wanted:
        return Result(False, f"{dest} is already there" + (" with its checksum" if state["digest"] else ""), data=data)
    msg = f"{dest}: " + ("downloaded " + params["url"] if fetch_needed else "attributes changed")
    diff = {"before": {"dest": dest if exists else "absent"}, "after": {"dest": dest, **wanted}}
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode: nothing fetched)", diff=diff, data=data)
    if fetch_needed:
        tmp = fetch(params, dest, ctx.clock.left() if ctx.clock else None)
        try:
            if exists and digest_of(tmp, "sha1") == digest_of(dest, "sha1"):
                os.unlink(tmp)
                fetch_needed = False
            else:
                _replace(tmp, dest, exists, params)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    if wanted:
        filemod.set_attributes(dest, wanted)
    if not fetch_needed and not wanted:
        return Result(False, f"{dest} already had the downloaded content", data=data)
    if not exists:
        new = {k: params[k] for k in ("owner", "group") if params.get(k)}
        if new:
            filemod.set_attributes(dest, new)
    return Result(True, msg, diff=diff, data=data)


def _replace(tmp: str, dest: str, exists: bool, params: Dict[str, Any]) -> None:
    if exists:
        found = os.stat(dest)
        os.chown(tmp, found.st_uid, found.st_gid)
        mode = found.st_mode & 0o7777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    if params.get("mode"):
        mode = parse_mode(params["mode"], mode)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)
