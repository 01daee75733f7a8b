"""Ansible's ``pip``: install or remove Python packages with the box's pip, in a virtualenv if asked.

Installed distributions are read first (``pip list --format=freeze``); packages named plainly
(``name``, ``name==1.0``, ``name>=1.0``) that are already as wanted leave pip uncalled. Otherwise
pip runs as Ansible runs it (``install``, ``install -U``, ``uninstall -y``; ``extra_args``; ``-r
requirements``) and the step changed when pip says it installed or removed something, or the
installed set differs. ``virtualenv`` is created first when missing (``virtualenv_command``, e.g.
``python3 -m venv``). Without a virtualenv the box's ``python3 -m pip`` is used.

Example::

    - pip: {name: requests, version: "2.31.0", virtualenv: /opt/app/venv, virtualenv_command: python3 -m venv}
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result

STATES = {
    "present": ["install"],
    "absent": ["uninstall", "-y"],
    "latest": ["install", "-U"],
    "forcereinstall": ["install", "-U", "--force-reinstall"],
}
PLAIN = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:(?:===|==|!=|~=|>=|<=|>|<)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*)$"
)
LANG = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "LC_MESSAGES": "C.UTF-8"}

SCHEMA = {
    "description": "Ansible's pip: install or remove Python packages (in a virtualenv if given).",
    "args": {
        "name": {"type": "list", "elements": "str", "description": "Package names, with version specifiers if any."},
        "version": {"type": "str", "description": "The version of the one package in name."},
        "requirements": {"type": "str", "description": "A requirements file on the box (pip -r)."},
        "state": {
            "type": "str",
            "choices": list(STATES),
            "default": "present",
            "description": "present, latest (pip install -U), absent, forcereinstall.",
        },
        "virtualenv": {"type": "path", "description": "The virtualenv to install into (created if missing)."},
        "virtualenv_command": {
            "type": "str",
            "default": "virtualenv",
            "description": "What creates the virtualenv, e.g. 'python3 -m venv'.",
        },
        "virtualenv_python": {"type": "str", "description": "The virtualenv's python (virtualenv only, not venv)."},
        "virtualenv_site_packages": {
            "type": "bool",
            "default": False,
            "description": "Let the virtualenv see the system's packages.",
        },
        "extra_args": {"type": "str", "description": "More pip arguments (e.g. --index-url, --no-index)."},
        "editable": {"type": "bool", "default": False, "description": "Install in editable mode (-e)."},
        "chdir": {"type": "path", "description": "Run pip in this directory."},
        "executable": {"type": "str", "description": "The pip to run (not with virtualenv)."},
        "umask": {"type": "str", "description": "The umask pip runs with (octal)."},
        "break_system_packages": {
            "type": "bool",
            "default": False,
            "description": "Let pip change the system's Python (PIP_BREAK_SYSTEM_PACKAGES).",
        },
    },
    "required_one_of": [["name", "requirements"]],
    "mutually_exclusive": [["name", "requirements"], ["executable", "virtualenv"]],
    "check_mode": "full",
    "diff": False,
    "example": "- pip: {name: requests, virtualenv: /opt/app/venv, virtualenv_command: python3 -m venv}",
}


# --- version specifiers, enough for name==1.0 / name>=1.0,<2 (the box has no `packaging`) -------------------------
def _key(version: str) -> Tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.+!_-]", version))


def _compatible(have: str, want: str) -> bool:
    parts = want.split(".")
    return _key(have) >= _key(want) and _key(have)[: len(parts) - 1] == _key(".".join(parts[:-1]))


COMPARE: Dict[str, Callable[[str, str], bool]] = {
    "===": lambda have, want: have == want,
    "==": lambda have, want: (
        re.match(re.escape(want[:-1]), have) is not None if want.endswith("*") else _key(have) == _key(want)
    ),
    "!=": lambda have, want: _key(have) != _key(want),
    ">=": lambda have, want: _key(have) >= _key(want),
    "<=": lambda have, want: _key(have) <= _key(want),
    ">": lambda have, want: _key(have) > _key(want),
    "<": lambda have, want: _key(have) < _key(want),
    "~=": _compatible,
}


class Package:
    """A requirement as written: its canonical name and version specifiers, if it is a plain one."""

    def __init__(self, text: str, version: Optional[str] = None) -> None:
        if version:
            version = version.strip()
            text = f"{text}=={version}" if version[:1].isdigit() else f"{text} {version}"
        self.text = text
        match = PLAIN.match(text)
        self.plain = match is not None
        self.name = canonical(match.group(1)) if match else text
        self.specs = re.findall(r"(===|==|!=|~=|>=|<=|>|<)\s*([A-Za-z0-9.*+!_-]+)", match.group(2)) if match else []

    def satisfied_by(self, version: str) -> bool:
        return self.plain and all(COMPARE[op](version, want) for op, want in self.specs)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- reading ------------------------------------------------------------------------------------------------------
def pip_command(params: Dict[str, Any]) -> Optional[List[str]]:
    """The pip to run; None while the virtualenv is still to be created."""
    env, executable = params.get("virtualenv"), params.get("executable")
    if executable:
        found = executable if os.path.isabs(executable) else shutil.which(executable)
        if not found:
            raise ModuleError(f"Unable to find any of {executable} to use.  pip needs to be installed.")
        return [found]
    if env:
        for name in ("pip3", "pip"):
            candidate = os.path.join(env, "bin", name)
            if os.access(candidate, os.X_OK):
                return [candidate]
        if not os.path.exists(os.path.join(env, "bin", "activate")):
            return None
        raise ModuleError(f"Unable to find pip in the virtualenv, {env}, under any of these names: pip3, pip.")
    python = shutil.which("python3")
    if python is None:
        raise ModuleError("Unable to find python3 to run pip")
    return [python, "-m", "pip"]


def installed(pip: List[str], ctx: Context, chdir: str) -> Dict[str, str]:
    done = ctx.run([*pip, "list", "--format=freeze"], check=False, cwd=chdir, env=LANG)
    if done.rc != 0:
        done = ctx.run([*pip, "freeze"], check=False, cwd=chdir, env=LANG)
        if done.rc != 0:
            raise ModuleError(f"pip could not list packages: {(done.stderr or done.stdout).strip()}", rc=done.rc)
    found = {}
    for line in done.stdout.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonical(name.strip())] = version.strip()
    return found


def venv_path(params: Dict[str, Any]) -> Optional[str]:
    env = params.get("virtualenv")
    return os.path.join(params["chdir"], env) if env and params.get("chdir") else env


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    params = dict(params, virtualenv=venv_path(params))
    if params["state"] == "latest" and params.get("version") is not None:
        raise ModuleError("version is incompatible with state=latest")
    packages(params)
    pip = pip_command(params)
    chdir = params.get("chdir") or tempfile.gettempdir()
    return {"pip": pip, "installed": installed(pip, ctx, chdir) if pip else None}


def packages(params: Dict[str, Any]) -> List[Package]:
    names = params.get("name") or []
    found = [Package(name) for name in names]
    if params.get("version") is not None:
        if len(found) > 1:
            raise ModuleError(
                "'version' argument is ambiguous when installing multiple package distributions. "
                "Please specify version restrictions next to each package in 'name' argument."
            )
        if found[0].specs:
            raise ModuleError(
                "The 'version' argument conflicts with any version specifier provided along with a package name. "
                "Please keep the version specifier, but remove the 'version' argument."
            )
        found = [Package(names[0], params["version"])]
    return found


# --- deciding and changing ----------------------------------------------------------------------------------------
def settled(params: Dict[str, Any], state: Dict[str, Any]) -> bool:
    """Whether every named package is already as wanted (pip need not run)."""
    have = state["installed"]
    if have is None or not params.get("name") or params["state"] not in ("present", "absent"):
        return False
    wanted = packages(params)
    if not all(p.plain for p in wanted):
        return False
    there = [p.name in have and p.satisfied_by(have[p.name]) for p in wanted]
    return all(there) if params["state"] == "present" else not any(p.name in have for p in wanted)


def install_command(params: Dict[str, Any], pip: List[str]) -> List[str]:
    argv = pip + STATES[params["state"]]
    extra = shlex.split(params.get("extra_args") or "")
    if params["editable"] and "-e" not in extra:
        extra.append("-e")
    argv += extra
    if params.get("name"):
        argv += [p.text for p in packages(params)]
    else:
        argv += ["-r", params["requirements"]]
    return argv


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    params = dict(params, virtualenv=venv_path(params))
    what = ", ".join(params.get("name") or [f"-r {params.get('requirements')}"])
    data = {"name": params.get("name"), "version": params.get("version"), "state": params["state"]}
    data.update(requirements=params.get("requirements"), virtualenv=params.get("virtualenv"))
    if settled(params, state):
        return Result(False, f"{what}: already {params['state']}", data=data)
    if ctx.check_mode:
        return Result(True, f"{what}: would {' '.join(STATES[params['state']])} (check mode)", data=data)
    chdir = params.get("chdir") or tempfile.gettempdir()
    created = False
    pip = state["pip"]
    if pip is None:
        create_virtualenv(params, ctx, chdir)
        created, pip = True, pip_command(params)
    before = installed(pip, ctx, chdir) if not created else None
    argv = install_command(params, pip)
    env = dict(LANG)
    if params.get("virtualenv"):
        env["PATH"] = os.path.join(params["virtualenv"], "bin") + os.pathsep + os.environ.get("PATH", "")
    if params["break_system_packages"]:
        env["PIP_BREAK_SYSTEM_PACKAGES"] = "1"
    done = _with_umask(params.get("umask"), lambda: ctx.run(argv, check=False, cwd=chdir, env=env, timeout=1800))
    said = done.stdout + done.stderr
    if done.rc != 0 and not (done.rc == 1 and params["state"] == "absent" and "not installed" in said):
        raise ModuleError(f"{' '.join(argv)} exited {done.rc}: {said.strip()[-2000:]}", rc=done.rc, stdout=done.stdout)
    if params["state"] == "absent":
        changed = "Successfully uninstalled" in done.stdout
    else:
        changed = "Successfully installed" in done.stdout or (
            before is not None and installed(pip, ctx, chdir) != before
        )
    changed = changed or created
    data.update(cmd=argv, stdout=done.stdout, stderr=done.stderr)
    data.update(stdout_lines=done.stdout.splitlines(), stderr_lines=done.stderr.splitlines())
    return Result(changed, f"{what}: {params['state']}" + (" (virtualenv created)" if created else ""), data=data)


def create_virtualenv(params: Dict[str, Any], ctx: Context, chdir: str) -> None:
    command = shlex.split(params["virtualenv_command"])
    if os.path.basename(command[0]) == command[0]:
        found = shutil.which(command[0])
        if not found:
            raise ModuleError(f'Failed to find required executable "{command[0]}" in paths: {os.environ.get("PATH")}')
        command[0] = found
    is_venv = "venv" in command or any(os.path.basename(word) == "pyvenv" for word in command)
    if params["virtualenv_site_packages"]:
        command.append("--system-site-packages")
    if not is_venv:
        command.append("-p" + (params.get("virtualenv_python") or shutil.which("python3") or "python3"))
    elif params.get("virtualenv_python"):
        raise ModuleError(
            "virtualenv_python should not be used when using the venv module or pyvenv as virtualenv_command"
        )
    command.append(params["virtualenv"])
    done = _with_umask(params.get("umask"), lambda: ctx.run(command, check=False, cwd=chdir, timeout=600))
    if done.rc != 0:
        raise ModuleError(f"{' '.join(command)} exited {done.rc}: {(done.stderr or done.stdout).strip()[-2000:]}")


def _with_umask(umask: Optional[str], run: Callable[[], Any]) -> Any:
    if umask is None:
        return run()
    try:
        value = int(umask, 8)
    except ValueError:
        raise ModuleError("umask must be an octal integer") from None
    old = os.umask(value)
    try:
        return run()
    finally:
        os.umask(old)
