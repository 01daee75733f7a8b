"""Edit a text file in place: what ``line_in_file`` and ``block_in_file`` share.

``check`` reads the file's attributes and text; ``apply_edit`` computes the new text with
the module's ``edit``, sets owner/group/mode like ``file``, and writes atomically (backup,
validate) unless in check mode.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from .api import Context, ModuleError, Result, atomic_write, backup_local, parse_mode, unified_diff
from .modules import file as filemod


def args() -> Dict[str, Any]:
    """The arguments every text-file editing module takes (last in its SCHEMA's args)."""
    return {
        "create": {"type": "bool", "default": False, "description": "Create the file when it is missing."},
        "backup": {"type": "bool", "default": False, "description": "Keep the old file as <path>.<timestamp>~."},
        "validate": {"type": "str", "description": "Command checking the new file (%s is the temp file)."},
        "mode": {"type": "mode", "description": 'Mode, quoted octal ("0644") or symbolic.'},
        "owner": {"type": "str", "description": "Owning user name."},
        "group": {"type": "str", "description": "Owning group name."},
    }


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    path = params["path"]
    attrs = filemod.check({"path": path}, ctx)
    if attrs is not None and attrs["state"] == "directory":
        raise ModuleError(f"{path} is a directory")
    text = None
    if attrs is not None:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", errors="surrogateescape")
    return {"attrs": attrs, "text": text}


def apply_edit(
    params: Dict[str, Any],
    state: Dict[str, Any],
    ctx: Context,
    edit: Callable[[Dict[str, Any], str], str],
    *,
    removing: bool,
    nothing_to_remove: str,
    unchanged: str,
    describe: Callable[[str], str],
) -> Result:
    """Apply ``edit(params, old_text)`` to the file ``params["path"]`` whose ``check`` state is ``state``.

    ``removing``: the edit only takes away (a missing file is then fine as it is);
    ``nothing_to_remove``: the message for that case; ``unchanged``: the message when neither
    content nor attributes change; ``describe(old_text)``: what a content change of an existing
    file did.
    """
    path = params["path"]
    attrs, text = state["attrs"], state["text"]
    if text is None:
        if removing:
            return Result(False, f"{path} does not exist; {nothing_to_remove}")
        if not params.get("create"):
            raise ModuleError(f"{path} does not exist (set create: true to create it)")
    old = text or ""
    new = edit(params, old)
    changed_content = new != old or text is None
    wanted = filemod.attributes_wanted(params, attrs)
    if attrs is None and not params.get("mode"):
        wanted.pop("mode", None)
    if not changed_content and not wanted:
        return Result(False, f"{path}: {unchanged}")
    diff: Dict[str, Any] = {}
    msgs = []
    if changed_content:
        diff["unified"] = unified_diff(old, new, path)
        msgs.append("file created" if text is None else describe(old))
    if wanted:
        diff["before"] = {k: attrs.get(k) for k in wanted} if attrs else "absent"
        diff["after"] = dict(wanted)
        msgs.append(", ".join(f"{k} {v}" for k, v in sorted(wanted.items())))
    msg = f"{path}: " + "; ".join(msgs)
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode: not written)", diff=diff)
    data: Dict[str, Any] = {}
    if changed_content:
        if text is not None and params.get("backup"):
            data["backup_file"] = backup_local(path)
        current = int(attrs["mode"], 8) if attrs else 0o644
        mode = parse_mode(params["mode"], current) if params.get("mode") else None
        atomic_write(
            path, new.encode("utf-8", errors="surrogateescape"), mode=mode, validate=params.get("validate"), ctx=ctx
        )
    if wanted:
        filemod.set_attributes(path, wanted)
    return Result(True, msg, diff=diff, data=data)
