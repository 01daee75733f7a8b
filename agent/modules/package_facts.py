"""The installed packages as Ansible's ``package_facts`` reports them (apt); changes nothing.

``ansible_facts.packages`` (and ``packages``) maps each package name to a list of its
installed versions ``{name, version, arch, category, origin, source}``. dpkg's status is read
with dpkg-query; the origin is the ``Origin`` of the apt list that carries the installed
version (empty when none does), as python3-apt gives it to ansible-core.

Example::

    - package_facts:
    - debug: {msg: "{{ ansible_facts.packages['openssl'][0].version }}"}
      when: "'openssl' in ansible_facts.packages"
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
from typing import Any, Dict, List, Tuple

from ..api import Context, ModuleError, Result

SCHEMA = {
    "description": "Gather the installed packages into ansible_facts.packages (Ansible's package_facts); "
    "changes nothing.",
    "args": {
        "manager": {
            "type": "list",
            "elements": "str",
            "default": ["auto"],
            "description": "The package managers to read: auto or apt (kiln reads dpkg's database on Debian).",
        },
        "strategy": {
            "type": "str",
            "choices": ["first", "all"],
            "default": "first",
            "description": "Accepted for Ansible; a Debian box has one package manager.",
        },
    },
    "check_mode": "full",
    "diff": False,
    "example": "- package_facts:",
}

LISTS = "/var/lib/apt/lists"
FORMAT = "${Package}\\t${Version}\\t${Architecture}\\t${Section}\\t${db:Status-Abbrev}\\n"


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    unknown = [m for m in params["manager"] if m not in ("auto", "apt", "dpkg")]
    if unknown:
        raise ModuleError(f"unsupported package managers: {', '.join(unknown)} (kiln reads apt on Debian)")
    if not shutil.which("dpkg-query"):
        raise ModuleError("no dpkg-query on the box: package_facts reads Debian's package database")
    native = ctx.run(["dpkg", "--print-architecture"]).stdout.strip()
    listed = ctx.run(["dpkg-query", "-W", "-f", FORMAT]).stdout
    return {"installed": _installed(listed, native), "origins": _origins()}


def _installed(listed: str, native: str) -> List[Dict[str, str]]:
    packages = []
    for line in listed.splitlines():
        name, version, arch, section, status = (line.split("\t") + [""] * 5)[:5]
        if not status.startswith("ii") and not status.startswith("hi"):
            continue
        shown = name if arch in (native, "all") else f"{name}:{arch}"
        packages.append({"name": shown, "version": version, "arch": arch, "category": section})
    return packages


def _origins() -> Dict[Tuple[str, str], Tuple[str, str]]:
    """(package, version) -> (Origin, Section) of the first apt list that carries it (apt's view wins over dpkg's)."""
    found: Dict[Tuple[str, str], Tuple[str, str]] = {}
    for packages_file in sorted(glob.glob(os.path.join(LISTS, "*_Packages"))):
        origin = _release_origin(packages_file)
        for key, section in _stanzas(packages_file).items():
            found.setdefault(key, (origin, section))
    return found


def _release_origin(packages_file: str) -> str:
    prefix = os.path.basename(packages_file).split("_dists_")[0]
    suite = os.path.basename(packages_file).split("_dists_")[-1].split("_")[0]
    for name in ("InRelease", "Release"):
        path = os.path.join(LISTS, f"{prefix}_dists_{suite}_{name}")
        if os.path.exists(path):
            with open(path, errors="replace") as handle:
                for line in handle:
                    if line.startswith("Origin:"):
                        return line.split(":", 1)[1].strip()
    return ""


def _stanzas(path: str) -> Dict[Tuple[str, str], str]:
    """(package, version) -> section, for each stanza of a Packages file."""
    found: Dict[Tuple[str, str], str] = {}
    fields: Dict[str, str] = {}
    with open(path, errors="replace") as handle:
        for line in itertools.chain(handle, ["\n"]):
            if line.strip():
                key, _, value = line.partition(": ")
                if key in ("Package", "Version", "Section"):
                    fields[key] = value.strip()
                continue
            if "Package" in fields and "Version" in fields:
                found[(fields["Package"], fields["Version"])] = fields.get("Section", "")
            fields = {}
    return found


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    facts: Dict[str, List[Dict[str, str]]] = {}
    for package in state["installed"]:
        base = package["name"].split(":")[0]
        origin, section = state["origins"].get((base, package["version"]), ("", package["category"]))
        facts.setdefault(package["name"], []).append(dict(package, category=section, origin=origin, source="apt"))
    return Result(False, f"{len(facts)} packages", data={"ansible_facts": {"packages": facts}})
