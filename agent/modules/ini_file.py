"""community.general's ``ini_file``: an option (or a section) of an INI file, edited as the collection edits it.

The section runs from its ``[name]`` line to the next ``[`` line (with ``section_has_values``: the
first section of that name whose options hold those values); no ``section``: the lines before the
first section. ``present`` sets the option: a line with one of the wanted values is kept (rewritten
as ``option = value``), other lines of the option take the remaining values (``exclusive``, the
default: the rest of them go), and missing values are added after the section's last non-blank,
non-comment line. Commented-out options (``#option = x``) count unless ``modify_inactive_option:
false``. ``absent`` removes the option's lines (with ``exclusive: false``, only those with the given
values), or the whole section when no option is given. A missing section is added at the end of the
file. A file without a final newline gets one (a change). Owner, group and mode are set like ``file``.

Example::

    - community.general.ini_file: {path: /etc/app.ini, section: server, option: port, value: "8080"}
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, atomic_write, backup_local, unified_diff
from . import file as filemod

FAKE_SECTION = "ad01e11446efb704fcdbdb21f2c43757423d91c5"  # the collection's: matches no real section
BLANK_OR_COMMENT = re.compile(r"^[ \t]*([#;].*)?$")

SCHEMA = {
    "description": "community.general's ini_file: set or remove an option (or a section) of an INI file.",
    "args": {
        "path": {"type": "path", "required": True, "aliases": ["dest"], "description": "The INI file."},
        "section": {"type": "str", "description": "The section; none: the lines before the first section."},
        "section_has_values": {
            "type": "list",
            "elements": "dict",
            "description": "Among sections of the same name, the one whose options have these values: a list of "
            "{option, value} or {option, values}.",
        },
        "option": {"type": "str", "description": "The option; none with state=absent: the whole section."},
        "value": {"type": "str", "description": "The option's value."},
        "values": {"type": "list", "elements": "str", "description": "The option's values (one line each)."},
        "backup": {"type": "bool", "default": False, "description": "Keep a copy of the file when it changes."},
        "state": {
            "type": "str",
            "default": "present",
            "choices": ["absent", "present"],
            "description": "present or absent.",
        },
        "exclusive": {
            "type": "bool",
            "default": True,
            "description": "present: the option's other lines go; absent: all its lines go (false: only the values).",
        },
        "no_extra_spaces": {"type": "bool", "default": False, "description": "Write option=value (no spaces)."},
        "ignore_spaces": {"type": "bool", "default": False, "description": "A line differing only in spaces is kept."},
        "allow_no_value": {"type": "bool", "default": False, "description": "An option without a value (a bare line)."},
        "modify_inactive_option": {
            "type": "bool",
            "default": True,
            "description": "Commented-out options (#option = x) count as the option.",
        },
        "create": {"type": "bool", "default": True, "description": "Create the file when it is missing."},
        "follow": {"type": "bool", "default": False, "description": "Edit a symlink's target."},
        "mode": {"type": "mode", "description": "Mode, quoted octal or symbolic."},
        "owner": {"type": "str", "description": "Owner."},
        "group": {"type": "str", "description": "Group."},
    },
    "mutually_exclusive": [["value", "values"]],
    "check_mode": "full",
    "diff": True,
    "example": '- ini_file: {path: /etc/app.ini, section: server, option: port, value: "8080"}',
}


# --- the edit (pure) --------------------------------------------------------------------------------
def _active(option: str, line: str) -> Optional["re.Match[str]"]:
    return re.match(f"()()( |\t)*({re.escape(option)})( |\t)*(=|$)( |\t)*(.*)", line)


def _any(option: str, line: str) -> Optional["re.Match[str]"]:
    return re.match(f"( |\t)*([#;]?)( |\t)*({re.escape(option)})( |\t)*(=|$)( |\t)*(.*)", line)


def _has_values(conditions: Optional[List[Dict[str, Any]]], lines: List[str]) -> bool:
    for condition in conditions or []:
        if not any(
            (found := _any(condition["option"], line))
            and (not condition["values"] or found.group(8) in condition["values"])
            for line in lines
        ):
            return False
    return True


class Edit:
    """One run of the collection's algorithm over the file's lines."""

    def __init__(self, params: Dict[str, Any], values: List[str], conditions: Optional[List[Dict[str, Any]]]) -> None:
        self.p = params
        self.values = values
        self.conditions = conditions
        self.changed = False
        self.msg = "OK"
        self.assign = "%s=%s\n" if params["no_extra_spaces"] else "%s = %s\n"
        self.match = _any if params["modify_inactive_option"] else _active

    def update_line(self, lines: List[str], marks: List[int], index: int, newline: str) -> None:
        option = self.p["option"]
        differs = None
        if self.p["ignore_spaces"]:
            old = _any(option, lines[index])
            if old and not old.group(2):
                differs = old.group(8) != _any(option, newline).group(8)
        if differs is None:
            differs = lines[index] != newline
        if differs:
            lines[index] = newline
            self.changed, self.msg = True, "option changed"
        marks[index] = 1

    def run(self, lines: List[str]) -> Tuple[List[str], bool, str]:
        p, option, state = self.p, self.p.get("option"), self.p["state"]
        lines = list(lines) or ["\n"]
        if lines[-1] == "" or lines[-1][-1] != "\n":
            lines[-1] += "\n"
            self.changed = True
        lines = [f"[{FAKE_SECTION}]"] + lines + ["["]
        section = p.get("section") or FAKE_SECTION
        header = re.compile(r"^\[\s*%s\s*]" % re.escape(section.strip()))
        within, start, end = False, 0, 0
        for index, line in enumerate(lines):
            if within and line.startswith("["):
                if _has_values(self.conditions, lines[start:index]):
                    end = index
                    break
                within, start, end = False, 0, 0
            if header.match(line):
                within, start = True, index
        before, body, after = lines[:start], lines[start:end], lines[end:]
        marks = [0] * len(body)
        no_value_present = False
        if state == "present" and option:
            no_value_present = self.keep_wanted(body, marks)
        if state == "present" and p["exclusive"] and not p["allow_no_value"]:
            self.take_remaining(body, marks)
        if state == "present":
            self.add_missing(body, no_value_present)
        if state == "absent":
            body = self.remove(body)
        lines = (before + body + after)[1:-1]
        if not within and state == "present":
            lines += self.new_section(section)
        return lines, self.changed, self.msg

    def keep_wanted(self, body: List[str], marks: List[int]) -> bool:
        option, no_value = self.p["option"], False
        for index, line in enumerate(body):
            found = self.match(option, line)
            if not found:
                continue
            if self.values and found.group(8) in self.values:
                value = found.group(8)
                if not value and self.p["allow_no_value"]:
                    newline, no_value = f"{option}\n", True
                else:
                    newline = self.assign % (option, value)
                self.update_line(body, marks, index, newline)
                self.values.remove(value)
            elif not self.values and self.p["allow_no_value"]:
                self.update_line(body, marks, index, f"{option}\n")
                return True
        return no_value

    def take_remaining(self, body: List[str], marks: List[int]) -> None:
        option = self.p["option"]
        if self.values:
            for index, line in enumerate(body):
                if not marks[index] and self.match(option, line):
                    self.update_line(body, marks, index, self.assign % (option, self.values.pop(0)))
                    if not self.values:
                        break
        for index in range(len(body) - 1, 0, -1):
            if not marks[index] and self.match(option, body[index]):
                del body[index]
                del marks[index]
                self.changed, self.msg = True, "option changed"

    def add_missing(self, body: List[str], no_value_present: bool) -> None:
        option = self.p.get("option")
        for index in range(len(body), 0, -1):
            if BLANK_OR_COMMENT.match(body[index - 1]):
                continue
            if option and self.values:
                for value in self.values[::-1]:
                    body.insert(index, self.assign % (option, value))
                    self.changed, self.msg = True, "option added"
            elif option and not self.values and self.p["allow_no_value"] and not no_value_present:
                body.insert(index, f"{option}\n")
                self.changed, self.msg = True, "option added"
            break

    def remove(self, body: List[str]) -> List[str]:
        option = self.p.get("option")
        if not option:
            if body:
                self.changed, self.msg = True, "section removed"
            return []
        if self.p["exclusive"]:
            kept = [line for line in body if not _active(option, line)]
        elif self.values:
            kept = [line for line in body if not ((m := _active(option, line)) and m.group(8) in self.values)]
        else:
            kept = body
        if kept != body:
            self.changed, self.msg = True, "option changed"
        return kept

    def new_section(self, section: str) -> List[str]:
        option, out = self.p.get("option"), [f"[{section}]\n"]
        self.msg = "section and option added"
        for condition in self.conditions or []:
            if condition["option"] != option:
                if condition["values"]:
                    out += [self.assign % (condition["option"], value) for value in condition["values"]]
                elif self.p["allow_no_value"]:
                    out.append(f"{condition['option']}\n")
            elif not self.p["exclusive"]:
                self.values += [value for value in condition["values"] if value not in self.values]
        if option and self.values:
            out += [self.assign % (option, value) for value in self.values]
        elif option and not self.values and self.p["allow_no_value"]:
            out.append(f"{option}\n")
        else:
            self.msg = "only section added"
        self.changed = True
        return out


def wanted_values(params: Dict[str, Any]) -> List[str]:
    if params.get("value") is not None:
        given = [params["value"]]
    else:
        given = params.get("values") or []
    unique: List[str] = []
    for value in given:
        if value is not None and value not in unique:
            unique.append(str(value))
    return unique


def conditions_of(params: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    given = params.get("section_has_values")
    if not given:
        return given
    for condition in given:
        if "option" not in condition or (condition.get("value") is not None and condition.get("values")):
            raise ModuleError("section_has_values: each item needs option, and value or values (not both)")
    return [
        {"option": c["option"], "values": [c["value"]] if c.get("value") is not None else list(c.get("values") or [])}
        for c in given
    ]


def edit(params: Dict[str, Any], lines: List[str]) -> Tuple[List[str], bool, str]:
    return Edit(params, wanted_values(params), conditions_of(params)).run(lines)


# --- the module -------------------------------------------------------------------------------------
def target_of(params: Dict[str, Any]) -> str:
    path = params["path"]
    return os.path.realpath(path) if params["follow"] and os.path.islink(path) else path


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    has_value = params.get("value") is not None or params.get("values")
    if params["state"] == "present" and not params["allow_no_value"] and not has_value:
        raise ModuleError("Parameter 'value(s)' must be defined if state=present and allow_no_value=False.")
    target = target_of(params)
    if not os.path.exists(target):
        if not params["create"]:
            raise ModuleError(f"Destination {target} does not exist!", rc=257, changed=False)
        return {"target": target, "lines": None}
    with open(target, encoding="utf-8-sig") as handle:
        return {"target": target, "lines": handle.readlines(), "attrs": filemod.check({"path": target}, ctx)}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    target = state["target"]
    before = "".join(state["lines"] or [])
    lines, changed, msg = edit(params, state["lines"] or [])
    after = "".join(lines)
    data: Dict[str, Any] = {"path": params["path"]}
    if changed and not ctx.check_mode:
        folder = os.path.dirname(target)
        if folder and not os.path.exists(folder):
            os.makedirs(folder)
        if params["backup"] and state["lines"] is not None:
            data["backup_file"] = backup_local(target)
        atomic_write(os.path.abspath(target), after.encode(), mode=None if state["lines"] is not None else 0o644)
    if not ctx.check_mode and os.path.exists(params["path"]):
        wanted = filemod.attributes_wanted(params, filemod.check({"path": params["path"]}, ctx))
        if wanted:
            filemod.set_attributes(params["path"], wanted)
            changed = True
    diff = {"unified": unified_diff(before, after, target)} if after != before else None
    return Result(changed, msg, diff=diff, data=data)
