"""Ansible's ``find``: the files (or folders, links) under some paths that match, as ansible-core finds them.

Each path is walked top-down (one level unless ``recurse``; ``depth`` bounds it): a name matches
``patterns`` (shell globs, or Python regexes matched at its start with ``use_regex``) unless it
matches ``excludes``; names starting with a dot only with ``hidden``. Then ``age`` (``-1d``:
younger than a day; units s m h d w), ``size`` (``-10k``: at most; units b k m g t), ``contains``
(a regex matching a line's start, or searched in the whole text with ``read_whole_file``) and
``mode`` (``exact_mode``, else any of its bits). Each match comes with its stat as ansible-core
gives it (``files[].path``, ``mode``, ``size``, ...; ``checksum`` with ``get_checksum``);
``matched``, ``examined``, ``skipped_paths``. Changes nothing.

Example::

    - find: {paths: /etc/nginx/conf.d, patterns: "*.conf"}
      register: confs
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import hashlib
import os
import pwd
import re
import stat
import time
from typing import Any, Dict, List, Optional

from ..api import Context, ModuleError, Result, parse_mode

AGE = re.compile(r"^(-?\d+)(s|m|h|d|w)?$")
SIZE = re.compile(r"^(-?\d+)(b|k|m|g|t)?$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
BYTES = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

SCHEMA = {
    "description": "Ansible's find: list the files, folders or links under some paths that match.",
    "args": {
        "paths": {
            "type": "list",
            "elements": "path",
            "required": True,
            "aliases": ["name", "path"],
            "description": "The folders to look in.",
        },
        "patterns": {
            "type": "list",
            "elements": "str",
            "default": [],
            "aliases": ["pattern"],
            "description": "Names to match: shell globs, or regexes with use_regex (default: every name).",
        },
        "excludes": {"type": "list", "elements": "str", "aliases": ["exclude"], "description": "Names to leave out."},
        "contains": {"type": "str", "description": "A regex a line must match (at its start)."},
        "read_whole_file": {"type": "bool", "default": False, "description": "Search contains in the whole text."},
        "file_type": {
            "type": "str",
            "choices": ["any", "directory", "file", "link"],
            "default": "file",
            "description": "What to list.",
        },
        "age": {"type": "str", "description": "At least this old (-N: at most); units s m h d w."},
        "age_stamp": {"type": "str", "choices": ["atime", "ctime", "mtime"], "default": "mtime", "description": "."},
        "size": {"type": "str", "description": "At least this big (-N: at most); units b k m g t."},
        "recurse": {"type": "bool", "default": False, "description": "Look in sub-folders too."},
        "hidden": {"type": "bool", "default": False, "description": "Include names starting with a dot."},
        "follow": {"type": "bool", "default": False, "description": "Follow symlinked folders."},
        "get_checksum": {"type": "bool", "default": False, "description": "Give each file's checksum."},
        "checksum_algorithm": {
            "type": "str",
            "choices": ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"],
            "default": "sha1",
            "aliases": ["checksum", "checksum_algo"],
            "description": "The checksum's algorithm.",
        },
        "use_regex": {"type": "bool", "default": False, "description": "patterns/excludes are regexes."},
        "depth": {"type": "int", "description": "How deep to recurse (1: the path's own entries)."},
        "mode": {"type": "str", "description": "Permission bits to match (octal or symbolic)."},
        "exact_mode": {"type": "bool", "default": True, "description": "mode matches exactly (else any bit)."},
        "encoding": {"type": "str", "description": "The encoding contains reads files with."},
        "limit": {"type": "int", "description": "Stop after this many matches."},
    },
    "check_mode": "full",
    "diff": False,
    "example": '- find: {paths: /etc/nginx/conf.d, patterns: "*.conf"}',
}


def with_unit(text: Optional[str], pattern: "re.Pattern[str]", units: Dict[str, int], what: str) -> Optional[int]:
    if text is None:
        return None
    match = pattern.match(text.lower())
    if not match:
        raise ModuleError(f"failed to process {what}", **{what: text})
    return int(match.group(1)) * units.get(match.group(2), 1)


def name_matches(name: str, patterns: List[str], excludes: Optional[List[str]], use_regex: bool) -> bool:
    def hit(pattern: str) -> bool:
        return bool(re.match(pattern, name)) if use_regex else fnmatch.fnmatch(name, pattern)

    return any(hit(p) for p in patterns) and not any(hit(e) for e in excludes or [])


def within(value: float, bound: Optional[int]) -> bool:
    """``bound`` N: at least N; -N: at most N; None: anything."""
    return bound is None or (value >= bound if bound >= 0 else value <= -bound)


def contains(path: str, pattern: Optional[str], encoding: Optional[str], whole: bool) -> bool:
    if pattern is None:
        return True
    regex = re.compile(pattern)
    try:
        with open(path, encoding=encoding) as handle:
            if whole:
                return bool(regex.search(handle.read()))
            return any(regex.match(line) for line in handle)
    except UnicodeDecodeError as exc:
        raise ModuleError(
            f"Failed to read the file {path} due to an encoding error. current encoding: {encoding or 'None'}"
        ) from exc
    except OSError:
        return False


def mode_matches(st: os.stat_result, mode: Optional[str], exact: bool) -> bool:
    if not mode:
        return True
    wanted = stat.S_IMODE(parse_mode(mode) or 0)
    there = stat.S_IMODE(st.st_mode)
    return there == wanted if exact else bool(there & wanted)


def stat_info(st: os.stat_result) -> Dict[str, Any]:
    def name(lookup: Any, ident: int) -> str:
        try:
            return lookup(ident)[0]
        except (KeyError, OverflowError):
            return ""

    m = st.st_mode
    return {
        "mode": "%04o" % stat.S_IMODE(m),
        **{f"is{kind}": getattr(stat, f"S_IS{kind.upper()}")(m) for kind in ("dir", "chr", "blk", "reg", "fifo")},
        "islnk": stat.S_ISLNK(m),
        "issock": stat.S_ISSOCK(m),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "inode": st.st_ino,
        "dev": st.st_dev,
        "nlink": st.st_nlink,
        "atime": st.st_atime,
        "mtime": st.st_mtime,
        "ctime": st.st_ctime,
        "gr_name": name(grp.getgrgid, st.st_gid),
        "pw_name": name(pwd.getpwuid, st.st_uid),
        **{
            f"{bit}{who}": bool(m & getattr(stat, f"S_I{bit.upper()}{who.upper()}"))
            for who in ("usr", "grp", "oth")
            for bit in ("w", "r", "x")
        },  # fmt: skip
        "isuid": bool(m & stat.S_ISUID),
        "isgid": bool(m & stat.S_ISGID),
    }


def checksum(path: str, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def matches(params: Dict[str, Any], path: str, name: str, st: os.stat_result, limits: Dict[str, Any]) -> bool:
    """Whether the entry is listed, with ansible-core's filters for its kind."""
    kind = params["file_type"]
    common = (
        name_matches(name, params["patterns"], params.get("excludes"), params["use_regex"])
        and within(limits["now"] - getattr(st, f"st_{params['age_stamp']}"), limits["age"])
        and mode_matches(st, params.get("mode"), params["exact_mode"])
    )
    if kind == "any":
        return common and (not stat.S_ISREG(st.st_mode) or within(st.st_size, limits["size"]))
    if kind == "directory":
        return common and stat.S_ISDIR(st.st_mode)
    if kind == "link":
        return common and stat.S_ISLNK(st.st_mode)
    return (
        stat.S_ISREG(st.st_mode)
        and common
        and within(st.st_size, limits["size"])
        and contains(path, params.get("contains"), params.get("encoding"), params["read_whole_file"])
    )


def walk(
    params: Dict[str, Any], top: str, found: List[Dict[str, Any]], skipped: Dict[str, str], limits: Dict[str, Any]
) -> int:
    """Add ``top``'s matches to ``found``; the number of entries looked at."""
    if not os.path.isdir(top):
        raise ModuleError(f"'{top}' is not a directory")

    def unreadable(exc: OSError) -> None:
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOENT):
            raise exc
        skipped[str(exc.filename)] = str(exc)

    looked = 0
    for root, dirs, files in os.walk(top, onerror=unreadable, followlinks=params["follow"]):
        looked += len(files) + len(dirs)
        for name in files + dirs:
            path = os.path.normpath(os.path.join(root, name))
            if params.get("depth"):
                depth = path.count(os.sep) - (top.rstrip(os.sep) + os.sep).count(os.sep) + 1
                if depth > params["depth"]:
                    del dirs[:]
                    continue
            if name.startswith(".") and not params["hidden"]:
                continue
            try:
                st = os.lstat(path)
            except OSError as exc:
                skipped[path] = str(exc)
                limits["warned"] = True
                continue
            if matches(params, path, name, st, limits):
                entry = {"path": path, **stat_info(st)}
                if stat.S_ISREG(st.st_mode) and params["get_checksum"] and params["file_type"] in ("any", "file"):
                    entry["checksum"] = checksum(path, params["checksum_algorithm"])
                found.append(entry)
            if len(found) == params.get("limit"):
                return looked
        if not params["recurse"]:
            break
    return looked


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    limits = {
        "now": time.time(),
        "age": with_unit(params.get("age"), AGE, SECONDS, "age"),
        "size": with_unit(params.get("size"), SIZE, BYTES, "size"),
        "warned": False,  # an entry or a path not examined (a folder walk can not enter is only skipped)
    }
    if params.get("limit") is not None and params["limit"] <= 0:
        raise ModuleError(f"limit cannot be {params['limit']} (use None for unlimited)")
    if not params["patterns"]:
        params = {**params, "patterns": [".*"] if params["use_regex"] else ["*"]}
    found: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    looked = 0
    for top in params["paths"]:
        try:
            looked += walk(params, top, found, skipped, limits)
        except (ModuleError, OSError) as exc:
            skipped[top] = str(exc)
            limits["warned"] = True
        if len(found) == params.get("limit"):
            break
    return {"files": found, "examined": looked, "skipped": skipped, "warned": limits["warned"]}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if state["warned"]:
        msg = "Not all paths examined, check warnings for details"
    elif len(state["files"]) == params.get("limit"):
        msg = "Limit of matches reached"
    else:
        msg = "All paths examined"
    data = {
        "files": state["files"],
        "matched": len(state["files"]),
        "examined": state["examined"],
        "skipped_paths": state["skipped"],
    }
    return Result(False, msg, data=data)
