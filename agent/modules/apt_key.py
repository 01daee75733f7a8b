"""Ansible's ``apt_key``: add or remove an APT signing key with apt-key, as ansible-core does.

The key's id comes from ``id``, or from the key itself (``file``, ``data``, ``url``, read with
``gpg --with-colons``); the keys present are read first (``apt-key adv --list-public-keys``), and
apt-key runs only when the key is missing (present) or there (absent). ``keyring`` puts the key in
that keyring file instead of the shared one. As in ansible-core, a box without apt-key or gpg
(install gnupg) leaves the step ok with that said and nothing done. apt-key is deprecated by Debian:
prefer a key file in /etc/apt/keyrings and ``signed-by``.

Example::

    - apt_key: {file: /tmp/vendor.asc, keyring: /etc/apt/trusted.gpg.d/vendor.gpg}
"""

from __future__ import annotations

import shutil
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result

LANG = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "LC_MESSAGES": "C.UTF-8", "LANGUAGE": "C.UTF-8"}

SCHEMA = {
    "description": "Ansible's apt_key: add or remove an APT signing key with apt-key (deprecated by Debian).",
    "args": {
        "id": {
            "type": "str",
            "description": "The key's id (8, 16 or more hex digits); read from the key if not given.",
        },
        "file": {"type": "path", "description": "A key file on the box."},
        "data": {"type": "str", "description": "The key itself (armored)."},
        "url": {"type": "str", "description": "Where to download the key."},
        "keyserver": {"type": "str", "description": "A keyserver to receive id from."},
        "keyring": {"type": "path", "description": "The keyring file to add to (default: apt's shared one)."},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present", "description": "Wanted."},
        "validate_certs": {"type": "bool", "default": True, "description": "Verify url's TLS certificate."},
    },
    "mutually_exclusive": [["data", "file", "keyserver", "url"]],
    "check_mode": "full",
    "diff": False,
    "example": "- apt_key: {file: /tmp/vendor.asc, keyring: /etc/apt/trusted.gpg.d/vendor.gpg}",
}


def parse_key_id(key_id: str) -> Tuple[str, str, str]:
    """(short id, fingerprint as apt-key lists it, the id) as Ansible reads an id."""
    try:
        int(key_id, 16)
    except ValueError:
        raise ModuleError("Invalid key_id") from None
    key_id = key_id.upper()
    if key_id.startswith("0X"):
        key_id = key_id[2:]
    if len(key_id) not in (8, 16) and len(key_id) <= 16:
        raise ModuleError("Invalid key_id: it must be 8, 16, or 16+ hexadecimal characters in length")
    return key_id[-8:], key_id[-16:] if len(key_id) > 16 else key_id, key_id


def keys_in(output: str, short: bool = False) -> List[str]:
    found = []
    for line in output.split("\n"):
        if (line.startswith("pub") or line.startswith("sub")) and "expired" not in line:
            tokens = line.split()
            try:
                found.append(tokens[1].split("/")[1])
            except IndexError:
                fields = line.split(":")
                if len(fields) > 4:
                    found.append(fields[4])
    return [k[-8:] for k in found] if short else found


def listed(params: Dict[str, Any], ctx: Context, short: bool) -> List[str]:
    keyring = ["--keyring", params["keyring"]] if params.get("keyring") else []
    done = ctx.run(["apt-key", *keyring, "adv", "--list-public-keys", "--keyid-format=long"], check=False, env=LANG)
    if done.rc != 0:
        raise ModuleError("Unable to list public keys", rc=done.rc, stdout=done.stdout, stderr=done.stderr)
    return keys_in(done.stdout, short)


def key_data(params: Dict[str, Any], ctx: Context) -> Optional[bytes]:
    if params.get("data") is not None:
        return params["data"].encode()
    if params.get("url"):
        context = None
        if not params["validate_certs"]:
            import ssl

            context = ssl._create_unverified_context()
        timeout = 10.0 if ctx.clock is None else max(0.1, min(10.0, ctx.clock.left()))
        try:
            with urllib.request.urlopen(params["url"], timeout=timeout, context=context) as response:
                return response.read()
        except OSError:
            raise ModuleError(f"Error getting key id from url: {params['url']}") from None
    return None


def id_of(params: Dict[str, Any], data: Optional[bytes], ctx: Context) -> Optional[str]:
    source = params.get("file") or "-"
    text = data.decode(errors="replace") if data is not None else None
    done = ctx.run(["gpg", "--with-colons", source], check=False, input=text, env=LANG)
    if done.rc != 0:
        where = "inline data" if data is not None else source
        raise ModuleError(f"Unable to extract key from '{where}'", stdout=done.stdout, stderr=done.stderr)
    keys = keys_in(done.stdout)
    return keys[0] if keys else None


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    missing = [tool for tool in ("apt-key", "gpg") if not shutil.which(tool)]
    if missing:
        return {"missing": missing[0]}
    key_id = params.get("id")
    data = None
    if not key_id:
        if params.get("keyserver"):
            raise ModuleError("Missing key_id, required with keyserver.")
        data = key_data(params, ctx)
        if params.get("file") or data is not None:
            key_id = id_of(params, data, ctx)
    if not key_id:
        raise ModuleError("key is required" + (" to remove a key" if params["state"] == "absent" else ""))
    short_id, fingerprint, key_id = parse_key_id(key_id)
    short = len(key_id) == 8
    return {
        "short_id": short_id,
        "fp": fingerprint,
        "key_id": key_id,
        "short": short,
        "before": listed(params, ctx, short),
    }


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if "missing" in state:
        return Result(False, f'Failed to find required executable "{state["missing"]}" (install gnupg)')
    wanted = state["short_id"] if state["short"] else state["fp"]
    present = wanted in state["before"]
    data = {k: state[k] for k in ("short_id", "fp", "key_id", "before")}
    data["id"] = params.get("id") or state["key_id"]
    if (params["state"] == "present") == present:
        return Result(False, f"key {state['key_id']} already {params['state']}", data=data)
    msg = f"key {state['key_id']} " + ("added" if params["state"] == "present" else "removed")
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", data=data)
    keyring = ["--keyring", params["keyring"]] if params.get("keyring") else []
    if params["state"] == "absent":
        _apt_key(ctx, [*keyring, "del", state["short_id"]], f"Unable to remove a key with id {state['short_id']}")
    elif params.get("file"):
        _apt_key(ctx, [*keyring, "add", params["file"]], f"Unable to add a key from file {params['file']}")
    elif params.get("keyserver"):
        argv = [*keyring, "adv", "--no-tty", "--keyserver", params["keyserver"], "--recv", state["key_id"]]
        _apt_key(ctx, argv, f"Error fetching key {state['key_id']} from keyserver: {params['keyserver']}")
    else:
        text = (key_data(params, ctx) or b"").decode(errors="replace")
        _apt_key(ctx, [*keyring, "add", "-"], "Unable to add a key from binary data", text)
    data["after"] = after = listed(params, ctx, state["short"])
    if (params["state"] == "present") != (wanted in after):
        what = "failed to add the key" if params["state"] == "present" else "the key was not removed"
        raise ModuleError(
            f"apt-key did not return an error, but {what} (check that the id is correct and *not* a subkey)"
        )
    return Result(True, msg, data=data)


def _apt_key(ctx: Context, argv: List[str], failure: str, text: Optional[str] = None) -> None:
    done = ctx.run(["apt-key", *argv], check=False, input=text, env=LANG)
    if done.rc != 0:
        raise ModuleError(failure, rc=done.rc, stdout=done.stdout, stderr=done.stderr)
