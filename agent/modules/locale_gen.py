"""community.general's ``locale_gen``: locales generated or removed, through /etc/locale.gen, as the collection does.

A locale must be listed in /etc/locale.gen (commented or not) or /usr/share/i18n/SUPPORTED, or
already generated (``locale -a``). It is present when ``locale -a`` lists it (``.utf8`` read as
``.UTF-8``). To change that, its /etc/locale.gen line is uncommented (``present``) or commented
(``# name charset``, ``absent``) and ``locale-gen`` runs. Changed means ``locale -a`` says otherwise
afterwards; in check mode nothing runs and nothing is reported changed, as the collection does.
Needs the ``locales`` package (Debian's /etc/locale.gen); Ubuntu's old /var/lib/locales/supported.d
(deprecated in the collection) is not supported.

Example::

    - community.general.locale_gen: {name: [en_US.UTF-8, de_DE.UTF-8]}
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List

from ..api import Context, ModuleError, Result, atomic_write, require_command

LOCALE_GEN = "/etc/locale.gen"
LEGACY = "/var/lib/locales/supported.d"
SUPPORTED = "/usr/share/i18n/SUPPORTED"
AVAILABLE = re.compile(r"^\s*#?\s*(?P<locale>\S+[\._\S]+) (?P<charset>\S+)\s*$")
NORMALIZED = {
    ".utf8": ".UTF-8", ".eucjp": ".EUC-JP", ".iso885915": ".ISO-8859-15", ".cp1251": ".CP1251", ".koi8r": ".KOI8-R",
    ".armscii8": ".ARMSCII-8", ".euckr": ".EUC-KR", ".gbk": ".GBK", ".gb18030": ".GB18030", ".euctw": ".EUC-TW",
}  # fmt: skip

SCHEMA = {
    "description": "community.general's locale_gen: generate or remove locales (/etc/locale.gen, locale-gen).",
    "args": {
        "name": {"type": "list", "elements": "str", "required": True, "description": "The locales (en_US.UTF-8)."},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present", "description": "Wanted."},
    },
    "check_mode": "full",
    "diff": False,
    "example": "- locale_gen: {name: en_US.UTF-8}",
}


def fix_case(name: str) -> str:
    for written, read in NORMALIZED.items():
        name = name.replace(written, read)
    return name


def missing(names: List[str], generated: str) -> List[str]:
    """The names ``locale -a`` does not list."""
    have = {fix_case(line) for line in generated.splitlines()}
    return [name for name in names if fix_case(name) not in have]


def unavailable(names: List[str], lines: List[str], generated: str) -> List[str]:
    listed = {m.group("locale") for m in (AVAILABLE.match(line) for line in lines) if m}
    return missing([name for name in names if name not in listed], generated)


def edited(lines: List[str], names: List[str], enabled: bool) -> List[str]:
    """/etc/locale.gen with the names' lines uncommented (or commented), as the collection rewrites them."""
    rules = []
    for name in names:
        search = re.compile(r"^#?\s*%s (?P<charset>.+)" % re.escape(name))
        rules.append((search, (r"%s \g<charset>" if enabled else r"# %s \g<charset>") % name))
    out = []
    for line in lines:
        for search, replace in rules:
            line = search.sub(replace, line)
        out.append(line)
    return out


def generated(ctx: Context) -> str:
    return ctx.run([require_command("locale", "install libc-bin"), "-a"]).stdout


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    if not os.path.exists(LOCALE_GEN):
        if os.path.exists(LEGACY):
            raise ModuleError(f"kiln's locale_gen edits {LOCALE_GEN}; this box has Ubuntu's old {LEGACY} only")
        raise ModuleError(f'{LEGACY} and {LOCALE_GEN} are missing. Is the package "locales" installed?')
    try:
        with open(SUPPORTED) as handle:
            lines = handle.readlines()
    except OSError as exc:
        raise ModuleError(str(exc)) from None
    listed = generated(ctx)
    absent = unavailable(params["name"], lines, listed)
    if absent:
        raise ModuleError(
            "The following locales you have entered are not available on your system: " + ", ".join(absent)
        )
    return {"present": not missing(params["name"], listed)}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    data = {"name": params["name"], "ubuntu_mode": False, "mechanism": "glibc"}
    wanted = params["state"] == "present"
    if state["present"] == wanted or ctx.check_mode:
        return Result(False, f"{', '.join(params['name'])} {params['state']}", data=data)
    with open(LOCALE_GEN) as handle:
        lines = handle.readlines()
    atomic_write(LOCALE_GEN, "".join(edited(lines, params["name"], wanted)).encode())
    ctx.run([require_command("locale-gen", "install locales")])
    changed = (not missing(params["name"], generated(ctx))) != state["present"]
    return Result(changed, f"{', '.join(params['name'])} {params['state']}", data=data)
