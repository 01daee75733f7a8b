"""ansible.posix's ``mount``: a mount point in /etc/fstab (or ``fstab``), and mounted or not, as the collection does.

fstab lines are read and written as the collection does: the line whose mount point is ``path``
(escaped: ``\\040`` for a blank) gets the step's src, fstype, opts, dump and passno (a line of
4 or 5 fields gets its missing dump/passno written), a missing one is added at the end; other
lines stay as they are. ``present`` only edits fstab; ``absent_from_fstab`` removes the line;
``absent`` also unmounts and removes the folder; ``mounted`` edits fstab, makes the folder and
mounts it (``mount -o remount`` when it was mounted and the line changed; on failure fstab is
restored); ``unmounted`` unmounts; ``remounted`` remounts. ``boot: false`` adds ``noauto``.
Mounting needs the privilege to mount: in an unprivileged container it fails, as the collection's does.

Example::

    - ansible.posix.mount: {path: /srv/data, src: /dev/vdb1, fstype: ext4, opts: noatime, state: present}
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, atomic_write, backup_local, require_command, unified_diff

LINE = "%(src)s %(name)s %(fstype)s %(opts)s %(dump)s %(passno)s\n"
FIELDS = ("src", "name", "fstype", "opts", "dump", "passno")

SCHEMA = {
    "description": "ansible.posix's mount: a mount point in fstab, mounted or not.",
    "args": {
        "path": {
            "type": "str",
            "required": True,
            "aliases": ["name"],
            "description": "The mount point (none for swap).",
        },
        "src": {"type": "str", "description": "The device (or UUID=..., tmpfs, a share, ...)."},
        "fstype": {"type": "str", "description": "The file system type."},
        "opts": {"type": "str", "description": "Mount options (defaults)."},
        "dump": {"type": "str", "default": "0", "description": "fstab's dump field."},
        "passno": {"type": "str", "default": "0", "description": "fstab's pass field."},
        "fstab": {"type": "str", "description": "Another file than /etc/fstab."},
        "boot": {"type": "bool", "default": True, "description": "false: add noauto (not mounted at boot)."},
        "backup": {"type": "bool", "default": False, "description": "Keep a copy of fstab as it was."},
        "opts_no_log": {"type": "bool", "default": False, "description": "Accepted (kiln logs no opts)."},
        "state": {
            "type": "str",
            "required": True,
            "choices": ["absent", "absent_from_fstab", "mounted", "present", "unmounted", "remounted"],
            "description": "present/absent_from_fstab edit fstab only; mounted/absent also (un)mount.",
        },
    },
    "required_if": [["state", "mounted", ["src", "fstype"]], ["state", "present", ["src", "fstype"]]],
    "check_mode": "full",
    "diff": True,
    "example": "- mount: {path: /srv/data, src: /dev/vdb1, fstype: ext4, state: present}",
}


def escape(value: Any) -> Any:
    if isinstance(value, int):
        return value
    return value.replace("\\", "\\134").replace(" ", "\\040").replace("&", "\\046")


def entry_args(params: Dict[str, Any]) -> Dict[str, Any]:
    """The collection's ``args``: the line's fields, fstab, boot and what it reports."""
    args: Dict[str, Any] = {"name": params["path"], "opts": "defaults", "dump": "0", "passno": "0"}
    args.update({"fstab": params.get("fstab") or "/etc/fstab", "boot": "yes", "warnings": []})
    for key in ("src", "fstype", "passno", "opts", "dump"):
        if params.get(key) is not None:
            args[key] = params[key]
    opts = args["opts"].split(",")
    if params["boot"] and "noauto" in opts:
        args["warnings"].append("Ignore the 'boot' due to 'opts' contains 'noauto'.")
    elif not params["boot"]:
        args["boot"] = "no"
        args["opts"] = ",".join(opts + ["noauto"])
    args["backup_file"] = ""
    return args


def set_line(lines: List[str], args: Dict[str, Any]) -> Tuple[List[str], bool]:
    """fstab with the mount point's line as wanted, and whether it changed."""
    wanted = {k: escape(v) for k, v in args.items() if k in FIELDS}
    out, exists, changed = [], False, False
    for line in lines:
        line = line if line.endswith("\n") else line + "\n"
        fields = line.split("#")[0].split()
        if not line.strip() or line.strip().startswith("#") or len(fields) not in (4, 5, 6):
            out.append(line)
            continue
        there: Dict[str, Any] = {"dump": 0, "passno": 0, **dict(zip(FIELDS, fields))}  # noqa: B905 - no strict= on 3.9
        if there["name"] != wanted["name"] or (
            "src" in args and there["name"] == "none" and there["fstype"] == "swap" and there["src"] != args["src"]
        ):
            out.append(line)
            continue
        exists = True
        for key in ("src", "fstype", "opts", "dump", "passno"):
            if there[key] != wanted[key]:
                there[key] = wanted[key]
                changed = True
        out.append(LINE % there if changed else line)
    if not exists:
        out.append(LINE % wanted)
        changed = True
    return out, changed


def unset_line(lines: List[str], args: Dict[str, Any]) -> Tuple[List[str], bool]:
    name, out, changed = escape(args["name"]), [], False
    for line in lines:
        words = line.split()
        if not line.strip() or line.strip().startswith("#") or len(words) != 6:
            out.append(line)
            continue
        there = dict(zip(FIELDS, words))  # noqa: B905 - no strict= on Python 3.9
        if there["name"] != name or (
            "src" in args and there["name"] == "none" and there["fstype"] == "swap" and there["src"] != args["src"]
        ):
            out.append(line)
            continue
        changed = True
    return out, changed


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    args = entry_args(params)
    fstab = args["fstab"]
    lines: Optional[List[str]] = None
    if os.path.exists(fstab):
        with open(fstab) as handle:
            lines = handle.readlines()
    return {"args": args, "lines": lines, "mounted": os.path.ismount(params["path"])}


def run_mount(ctx: Context, argv: List[str]) -> Tuple[int, str]:
    done = ctx.run(argv, check=False)
    return done.rc, ("" if done.rc == 0 else done.stdout + done.stderr)


def alternate(args: Dict[str, Any]) -> List[str]:
    return ["-T", args["fstab"]] if args["fstab"] != "/etc/fstab" else []


def remount(ctx: Context, args: Dict[str, Any], state: str) -> Tuple[int, str]:
    opts = "remount," + args["opts"] if state == "remounted" and args["opts"] != "defaults" else "remount"
    rc, msg = run_mount(ctx, [require_command("mount", "install mount"), "-o", opts, *alternate(args), args["name"]])
    if rc == 0:
        return 0, ""
    if state == "remounted" and args["opts"] != "defaults":
        raise ModuleError(
            "Options were specified with remounted, but the remount command failed. Failing in order to prevent an "
            'unexpected mount result. Try replacing this command with a "state: unmounted" followed by a '
            '"state: mounted" using the full desired mount options instead.'
        )
    rc, msg = run_mount(ctx, [require_command("umount", "install mount"), args["name"]])
    return (rc, msg) if rc else mount_now(ctx, args)


def mount_now(ctx: Context, args: Dict[str, Any]) -> Tuple[int, str]:
    return run_mount(ctx, [require_command("mount", "install mount"), *alternate(args), args["name"]])


def unmount(ctx: Context, path: str) -> None:
    rc, msg = run_mount(ctx, [require_command("umount", "install mount"), path])
    if rc:
        raise ModuleError(f"Error unmounting {path}: {msg}")


def write(params: Dict[str, Any], args: Dict[str, Any], lines: List[str]) -> None:
    if params["backup"]:
        args["backup_file"] = backup_local(args["fstab"])
    atomic_write(args["fstab"], "".join(lines).encode())


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    args, kind, name, check_mode = state["args"], params["state"], params["path"], ctx.check_mode
    if state["lines"] is None and not check_mode:  # the collection makes an empty fstab first
        os.makedirs(os.path.dirname(args["fstab"]) or ".", exist_ok=True)
        atomic_write(args["fstab"], b"")
    before = state["lines"] or []
    after, changed = before, False
    if kind in ("absent", "absent_from_fstab"):
        after, changed = unset_line(before, args)
        if changed and not check_mode:
            write(params, args, after)
            if kind == "absent" and state["mounted"]:
                unmount(ctx, name)
            if kind == "absent" and os.path.exists(name):
                try:
                    os.rmdir(name)
                except OSError as exc:
                    raise ModuleError(f"Error rmdir {name}: {exc}") from None
    elif kind == "unmounted":
        changed = state["mounted"]
        if changed and not check_mode:
            unmount(ctx, name)
    elif kind == "present":
        after, changed = set_line(before, args)
        if changed and not check_mode:
            write(params, args, after)
    elif kind == "remounted":
        changed = True
        if not check_mode:
            rc, msg = remount(ctx, args, kind)
            if rc:
                raise ModuleError(f"Error remounting {name}: {msg}")
    else:
        after, changed = mounted(params, state, ctx, args)
    diff = {"unified": unified_diff("".join(before), "".join(after), args["fstab"])} if after != before else None
    warnings = args.pop("warnings")  # ansible shows these as the task's warnings, not in its registered value
    return Result(changed, " ".join([f"{name} {kind}", *warnings]), diff=diff, data=args)


def mounted(
    params: Dict[str, Any], state: Dict[str, Any], ctx: Context, args: Dict[str, Any]
) -> Tuple[List[str], bool]:
    name, before, created = params["path"], state["lines"] or [], []
    if not os.path.exists(name) and not ctx.check_mode:
        current = ""
        for part in name.strip("/").split("/"):
            current = current + "/" + part
            if not os.path.exists(current):
                try:
                    os.mkdir(current)
                except OSError as exc:
                    raise ModuleError(f"Error making dir {name}: {exc}") from None
                created.append(current)
    after, changed = set_line(before, args)
    if changed and not ctx.check_mode:
        write(params, args, after)
    rc, msg = 0, ""
    if state["mounted"]:
        if changed and not ctx.check_mode:
            rc, msg = remount(ctx, args, "mounted")
    else:
        changed = True
        if not ctx.check_mode:
            rc, msg = mount_now(ctx, args)
    if rc:
        atomic_write(args["fstab"], "".join(before).encode())
        for folder in reversed(created):
            os.rmdir(folder)
        raise ModuleError(f"Error mounting {name}: {msg}")
    return after, changed
