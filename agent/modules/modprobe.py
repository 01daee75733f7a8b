"""community.general's ``modprobe``: a kernel module loaded or not, and at boot or not, as the collection does it.

``state`` loads (``modprobe NAME PARAMS``) or unloads (``modprobe -r``) the module unless
/proc/modules (or the kernel's modules.builtin) already says so; ``persistent: present`` writes
/etc/modules-load.d/NAME.conf and, when the ``params`` there differ, comments out the old
``options NAME ...`` lines of /etc/modprobe.d and writes /etc/modprobe.d/NAME.conf;
``persistent: absent`` comments out the module's lines in both folders. Files are rewritten as the
collection rewrites them. In a container (no /proc/modules, no privilege to load) it fails, as the
collection's does.

Example::

    - community.general.modprobe: {name: br_netfilter, state: present, persistent: present}
"""

from __future__ import annotations

import os
import platform
import re
import shlex
from typing import Any, Dict, List

from ..api import Context, ModuleError, Result, require_command

MODULES_LOAD = "/etc/modules-load.d"
OPTIONS = "/etc/modprobe.d"

SCHEMA = {
    "description": "community.general's modprobe: load or unload a kernel module, now and at boot.",
    "args": {
        "name": {"type": "str", "required": True, "description": "The kernel module."},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present", "description": "Loaded."},
        "params": {"type": "str", "default": "", "description": "Its parameters (a=1 b=2)."},
        "persistent": {
            "type": "str",
            "choices": ["disabled", "present", "absent"],
            "default": "disabled",
            "description": "present/absent: loaded at boot or not (modules-load.d, modprobe.d); disabled: untouched.",
        },
    },
    "check_mode": "full",
    "diff": False,
    "example": "- modprobe: {name: br_netfilter, persistent: present}",
}


class Persistence:
    """The module's lines in modules-load.d and modprobe.d, read and rewritten as the collection does."""

    def __init__(self, name: str, params: str, modules_dir: str = MODULES_LOAD, options_dir: str = OPTIONS) -> None:
        self.name, self.params = name, params
        self.modules_dir, self.options_dir = modules_dir, options_dir
        self.module_line = re.compile(r"^ *{0} *(?:[#;].*)?\n?\Z".format(name))
        self.option_line = re.compile(r"^options {0} \w+=\S+ *(?:[#;].*)?\n?\Z".format(name))
        self.option_value = re.compile(r"^options {0} (\w+=\S+) *(?:[#;].*)?\n?\Z".format(name))

    @staticmethod
    def files(folder: str) -> List[str]:
        if not os.path.isdir(folder):
            return []
        return [p for p in (os.path.join(folder, n) for n in os.listdir(folder)) if os.path.isfile(p)]

    def loaded_at_boot(self) -> bool:
        return any(self.module_line.match(line) for path in self.files(self.modules_dir) for line in read(path))

    def boot_params(self) -> set:
        found = set()
        for path in self.files(self.options_dir):
            for line in read(path):
                match = self.option_value.match(line)
                if match:
                    found.add(match.group(1))
        return found

    def params_set(self) -> bool:
        return set(self.params.split()) == self.boot_params()

    def comment_out(self, folder: str, pattern: "re.Pattern[str]", write: bool) -> None:
        for path in self.files(folder):
            lines = read(path)
            if any(pattern.match(line) for line in lines) and write:
                with open(path, "w") as handle:  # joined with newlines as the collection joins them
                    handle.write("\n".join("#" + line if pattern.match(line) else line for line in lines))

    def make_present(self, write: bool) -> bool:
        changed = False
        if not self.loaded_at_boot():
            if write:
                with open(os.path.join(self.modules_dir, self.name + ".conf"), "w") as handle:
                    handle.write(self.name + "\n")
            changed = True
        if not self.params_set():
            self.comment_out(self.options_dir, self.option_line, write)
            if write:
                with open(os.path.join(self.options_dir, self.name + ".conf"), "w") as handle:
                    handle.write("\n".join(f"options {self.name} {p}" for p in self.params.split()) + "\n")
            changed = True
        return changed

    def make_absent(self, write: bool) -> bool:
        changed = False
        if self.loaded_at_boot():
            self.comment_out(self.modules_dir, self.module_line, write)
            changed = True
        if self.boot_params():
            self.comment_out(self.options_dir, self.option_line, write)
            changed = True
        return changed


def read(path: str) -> List[str]:
    with open(path) as handle:
        return handle.readlines()


def loaded(name: str) -> bool:
    try:
        with open("/proc/modules") as handle:
            if any(line.startswith(name.replace("-", "_") + " ") for line in handle):
                return True
        with open(os.path.join("/lib/modules/", platform.release(), "modules.builtin")) as handle:
            return any(line.rstrip().endswith("/" + name + ".ko") for line in handle)
    except OSError as exc:
        raise ModuleError(str(exc)) from None


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return {"modprobe": require_command("modprobe", "install kmod"), "loaded": loaded(params["name"])}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    name, args, tool, changed = params["name"], shlex.split(params["params"]), state["modprobe"], False
    dry = ["-n"] if ctx.check_mode else []
    data = {"name": name, "params": params["params"], "state": params["state"]}
    if params["state"] == "present" and not state["loaded"]:
        done = ctx.run([tool, *dry, name, *args], check=False)
        if done.rc != 0:
            raise ModuleError(done.stderr, rc=done.rc, stdout=done.stdout, stderr=done.stderr, **data)
        changed = ctx.check_mode or loaded(name)
    elif params["state"] == "absent" and state["loaded"]:
        done = ctx.run([tool, "-r", name, *dry], check=False)
        if done.rc != 0:
            raise ModuleError(done.stderr, rc=done.rc, stdout=done.stdout, stderr=done.stderr, **data)
        changed = True
    boot = Persistence(name, params["params"])
    if params["persistent"] == "present" and not (boot.loaded_at_boot() and boot.params_set()):
        changed = boot.make_present(not ctx.check_mode) or changed
    elif params["persistent"] == "absent" and (boot.loaded_at_boot() or boot.boot_params()):
        changed = boot.make_absent(not ctx.check_mode) or changed
    return Result(changed, f"{name} {params['state']}", data=data)
