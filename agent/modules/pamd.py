"""community.general's ``pamd``: edit one rule of a PAM service file, as the collection edits it.

The file is read into lines: comments (``#``), ``@include`` lines, empty lines, and rules (type,
control, module path, arguments). A rule is found by its type, control and module path, all
three as written in the task; a bracketed control matches in its normal form
(``[success=ok default=bad]``, single spaces). What each state does is the collection's, quirks
included, so that the file comes out byte for byte as ansible-playbook leaves it:

- ``updated`` changes the type, control, path or arguments of every matching rule
  (``module_arguments: ''`` removes all arguments);
- ``before``/``after`` insert the new rule next to each matching rule unless the nearest rule
  on that side (comments and empty lines skipped) is that rule already; the comments and empty
  lines skipped over are dropped, as the collection drops them;
- ``args_present`` adds missing arguments and sets ``key=value`` ones to the given value;
  ``args_absent`` removes the listed arguments; ``absent`` removes every matching rule.

When anything changed, the whole file is written again: every rule in the collection's layout
(type padded to 11 columns, single spaces) and a ``# Updated by Ansible - <time>`` line second
(replacing the one there). Its owner and mode are kept. A file with a line the collection cannot
read (an indented comment, a malformed control) fails, changed or not. New arguments are added in
the order given (the collection adds them in its sets' order, which varies from run to run).

Example::

    - community.general.pamd:
        name: sshd
        type: session
        control: optional
        module_path: pam_motd.so
        state: absent
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..api import Context, ModuleError, Result, atomic_write, backup_local, unified_diff

TYPES = ["account", "-account", "auth", "-auth", "password", "-password", "session", "-session"]
SIMPLE_CONTROLS = ("required", "requisite", "sufficient", "optional", "include", "substack", "definitive")
CONTROL_VALUES = (
    "success open_err symbol_err service_err system_err buf_err perm_denied auth_err cred_insufficient "
    "authinfo_unavail user_unknown maxtries new_authtok_reqd acct_expired session_err cred_unavail cred_expired "
    "cred_err no_module_data conv_err authtok_err authtok_recover_err authtok_lock_busy authtok_disable_aging "
    "try_again ignore abort authtok_expired module_unknown bad_item conv_again incomplete default"
).split()
CONTROL_ACTIONS = ("ignore", "bad", "die", "ok", "done", "reset")
STATES = ["absent", "before", "after", "args_absent", "args_present", "updated"]
RULE = re.compile(
    r"(?P<rule_type>-?(?:auth|account|session|password))\s+(?P<control>\[.*\]|\S*)\s+(?P<path>\S*)\s*(?P<args>.*)\s*"
)
ARGUMENT = re.compile(r"(\[.*\]|\S*)")
MARK = "# Updated by Ansible"

SCHEMA = {
    "description": "community.general's pamd: change, insert or remove a rule of a PAM service file, as the "
    "collection edits it.",
    "args": {
        "name": {"type": "str", "required": True, "description": "The PAM service file, e.g. sshd or common-auth."},
        "type": {"type": "str", "required": True, "choices": TYPES, "description": "Type of the rule to find."},
        "control": {
            "type": "str",
            "required": True,
            "description": "Control of the rule to find; a bracketed one as '[success=1 default=ignore]'.",
        },
        "module_path": {"type": "str", "required": True, "description": "Module path of the rule to find."},
        "new_type": {"type": "str", "choices": TYPES, "description": "The new (or inserted) rule's type."},
        "new_control": {"type": "str", "description": "The new (or inserted) rule's control."},
        "new_module_path": {"type": "str", "description": "The new (or inserted) rule's module path."},
        "module_arguments": {
            "type": "raw",
            "description": "A list of arguments, or one string split at commas (as Ansible splits it): updated "
            "replaces the rule's arguments ('' removes them), args_present adds them or sets key=value ones, "
            "args_absent removes them; before/after give them to the inserted rule.",
        },
        "state": {
            "type": "str",
            "default": "updated",
            "choices": STATES,
            "description": "updated (change the matching rules), before/after (insert the new rule next to "
            "them), args_present, args_absent, absent (remove them).",
        },
        "path": {"type": "path", "default": "/etc/pam.d", "description": "The directory of the service files."},
        "backup": {
            "type": "bool",
            "default": False,
            "description": "Keep a copy of the file as it was (name.PID.YYYY-MM-DD@HH:MM:SS~) when it changes.",
        },
    },
    "required_if": [
        ["state", "args_present", ["module_arguments"]],
        ["state", "args_absent", ["module_arguments"]],
        ["state", "before", ["new_control", "new_type", "new_module_path"]],
        ["state", "after", ["new_control", "new_type", "new_module_path"]],
    ],
    "check_mode": "full",
    "diff": True,
    "example": "- pamd: {name: sshd, type: session, control: optional, module_path: pam_motd.so, state: absent}",
}


# --- the file as lines ------------------------------------------------------------------------------
@dataclass
class Text:
    """A line kept as written: a comment, an @include or an empty line."""

    kind: str  # comment | include | empty
    line: str

    def problem(self) -> Optional[str]:
        """Why the collection refuses this line (it checks the unstripped start), or None."""
        valid = {"comment": "#", "include": "@include"}.get(self.kind)
        if self.kind == "empty" or self.line.startswith(valid or ""):
            return None
        return f"Rule is not valid {self.line}"

    def render(self) -> str:
        return self.line


@dataclass
class Rule:
    type: str
    control: Union[str, List[str]]  # a bracketed control as its words (value=action)
    path: str
    args: List[str] = field(default_factory=list)

    @property
    def control_text(self) -> str:
        return "[" + " ".join(self.control) + "]" if isinstance(self.control, list) else self.control

    def matches(self, rule_type: Optional[str], control: Optional[str], path: Optional[str]) -> bool:
        return rule_type == self.type and control == self.control_text and path == self.path

    def render(self) -> str:
        head = f"{self.type: <11}{self.control_text} {self.path}"
        return f"{head} {' '.join(self.args)}" if self.args else head

    def problem(self) -> Optional[str]:
        if self.type not in TYPES:
            return f"Rule type, {self.type}, is not valid in rule {self.render()}"
        if isinstance(self.control, str):
            if self.control not in SIMPLE_CONTROLS:
                return f"Rule control, {self.control}, is not valid in rule {self.render()}"
            return None
        for word in self.control:
            parts = word.split("=")
            if len(parts) != 2:
                return f"Rule control {self.control_text} cannot be read: '{word}' is not value=action"
            value, action = parts
            if value not in CONTROL_VALUES:
                return f"Rule control value, {value}, is not valid in rule {self.render()}"
            if action not in CONTROL_ACTIONS and not (action.isdigit() and int(action) >= 0):
                return f"Rule control action, {action}, is not valid in rule {self.render()}"
        return None


Line = Union[Text, Rule]


def parse_control(text: str) -> Union[str, List[str]]:
    if text.startswith("["):
        return text.replace(" = ", "=").replace("[", "").replace("]", "").split(" ")
    return text


def make_rule(rule_type: str, control: str, path: str, args: Any = None) -> Rule:
    return Rule(rule_type, parse_control(control), path, parse_arguments(args) or [])


def parse_arguments(arguments: Any, none_if_unset: bool = False) -> Optional[List[str]]:
    """Arguments as words; a bracketed argument (``[a b]``) is one word. ``['']`` is no arguments."""
    if arguments is None:
        return None if none_if_unset else []
    if isinstance(arguments, list) and len(arguments) == 1 and not arguments[0]:
        return []
    if not isinstance(arguments, list):
        arguments = [arguments]
    return [word for argument in arguments for word in ARGUMENT.findall(argument) if word]


def as_list(value: Any) -> Optional[List[str]]:
    """module_arguments as Ansible's list type makes it: a string is split at commas."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def parse(content: str) -> List[Line]:
    lines: List[Line] = []
    for line in content.splitlines():
        if line.lstrip().startswith("#"):
            lines.append(Text("comment", line))
        elif line.lstrip().startswith("@include"):
            lines.append(Text("include", line))
        elif line.strip() == "":
            lines.append(Text("empty", line))
        else:
            found = RULE.search(line)
            if found is None:
                raise ModuleError(f"pamd: cannot read the line {line!r} as a PAM rule (type control module args)")
            lines.append(make_rule(found["rule_type"], found["control"], found["path"], found["args"]))
    return lines


def render(lines: List[Line], when: str) -> str:
    """The file as the collection writes it: its mark second, replacing an earlier one."""
    out = [line.render() for line in lines]
    mark = f"{MARK} - {when}"
    if len(out) <= 1:
        out[0:0] = ["", mark]
    elif out[1].startswith(MARK):
        out[1] = mark
    else:
        out.insert(1, mark)
    return "\n".join(out) + "\n"


def problem(lines: List[Line]) -> Optional[str]:
    for line in lines:
        found = line.problem()
        if found:
            return found
    return None


# --- the edits (each returns how many rules changed) ---------------------------------------------
def _targets(lines: List[Line], rule_type: str, control: str, path: str) -> List[Rule]:
    return [line for line in lines if isinstance(line, Rule) and line.matches(rule_type, control, path)]


def _index(lines: List[Line], wanted: Line) -> int:
    return next(index for index, line in enumerate(lines) if line is wanted)


def _skipped(line: Line) -> bool:
    return isinstance(line, Text) and line.kind in ("comment", "empty")


def update(lines: List[Line], find: Tuple[str, str, str], new: Tuple[Any, Any, Any], arguments: Any) -> int:
    new_type, new_control, new_path = new
    new_args = parse_arguments(arguments, none_if_unset=True)
    changes = 0
    for rule in _targets(lines, *find):
        changed = False
        if new_type and rule.type != new_type:
            rule.type, changed = new_type, True
        if new_control and rule.control_text != new_control:
            rule.control, changed = parse_control(new_control), True
        if new_path and rule.path != new_path:
            rule.path, changed = new_path, True
        if new_args is not None and rule.args != new_args:
            rule.args, changed = list(new_args), True
        changes += changed
    return changes


def insert_before(lines: List[Line], find: Tuple[str, str, str], new: Tuple[str, str, str], arguments: Any) -> int:
    changes = 0
    for rule in _targets(lines, *find):
        at = _index(lines, rule)
        nearest = at - 1
        while nearest >= 0 and _skipped(lines[nearest]):
            nearest -= 1
        if nearest < 0:  # no rule or include above: in right before it, the comments kept
            lines.insert(at, make_rule(*new, arguments))
            changes += 1
        elif not (isinstance(lines[nearest], Rule) and lines[nearest].matches(*new)):
            lines[nearest + 1 : at] = [make_rule(*new, arguments)]
            changes += 1
    return changes


def insert_after(lines: List[Line], find: Tuple[str, str, str], new: Tuple[str, str, str], arguments: Any) -> int:
    changes = 0
    for rule in _targets(lines, *find):
        at = _index(lines, rule)
        nearest = at + 1
        while nearest < len(lines) and _skipped(lines[nearest]):
            nearest += 1
        if nearest == len(lines):  # the last rule: the new one ends the file, what followed is dropped
            lines[at + 1 :] = [make_rule(*new, arguments)]
            changes += 1
        elif not (isinstance(lines[nearest], Rule) and lines[nearest].matches(*new)):
            lines[at + 1 : nearest] = [make_rule(*new, arguments)]
            changes += 1
    return changes


def _split_arguments(args: List[str]) -> Tuple[List[str], Dict[str, str]]:
    simple: List[str] = []
    valued: Dict[str, str] = {}
    for arg in args:
        if arg.startswith("["):
            continue
        if "=" in arg:
            parts = arg.split("=")
            if len(parts) != 2:
                raise ModuleError(f"pamd: cannot read the argument {arg!r} as key=value (it has more than one '=')")
            valued[parts[0]] = parts[1]
        elif arg not in simple:
            simple.append(arg)
    return simple, valued


def args_present(lines: List[Line], find: Tuple[str, str, str], arguments: Any) -> int:
    wanted = parse_arguments(arguments) or []
    if any(arg.startswith("[") for arg in wanted):
        raise ModuleError(
            "Unable to process bracketed '[' complex arguments with 'args_present'. Please use 'updated'."
        )
    changes = 0
    for rule in _targets(lines, *find):
        new_simple, new_valued = _split_arguments(wanted)
        simple, valued = _split_arguments(rule.args)
        added = [arg for arg in new_simple if arg not in simple]
        added += [f"{key}={value}" for key, value in new_valued.items() if key not in valued]
        changed = bool(added)
        rule.args = rule.args + added
        for key, value in new_valued.items():
            if key in valued and valued[key] != value:
                rule.args[rule.args.index(f"{key}={valued[key]}")] = f"{key}={value}"
                changed = True
        changes += changed
    return changes


def args_absent(lines: List[Line], find: Tuple[str, str, str], arguments: Any) -> int:
    unwanted = parse_arguments(arguments) or []
    changes = 0
    for rule in _targets(lines, *find):
        if set(rule.args) & set(unwanted):
            rule.args = [arg for arg in rule.args if arg not in unwanted]
            changes += 1
    return changes


def remove(lines: List[Line], find: Tuple[str, str, str]) -> int:
    changes = 0
    for rule in _targets(lines, *find):
        if len(lines) == 1:
            raise ModuleError(f"pamd: cannot remove the file's only line ({rule.render()}), as the collection cannot")
        del lines[_index(lines, rule)]
        changes += 1
    return changes


def edit(lines: List[Line], params: Dict[str, Any]) -> int:
    """Apply the step's state to ``lines`` (in place); the number of rules changed."""
    find = (params["type"], params["control"], params["module_path"])
    new = (params.get("new_type"), params.get("new_control"), params.get("new_module_path"))
    arguments = as_list(params.get("module_arguments"))
    state = params["state"]
    if state == "updated":
        return update(lines, find, new, arguments)
    if state == "before":
        return insert_before(lines, find, new, arguments)
    if state == "after":
        return insert_after(lines, find, new, arguments)
    if state == "args_present":
        return args_present(lines, find, arguments)
    if state == "args_absent":
        return args_absent(lines, find, arguments)
    return remove(lines, find)


# --- the module -------------------------------------------------------------------------------------
def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    path = os.path.join(params["path"], params["name"])
    try:
        with open(path) as handle:
            content = handle.read()
    except OSError as exc:
        raise ModuleError(f"Unable to open/read PAM module file {path} with error {exc}.") from None
    return {"path": path, "content": content}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    path, before = state["path"], state["content"]
    lines = parse(before)
    changes = edit(lines, params)
    found = problem(lines)
    if found:
        raise ModuleError(found)
    data: Dict[str, Any] = {"change_count": changes, "backupdest": ""}
    if not changes:
        return Result(False, f"{path}: no rule to change", data=data)
    after = render(lines, datetime.datetime.now().isoformat())
    diff = {"unified": unified_diff(before, after, path)}
    msg = f"{path}: {changes} rule(s) {params['state']}"
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode: not written)", diff=diff, data=data)
    if params["backup"]:
        data["backupdest"] = backup_local(path)
    atomic_write(os.path.realpath(path), after.encode(), ctx=ctx)
    return Result(True, msg, diff=diff, data=data)
