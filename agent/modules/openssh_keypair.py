"""community.crypto's ``openssh_keypair``: an OpenSSH key pair made with the box's ssh-keygen.

What the collection's ``opensshbin`` backend does, with the same ssh-keygen commands: the key at
``path`` is read with ``ssh-keygen -l`` (size, type, fingerprint) and ``ssh-keygen -y`` (its public
key), ``path.pub`` as written. A missing key is generated (``ssh-keygen -q -N '' -b SIZE -t TYPE -C
COMMENT`` in a directory of its own, then moved into place: a replaced file keeps its owner and
mode). An existing one is regenerated as ``regenerate`` says: ``never``; ``fail`` (fail when its type
or size differ); ``partial_idempotence`` (the default: regenerate when they differ, fail when the
key cannot be read); ``full_idempotence`` (regenerate an unreadable key too); ``always`` (as
``force``). Otherwise a public key file that is missing or does not match the private key (or its
comment, when one is given) is written again, and ``ssh-keygen -c`` sets the comment. ``mode``,
``owner`` and ``group`` then apply to both files.

A passphrase needs the collection's cryptography backend, which a stdlib-only agent does not
have: it is refused at validate, as are ``backend: cryptography`` and a ``private_key_format``
other than ``auto`` (the opensshbin backend refuses that too).

The registered result is the collection's: filename, fingerprint, public_key (type and key, no
comment), type and size (as asked), comment (the public key file's), changed.

Example::

    - community.crypto.openssh_keypair: {path: /etc/ssh/ssh_host_ed25519_key, type: ed25519}
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, atomic_write
from . import file as filemod

TYPES = ["rsa", "dsa", "rsa1", "ecdsa", "ed25519"]
REGENERATE = ["never", "fail", "partial_idempotence", "full_idempotence", "always"]
UNREADABLE = ("is not a public key file", "incorrect passphrase", "load failed")


def _opensshbin_only(args: Dict[str, Any]) -> List[Tuple[Tuple[str, ...], str]]:
    problems = []
    if args.get("passphrase"):
        problems.append(
            (
                ("passphrase",),
                "the collection encrypts keys with its cryptography backend (a Python library the "
                "agent does not ship); kiln makes keys with ssh-keygen, as the opensshbin backend does: leave the "
                "passphrase out",
            )
        )
    if args.get("backend") == "cryptography":
        problems.append((("backend",), "kiln makes keys with ssh-keygen (opensshbin), not cryptography"))
    if args.get("private_key_format", "auto") != "auto":
        problems.append(
            (
                ("private_key_format",),
                "'auto' is the only valid option when the backend is not cryptography",
            )
        )
    return problems


SCHEMA = {
    "description": "community.crypto's openssh_keypair: make (or remove) an OpenSSH key pair with the box's "
    "ssh-keygen, regenerated as regenerate says.",
    "args": {
        "path": {"type": "path", "required": True, "description": "The private key file; the public key is path.pub."},
        "type": {"type": "str", "default": "rsa", "choices": TYPES, "description": "The key's algorithm."},
        "size": {
            "type": "int",
            "description": "Bits: rsa 4096 by default (at least 1024), dsa exactly 1024, ecdsa 256/384/521; "
            "ignored for ed25519 (256).",
        },
        "comment": {"type": "str", "description": "The public key's comment (changed in place, no new key)."},
        "state": {
            "type": "str",
            "default": "present",
            "choices": ["present", "absent"],
            "description": "Present or absent (both files removed).",
        },
        "force": {
            "type": "bool",
            "default": False,
            "description": "Regenerate the key every time (regenerate=always).",
        },
        "regenerate": {
            "type": "str",
            "default": "partial_idempotence",
            "choices": REGENERATE,
            "description": "When an existing key is made again: never, fail (when its type or size differ), "
            "partial_idempotence (when they differ), full_idempotence (also when it cannot be read), always.",
        },
        "passphrase": {"type": "str", "description": "Refused: needs the cryptography backend."},
        "private_key_format": {
            "type": "str",
            "default": "auto",
            "choices": ["auto", "pkcs1", "pkcs8", "ssh"],
            "description": "auto only (ssh-keygen's own format), as with the collection's opensshbin backend.",
        },
        "backend": {
            "type": "str",
            "default": "auto",
            "choices": ["auto", "cryptography", "opensshbin"],
            "description": "auto or opensshbin: ssh-keygen.",
        },
        "mode": {"type": "mode", "description": "Mode of both files (quoted octal or symbolic)."},
        "owner": {"type": "str", "description": "Owner of both files."},
        "group": {"type": "str", "description": "Group of both files."},
    },
    "rules": [_opensshbin_only],
    "check_mode": "full",
    "diff": True,
    "example": "- openssh_keypair: {path: /etc/ssh/ssh_host_ed25519_key, type: ed25519}",
}


def key_size(params: Dict[str, Any]) -> int:
    kind, size = params["type"], params.get("size")
    if kind in ("rsa", "rsa1"):
        size = 4096 if size is None else size
        if size < 1024:
            raise ModuleError(
                "For RSA keys, the minimum size is 1024 bits and the default is 4096 bits. "
                "Attempting to use bit lengths under 1024 will cause the module to fail."
            )
        return size
    if kind == "dsa":
        if size not in (None, 1024):
            raise ModuleError("DSA keys must be exactly 1024 bits as specified by FIPS 186-2.")
        return 1024
    if kind == "ecdsa":
        size = 256 if size is None else size
        if size not in (256, 384, 521):
            raise ModuleError(
                "For ECDSA keys, size determines the key length by selecting from one of three elliptic curve "
                "sizes: 256, 384 or 521 bits. Attempting to use bit lengths other than these three values for "
                "ECDSA keys will cause this module to fail."
            )
        return size
    return 256


# --- facts ------------------------------------------------------------------------------------------
def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise ModuleError("Cannot find the OpenSSH binary in the PATH (install openssh-client)")
    return found


def read_private(keygen: str, path: str, ctx: Context) -> Optional[Dict[str, Any]]:
    """``ssh-keygen -l``: the key's size, type and fingerprint; None when it cannot be read."""
    if not os.path.exists(path):
        return None
    done = ctx.run([keygen, "-l", "-f", path], check=False)
    words = done.stdout.split()
    if done.rc != 0 or len(words) < 3 or not words[0].isdigit():
        return None
    return {"size": int(words[0]), "type": words[-1][1:-1].lower(), "fingerprint": words[1]}


def parse_public(text: str) -> Optional[Dict[str, str]]:
    """A public key line as the collection reads it: type, key, and the rest as the comment."""
    words = text.strip(" \n").split(" ", 2)
    if len(words) < 2:
        return None
    return {"type": words[0], "data": words[1], "comment": words[2] if len(words) > 2 else ""}


def read_public(path: str) -> Optional[Dict[str, str]]:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_public(handle.read())
    except (OSError, UnicodeDecodeError):
        return None


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    path = params["path"]
    size = key_size(params)
    base = os.path.dirname(path) or "."
    if not os.path.isdir(base):
        raise ModuleError(f"The directory {base} does not exist or the file is not a directory")
    if os.path.isdir(path):
        raise ModuleError(f"{path} is a directory. Please specify a path to a file.")
    keygen = _ssh_keygen()
    state: Dict[str, Any] = {
        "keygen": keygen,
        "size": size,
        "private_exists": os.path.exists(path),
        "private": read_private(keygen, path, ctx),
        "public": read_public(path + ".pub") if os.path.exists(path + ".pub") else None,
        "derived": None,
    }
    if state["private_exists"]:
        done = ctx.run([keygen, "-P", "", "-y", "-f", path], check=False)
        state["derived"] = {"rc": done.rc, "stdout": done.stdout, "stderr": done.stderr}
    return state


# --- deciding ---------------------------------------------------------------------------------------
def _regenerate(params: Dict[str, Any]) -> str:
    return "always" if params["force"] else params["regenerate"]


def _readable(state: Dict[str, Any]) -> bool:
    derived = state["derived"] or {}
    return not (derived.get("rc") == 255 or any(word in derived.get("stderr", "") for word in UNREADABLE))


def _valid(params: Dict[str, Any], state: Dict[str, Any]) -> bool:
    private = state["private"]
    return private is not None and private["size"] == state["size"] and private["type"] == params["type"]


def should_generate(params: Dict[str, Any], state: Dict[str, Any]) -> bool:
    regenerate = _regenerate(params)
    if state["private_exists"] and regenerate in ("never", "fail", "partial_idempotence"):
        if state["private"] is None or not _readable(state):
            raise ModuleError(
                "Unable to read the key. The key is protected with a passphrase or broken. Will not proceed. "
                "To force regeneration, call the module with `generate` set to `full_idempotence` or `always`, "
                "or with `force=true`."
            )
    if state["private"] is None:
        return True
    if regenerate == "never":
        return False
    if regenerate == "fail":
        if not _valid(params, state):
            raise ModuleError(
                "Key has wrong type and/or size. Will not proceed. To force regeneration, call the module with "
                "`generate` set to `partial_idempotence`, `full_idempotence` or `always`, or with `force=true`."
            )
        return False
    if regenerate in ("partial_idempotence", "full_idempotence"):
        return not _valid(params, state)
    return True


def public_key_valid(params: Dict[str, Any], state: Dict[str, Any]) -> bool:
    """The public key file matches the private key (and the comment asked for, if any)."""
    if state["public"] is None:
        return False
    derived = state["derived"] or {}
    if derived.get("rc") != 0:
        raise ModuleError(f"ssh-keygen -y -f {params['path']} failed: {(derived.get('stderr') or '').strip()}")
    wanted = parse_public_from_keygen(derived["stdout"])
    have = state["public"]
    same = have["type"] == wanted["type"] and have["data"] == wanted["data"]
    return same and (params.get("comment") is None or have["comment"] == params["comment"])


def parse_public_from_keygen(text: str) -> Dict[str, str]:
    words = text.strip("\n").split(" ", 2)
    return {"type": words[0], "data": words[1] if len(words) > 1 else "", "comment": words[2] if len(words) > 2 else ""}


# --- acting -----------------------------------------------------------------------------------------
def _place(source: str, dest: str) -> None:
    """A replaced file keeps its owner and mode; a new one keeps the generated file's."""
    if os.path.exists(dest):
        with open(source, "rb") as handle:
            atomic_write(dest, handle.read())
        return
    shutil.copy2(source, dest)
    st = os.stat(source)
    os.chown(dest, st.st_uid, st.st_gid)


def generate(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> None:
    work = tempfile.mkdtemp(prefix="kiln-keypair-")
    try:
        temp = os.path.join(work, os.path.basename(params["path"]))
        argv = [state["keygen"], "-q", "-N", "", "-b", str(state["size"]), "-t", params["type"]]
        ctx.run(argv + ["-f", temp, "-C", params.get("comment") or ""])
        _place(temp, params["path"])
        _place(temp + ".pub", params["path"] + ".pub")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def restore_public(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> None:
    wanted = parse_public_from_keygen(state["derived"]["stdout"])
    public = params["path"] + ".pub"
    line = f"{wanted['type']} {wanted['data']}\n".encode()
    if os.path.exists(public):
        atomic_write(public, line)
    else:
        atomic_write(public, line, mode=0o644)
    if params.get("comment"):
        ctx.run([state["keygen"], "-q", "-c", "-C", params["comment"], "-f", params["path"]])


def set_permissions(params: Dict[str, Any], ctx: Context) -> List[str]:
    """mode/owner/group on both files; the paths that changed (in check mode: that would)."""
    changed = []
    for path in (params["path"], params["path"] + ".pub"):
        current = filemod.check({"path": path}, ctx)
        if current is None:
            if ctx.check_mode:
                changed.append(path)
            continue
        wanted = filemod.attributes_wanted(params, current)
        if wanted:
            if not ctx.check_mode:
                filemod.set_attributes(path, wanted)
            changed.append(path)
    return changed


def result_data(params: Dict[str, Any], state: Dict[str, Any], private: Any, public: Any) -> Dict[str, Any]:
    return {
        "size": state["size"],
        "type": params["type"],
        "filename": params["path"],
        "fingerprint": private["fingerprint"] if private else "",
        "public_key": f"{public['type']} {public['data']}" if public else "",
        "comment": public["comment"] if public else "",
    }


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    path = params["path"]
    if params["state"] == "absent":
        return remove(params, state, ctx)
    done = []
    if should_generate(params, state):
        done.append(f"generated a {params['type']} key")
        if not ctx.check_mode:
            generate(params, state, ctx)
    elif not public_key_valid(params, state):
        done.append("wrote the public key again")
        if not ctx.check_mode:
            restore_public(params, state, ctx)
    private, public = state["private"], state["public"]
    if not ctx.check_mode:
        private, public = read_private(state["keygen"], path, ctx), read_public(path + ".pub")
    if set_permissions(params, ctx):
        done.append("set owner/group/mode")
    data = result_data(params, state, private, public)
    diff = {"before": _summary(state["private"], state["public"]), "after": _summary(private, public)}
    if not done:
        return Result(False, f"{path} is a {params['type']} key as wanted", data=data)
    suffix = " (check mode)" if ctx.check_mode else ""
    return Result(True, f"{path}: " + ", ".join(done) + suffix, diff=diff, data=data)


def remove(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    path = params["path"]
    data = result_data(params, state, state["private"], state["public"])
    present = [p for p in (path, path + ".pub") if os.path.exists(p)]
    if not present:
        return Result(False, f"{path} is absent", data=data)
    if not ctx.check_mode:
        for found in present:
            os.remove(found)
    return Result(True, f"removed {', '.join(present)}" + (" (check mode)" if ctx.check_mode else ""), data=data)


def _summary(private: Any, public: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = dict(private or {})
    if public:
        out.update(comment=public["comment"], public_key=public["data"])
    return out
