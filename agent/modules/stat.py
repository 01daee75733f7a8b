"""A path's facts as Ansible's ``stat`` reports them, for ``register``; changes nothing.

The registered result's ``stat`` has ansible-core's keys and values: exists, path, mode
("0644"), isdir/isreg/islnk/..., uid, gid, pw_name, gr_name, size, mtime, the permission
bits (rusr, wgrp, ...), readable/writeable/executable, checksum (sha1 by default), and
with get_mime and get_attributes the ``file`` and ``lsattr`` readings.

Example::

    - stat: {path: /etc/nginx/nginx.conf}
      register: nginx_conf
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat as st_mode
from typing import Any, Dict

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Read a path's facts (Ansible's stat) into the registered result's `stat`; changes nothing.",
    "args": {
        "path": {"type": "path", "required": True, "aliases": ["dest", "name"], "description": "The path."},
        "follow": {"type": "bool", "default": False, "description": "Follow a symbolic link."},
        "get_checksum": {"type": "bool", "default": True, "description": "Give a regular file's checksum."},
        "checksum_algorithm": {
            "type": "str",
            "default": "sha1",
            "choices": ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"],
            "aliases": ["checksum", "checksum_algo"],
            "description": "The checksum's algorithm.",
        },
        "get_mime": {
            "type": "bool",
            "default": True,
            "aliases": ["mime", "mime_type", "mime-type"],
            "description": "Give mimetype and charset (from `file`, 'unknown' without it).",
        },
        "get_attributes": {
            "type": "bool",
            "default": True,
            "aliases": ["attr", "attributes"],
            "description": "Give the file system attributes (from lsattr).",
        },
    },
    "check_mode": "full",
    "diff": False,
    "example": "- stat: {path: /etc/nginx/nginx.conf}\n  register: nginx_conf",
}

FILE_ATTRIBUTES = {
    "A": "noatime", "a": "append", "c": "compressed", "C": "nocow", "d": "nodump", "D": "dirsync",
    "e": "extents", "E": "encrypted", "h": "blocksize", "i": "immutable", "I": "indexed", "j": "journalled",
    "N": "inline", "s": "zero", "S": "synchronous", "t": "notail", "T": "blockroot", "u": "undelete",
    "X": "compressedraw", "Z": "compresseddirty",
}  # fmt: skip
PERMISSIONS = (
    ("wusr", st_mode.S_IWUSR), ("rusr", st_mode.S_IRUSR), ("xusr", st_mode.S_IXUSR),
    ("wgrp", st_mode.S_IWGRP), ("rgrp", st_mode.S_IRGRP), ("xgrp", st_mode.S_IXGRP),
    ("woth", st_mode.S_IWOTH), ("roth", st_mode.S_IROTH), ("xoth", st_mode.S_IXOTH),
    ("isuid", st_mode.S_ISUID), ("isgid", st_mode.S_ISGID),
)  # fmt: skip


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    path = params["path"]
    try:
        found = os.stat(path) if params["follow"] else os.lstat(path)
    except FileNotFoundError:
        return {"stat": {"exists": False}}
    except OSError as exc:
        raise ModuleError(f"{path}: {exc.strerror}") from None
    facts = _base(path, found)
    facts.update(_owners(found))
    if facts["isreg"] and facts["readable"] and params["get_checksum"]:
        facts["checksum"] = _digest(path, params["checksum_algorithm"])
    if params["get_mime"]:
        facts.update(_mime(path, ctx))
    if params["get_attributes"]:
        facts.update(_attributes(path, ctx))
    return {"stat": facts}


def _base(path: str, found: os.stat_result) -> Dict[str, Any]:
    mode = found.st_mode
    facts: Dict[str, Any] = {
        "exists": True,
        "path": path,
        "mode": "%04o" % st_mode.S_IMODE(mode),
        "isdir": st_mode.S_ISDIR(mode),
        "ischr": st_mode.S_ISCHR(mode),
        "isblk": st_mode.S_ISBLK(mode),
        "isreg": st_mode.S_ISREG(mode),
        "isfifo": st_mode.S_ISFIFO(mode),
        "islnk": st_mode.S_ISLNK(mode),
        "issock": st_mode.S_ISSOCK(mode),
        "uid": found.st_uid,
        "gid": found.st_gid,
        "size": found.st_size,
        "inode": found.st_ino,
        "dev": found.st_dev,
        "nlink": found.st_nlink,
        "atime": found.st_atime,
        "mtime": found.st_mtime,
        "ctime": found.st_ctime,
    }
    facts.update((name, bool(mode & bit)) for name, bit in PERMISSIONS)
    for attribute, name in (("st_blocks", "blocks"), ("st_blksize", "block_size"), ("st_rdev", "device_type")):
        if hasattr(found, attribute):
            facts[name] = getattr(found, attribute)
    for name, access in (("readable", os.R_OK), ("writeable", os.W_OK), ("executable", os.X_OK)):
        facts[name] = os.access(path, access)
    if facts["islnk"]:
        facts["lnk_source"] = os.path.realpath(path)
        facts["lnk_target"] = os.readlink(path)
    return facts


def _owners(found: os.stat_result) -> Dict[str, str]:
    names = {}
    try:
        names["pw_name"] = pwd.getpwuid(found.st_uid).pw_name
    except KeyError:
        pass
    try:
        names["gr_name"] = grp.getgrgid(found.st_gid).gr_name
    except KeyError:
        pass
    return names


def _digest(path: str, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(65536), b""):
            digest.update(block)
    return digest.hexdigest()


def _mime(path: str, ctx: Context) -> Dict[str, str]:
    facts = {"mimetype": "unknown", "charset": "unknown"}
    if shutil.which("file"):
        done = ctx.run(["file", "--mime-type", "--mime-encoding", path], check=False)
        try:
            mimetype, charset = done.stdout.rsplit(":", 1)[1].split(";")
            facts = {"mimetype": mimetype.strip(), "charset": charset.split("=")[1].strip()}
        except (IndexError, ValueError):
            pass
    return facts


def _attributes(path: str, ctx: Context) -> Dict[str, Any]:
    facts: Dict[str, Any] = {"version": None, "attributes": [], "attr_flags": ""}
    if shutil.which("lsattr"):
        done = ctx.run(["lsattr", "-vd", path], check=False)
        words = done.stdout.split()
        if done.rc == 0 and len(words) > 1:
            flags = words[1].replace("-", "").strip()
            facts = {"version": words[0].strip(), "attr_flags": flags}
            facts["attributes"] = [FILE_ATTRIBUTES[f] for f in flags if f in FILE_ATTRIBUTES]
    return facts


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    facts = state["stat"]
    shown = "absent" if not facts["exists"] else f"mode {facts['mode']}, {facts['size']} bytes"
    return Result(False, f"{params['path']}: {shown}", data={"stat": facts})
