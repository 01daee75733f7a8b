"""Differential harness: the same role applied by ansible-playbook and by kiln to two containers
from the same base image, and the end states compared as one probe reads them in both.

Nothing here knows what a role should produce: parity is judged only by comparing the two machines
(files, packages, services, users, groups) and the registered values each tool reports.

- ansible-playbook drives one container over SSH (published on 127.0.0.1, a client key of this run,
  the container's host key pinned in a known_hosts file written before the first connection,
  pipelining on, ``ansible_python_interpreter=/usr/bin/python3``); a callback of ours records each
  task's result as JSON.
- kiln compiles the role unchanged with its library (``compile_role``: the same validation as
  ``invoke validate``/``bake``) and runs its real agent in the other container; the agent's step
  events give kiln's side of the registered values.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.controller.agent_build import agent_zipapp
from kiln.controller.engine import BASE_IMAGE, Engine, tar_of

REPO = Path(__file__).resolve().parent.parent
ROLES = Path(__file__).resolve().parent / "ansible_roles"
COLLECTIONS = REPO / ".venv" / "ansible-collections"  # community.general and .crypto (scripts/setup.sh --test)
LABEL = "kiln.ansible-diff"
BOOT_TIMEOUT = 60.0
ANSIBLE_TIMEOUT = 900.0
AGENT_TIMEOUT = 900.0
MARKER = "/run/kiln-diff-start"
MANAGED = "Ansible managed"
MAX_SHOWN = 40  # differences shown per kind

#: registered-result keys both tools must agree on (Ansible's shape; messages are worded per tool)
REGISTERED_KEYS = ("changed", "failed", "skipped", "rc", "stdout", "stdout_lines", "stderr", "stat")
#: stat keys that differ between two machines whatever the tools do (times, inode, device, inode generation)
MACHINE_OWN_STAT = frozenset({"atime", "mtime", "ctime", "inode", "dev", "version"})

# --- the probe: one script, run as is in both containers -----------------------------------------
PROBE = r"""
import grp, hashlib, json, os, pwd, stat, subprocess, sys
MARKER, MANAGED = sys.argv[1], sys.argv[2]
ROOTS = ["/etc", "/opt", "/srv", "/usr/local", "/var/www", "/home", "/root"]
SKIP_PREFIXES = ("/etc/ssh/ssh_host_", "/root/.ansible", "/root/.ssh", "/var/lib/kiln", "/root/.cache")
SKIP = {"/etc/machine-id", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/ld.so.cache",
        "/etc/.pwd.lock", "/etc/mtab", "/etc/shadow-", "/etc/gshadow-", "/etc/passwd-", "/etc/group-",
        "/etc/subuid-", "/etc/subgid-"}
since = os.stat(MARKER).st_mtime

def name_of(fn, ident):
    try:
        return fn(ident)[0]
    except KeyError:
        return str(ident)

def entry(path, st):
    e = {"mode": "%04o" % stat.S_IMODE(st.st_mode), "owner": name_of(pwd.getpwuid, st.st_uid),
         "group": name_of(grp.getgrgid, st.st_gid)}
    if stat.S_ISLNK(st.st_mode):
        e["type"], e["target"] = "link", os.readlink(path)
        e.pop("mode")
    elif stat.S_ISDIR(st.st_mode):
        e["type"] = "dir"
    elif stat.S_ISREG(st.st_mode):
        e["type"] = "file"
        with open(path, "rb") as f:
            data = f.read()
        lines = [l for l in data.split(b"\n") if MANAGED.encode() not in l]
        kept = b"\n".join(lines)
        e["sha256"] = hashlib.sha256(kept).hexdigest()
        if len(kept) <= 65536:
            try:
                e["text"] = kept.decode()
            except UnicodeDecodeError:
                pass
    else:
        e["type"] = "other"
    return e

files = {}
for root in ROOTS:
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.startswith(SKIP_PREFIXES):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path in SKIP or path.startswith(SKIP_PREFIXES):
                continue
            st = os.lstat(path)
            if max(st.st_mtime, st.st_ctime) >= since:
                files[path] = entry(path, st)

def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout

packages = {}
for line in run("dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n").splitlines():
    name, version, status = (line.split("\t") + ["", ""])[:3]
    packages[name] = version + " " + status.strip()
services = {}
for line in run("systemctl", "list-unit-files", "--type=service", "--no-legend", "--no-pager").splitlines():
    parts = line.split()
    if parts and "@" not in parts[0]:
        services[parts[0]] = {"enabled": parts[1]}
for line in run("systemctl", "list-units", "--type=service", "--all", "--no-legend", "--no-pager", "--plain").splitlines():
    parts = line.split()
    if parts and parts[0] in services:
        services[parts[0]]["active"] = parts[2]
users = {l.split(":")[0]: l for l in run("getent", "passwd").splitlines()}
groups = {l.split(":")[0]: l for l in run("getent", "group").splitlines()}
print(json.dumps({"files": files, "packages": packages, "services": services, "users": users, "groups": groups}))
"""

# --- a callback of ours: every task result ansible-playbook reports, as JSON ----------------------
CALLBACK = r'''
import json, os
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: kiln_record
type: aggregate
short_description: record task results for kiln's differential tests
description: [record task results]
"""

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kiln_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.records = []

    def _record(self, result, status):
        task = result._task
        data = json.loads(json.dumps(result._result, default=str))
        self.records.append({"name": task.get_name(), "action": task.action, "register": task.register or "",
                             "args": json.loads(json.dumps(task.args, default=str)), "status": status,
                             "handler": bool(getattr(task, "_role", None) and task.__class__.__name__ == "Handler"),
                             "result": data})

    def v2_runner_on_ok(self, result):
        self._record(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")
        self.records[-1]["result"]["failed"] = True  # what the task registers; the callback's copy lacks it

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")
        self.records[-1]["result"]["skipped"] = True  # what the task registers; the callback's copy lacks it

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["KILN_RECORD_FILE"], "w") as f:
            json.dump(self.records, f)
'''


@dataclass
class Machine:
    """A container booting systemd from the base image, SSH published on 127.0.0.1."""

    engine: Engine
    name: str
    port: int
    known_hosts: Path

    def sh(self, script: str, check: bool = True) -> str:
        return self.engine.exec(self.name, "bash", "-c", script, check=check)

    def probe(self) -> dict[str, Any]:
        out = self.engine.exec(self.name, "python3", "-", MARKER, MANAGED, input=PROBE.encode())
        return json.loads(out)

    def remove(self) -> None:
        self.engine.remove_container(self.name)


@dataclass
class Keys:
    """This run's client key and the host key the machines are given (pinned, never learned)."""

    dir: Path
    client: Path = field(init=False)
    host: Path = field(init=False)

    def __post_init__(self) -> None:
        self.client, self.host = self.dir / "client_ed25519", self.dir / "host_ed25519"
        for path in (self.client, self.host):
            if not path.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln-diff", "-f", str(path)],
                    check=True,
                    timeout=30,
                )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_machine(engine: Engine, keys: Keys, labels: dict[str, str], image: str = BASE_IMAGE) -> Machine:
    name = f"kiln-diff-{uuid.uuid4().hex[:8]}"
    port = free_port()
    engine.create_machine(image, name, labels, ssh_port=port)
    try:
        engine.copy_in(
            name,
            {
                "/root/.ssh": (None, 0o700),
                "/root/.ssh/authorized_keys": (keys.client.with_suffix(".pub").read_bytes(), 0o600),
                "/etc/ssh/ssh_host_ed25519_key": (keys.host.read_bytes(), 0o600),
                "/etc/ssh/ssh_host_ed25519_key.pub": (keys.host.with_suffix(".pub").read_bytes(), 0o644),
                "/var/lib/kiln/agent.pyz": (agent_zipapp(), 0o644),
            },
        )
        engine.start(name)
        known_hosts = keys.dir / f"known_hosts-{name}"
        key_line = " ".join(keys.host.with_suffix(".pub").read_text().split()[:2])
        known_hosts.write_text(f"[127.0.0.1]:{port} {key_line}\n")
        machine = Machine(engine, name, port, known_hosts)
        wait_booted(machine)
        machine.sh(f"touch {MARKER} && sleep 1")
        return machine
    except BaseException:
        engine.remove_container(name)
        raise


def wait_booted(machine: Machine) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        state = machine.sh("systemctl is-system-running; systemctl is-active ssh", check=False).split()
        if state[:1] and state[0] in ("running", "degraded") and state[-1:] == ["active"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{machine.name} did not boot with sshd within {BOOT_TIMEOUT:.0f}s")


def start_pair(engine: Engine, keys: Keys, labels: dict[str, str]) -> tuple[Machine, Machine]:
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_machine, engine, keys, labels) for _ in range(2)]
        machines = []
        errors = []
        for future in futures:
            try:
                machines.append(future.result())
            except Exception as exc:  # noqa: BLE001 - the other machine must still be removed
                errors.append(exc)
    if errors:
        for machine in machines:
            machine.remove()
        raise errors[0]
    return machines[0], machines[1]


# --- ansible-playbook ---------------------------------------------------------------------------
@dataclass
class Run:
    """One tool's run: how long, whether it finished, what it said, and what it registered."""

    tool: str
    seconds: float
    ok: bool
    output: str
    registered: dict[str, Any] = field(default_factory=dict)
    debug: dict[str, Any] = field(default_factory=dict)


def ansible_playbook(machine: Machine, keys: Keys, role_dir: Path, work: Path, extra_vars: dict | None = None) -> Run:
    """Apply ``role_dir`` (unchanged, by its directory's name) with ansible-playbook over SSH."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "callback_plugins").mkdir(exist_ok=True)
    (work / "callback_plugins" / "kiln_record.py").write_text(CALLBACK)
    roles = work / "roles"
    roles.mkdir(exist_ok=True)
    if not (roles / role_dir.name).exists():
        (roles / role_dir.name).symlink_to(role_dir.resolve())
    ssh_args = f"-o UserKnownHostsFile={machine.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    (work / "inventory.ini").write_text(
        f"box ansible_host=127.0.0.1 ansible_port={machine.port} ansible_user=root "
        f"ansible_ssh_private_key_file={keys.client} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='{ssh_args}'\n"
    )
    (work / "ansible.cfg").write_text(
        "[defaults]\nhost_key_checking = True\ncallbacks_enabled = kiln_record\n"
        f"callback_plugins = {work / 'callback_plugins'}\nroles_path = {roles}\nretry_files_enabled = False\n"
        "[ssh_connection]\npipelining = True\n"
    )
    (work / "site.yml").write_text(
        json.dumps([{"hosts": "box", "gather_facts": True, "roles": [role_dir.name], "vars": extra_vars or {}}])
    )
    record = work / "record.json"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_HOME": str(work / "home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(COLLECTIONS)),
        "KILN_RECORD_FILE": str(record),
    }
    playbook = str(Path(sys.executable).with_name("ansible-playbook"))
    started = time.monotonic()
    proc = subprocess.run(
        [playbook, "-i", str(work / "inventory.ini"), str(work / "site.yml")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=ANSIBLE_TIMEOUT,
    )
    seconds = time.monotonic() - started
    records = json.loads(record.read_text()) if record.exists() else []
    run = Run("ansible", seconds, proc.returncode == 0, proc.stdout + proc.stderr)
    for rec in records:
        if rec["register"]:
            run.registered[rec["register"]] = rec["result"]
        if rec["action"] in ("debug", "ansible.builtin.debug") and "var" in rec["args"]:
            run.debug[rec["args"]["var"]] = rec["result"].get(rec["args"]["var"])
    return run


# --- kiln ---------------------------------------------------------------------------------------
def kiln_playbooks(role_dir: Path, work: Path) -> Path:
    """A playbooks directory holding the role as is (copied, so kiln reads exactly those bytes)."""
    playbooks = work / "playbooks"
    (playbooks / "roles").mkdir(parents=True, exist_ok=True)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 3\n")
    target = playbooks / "roles" / role_dir.name
    if not target.exists():
        shutil.copytree(role_dir, target, symlinks=True)
    return playbooks


def flatten(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for step in steps:
        found.append(step)
        for part in ("block", "rescue", "always"):
            found.extend(flatten(step.get(part) or []))
    return found


def kiln_apply(machine: Machine, role_dir: Path, work: Path, overrides: dict | None = None) -> Run:
    """Compile the role with kiln's library (refusals are the run's output) and apply it with the real agent."""
    from kiln.controller.config import load_config
    from kiln.controller.model import InvalidInput
    from kiln.controller.stepfiles.compile import bundle_json, compile_role

    playbooks = kiln_playbooks(role_dir, work)
    started = time.monotonic()
    try:
        compiled = compile_role(
            playbooks, role_dir.name, "local", load_config(playbooks / "kiln.yaml"), overrides=overrides
        )
    except InvalidInput as exc:
        return Run("kiln", time.monotonic() - started, False, "refused at validate:\n" + exc.render())
    bundle = bundle_json(compiled, {"kiln": {"role": role_dir.name, "version": "diff", "build_id": "diff"}})
    content: dict[str, tuple[bytes | None, int]] = {"/var/lib/kiln/t/bundle.json": (json.dumps(bundle).encode(), 0o600)}
    for rel, data in compiled.files.items():
        content[f"/var/lib/kiln/t/{rel}"] = (data, 0o644)
    machine.sh("rm -rf /var/lib/kiln/t")
    machine.engine.run("cp", "-", f"{machine.name}:/", input=tar_of(content))
    rc, out, err = _agent(machine)
    seconds = time.monotonic() - started
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    run = Run("kiln", seconds, rc == 0, out[-4000:] + err[-4000:])
    registers = {
        (bool(s.get("handler")), s.get("index")): s
        for s in flatten(compiled.steps) + [dict(h, handler=True) for h in flatten(compiled.handlers)]
    }
    for event in events:
        if event.get("event") != "step":
            continue
        step = registers.get((bool(event.get("handler")), event.get("index")), {})
        if step.get("register"):
            run.registered[step["register"]] = kiln_registered(event)
        var = (step.get("args") or {}).get("var") if step.get("module") == "debug" else None
        if var:
            run.debug[var] = (event.get("registered") or {}).get(var, event.get("msg"))
    return run


def kiln_registered(event: dict[str, Any]) -> dict[str, Any]:
    """The value kiln registered, as the agent's step event carries it (``registered``)."""
    if not isinstance(event.get("registered"), dict):  # a difference in every compared key
        return {key: "(not in kiln's step event)" for key in REGISTERED_KEYS}
    return event["registered"]


def _agent(machine: Machine) -> tuple[int, str, str]:
    from kiln.controller.engine import run_to_completion

    argv = [machine.engine.command, *machine.engine._global_args(), "exec", machine.name]
    argv += ["python3", "/var/lib/kiln/agent.pyz", "apply", "/var/lib/kiln/t"]
    rc, out, err = run_to_completion(argv, None, AGENT_TIMEOUT)
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


# --- comparing ----------------------------------------------------------------------------------
def registered_view(value: Any) -> Any:
    """The part of a registered value both tools must agree on."""
    if not isinstance(value, dict):
        return value
    view = {k: value.get(k) for k in REGISTERED_KEYS if k in value}
    # a registered value says changed/failed (and skipped when true) whether or not a callback saw the key
    view.update({flag: bool(value.get(flag)) for flag in ("changed", "failed", "skipped")})
    if isinstance(value.get("results"), list):
        view["results"] = [registered_view(item) for item in value["results"]]
    if isinstance(value.get("stat"), dict):  # two machines: the same file has its own times and inode on each
        view["stat"] = {k: v for k, v in value["stat"].items() if k not in MACHINE_OWN_STAT}
    return view


def debug_view(run: Run, other: Run) -> dict[str, Any]:
    """What ``debug: var=`` showed; a registered result (on either side) compared as registered values are."""
    registered = set(run.registered) | set(other.registered)
    return {name: registered_view(value) if name in registered else value for name, value in run.debug.items()}


def differences(ansible: dict[str, Any], kiln: dict[str, Any], kind: str) -> list[str]:
    """One line per difference in ``kind`` (files, packages, services, users, groups)."""
    found = []
    for key in sorted(set(ansible) | set(kiln)):
        a, k = ansible.get(key), kiln.get(key)
        if a == k:
            continue
        if a is None or k is None:
            found.append(f"{kind} {key}: only {'kiln' if a is None else 'ansible'} has it: {_short(a or k)}")
            continue
        if isinstance(a, dict) and isinstance(k, dict):
            fields = sorted(f for f in set(a) | set(k) if a.get(f) != k.get(f) and f != "text")
            if kind == "files" and "sha256" in fields and "text" in a and "text" in k:
                fields.remove("sha256")
                diff = difflib.unified_diff(
                    a["text"].splitlines(), k["text"].splitlines(), "ansible", "kiln", lineterm="", n=1
                )
                fields.append("content:\n    " + "\n    ".join(list(diff)[2:40]))
            found.append(f"{kind} {key}: " + ", ".join(_field(f, a, k) for f in fields))
        else:
            found.append(f"{kind} {key}: ansible {_short(a)} != kiln {_short(k)}")
    return found


def _field(name: str, a: dict, k: dict) -> str:
    if name.startswith("content:"):
        return name
    return f"{name} ansible={_short(a.get(name))} kiln={_short(k.get(name))}"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Comparison:
    role: str
    ansible: Run
    kiln: Run
    state: dict[str, list[str]]  # kind -> differences (files, packages, services, users, groups, registered)

    @property
    def equal(self) -> bool:
        return self.ansible.ok and self.kiln.ok and not any(self.state.values())

    def report(self, kinds: tuple[str, ...] | None = None) -> str:
        lines = [f"role {self.role}: ansible ok={self.ansible.ok} kiln ok={self.kiln.ok}"]
        for tool in (self.ansible, self.kiln):
            if not tool.ok:
                lines.append(f"--- {tool.tool} output (tail) ---\n{tool.output[-3000:]}")
        for kind, found in self.state.items():
            if kinds is None or kind in kinds:
                lines.extend(found[:MAX_SHOWN])
                if len(found) > MAX_SHOWN:
                    lines.append(f"... and {len(found) - MAX_SHOWN} more {kind} differences")
        return "\n".join(lines)


#: what ansible-playbook leaves on a box whatever the role says: its apt module installs python3-apt
#: (with what that depends on and recommends) to work at all. Ignored only when ansible's side alone has it.
ANSIBLE_FOOTPRINT = {"packages": {"python3-apt", "python-apt-common", "distro-info-data", "lsb-release", "iso-codes"}}


def compare_states(a: dict[str, Any], k: dict[str, Any]) -> dict[str, list[str]]:
    found = {}
    for kind in ("files", "packages", "services", "users", "groups"):
        own = ANSIBLE_FOOTPRINT.get(kind, set())
        ansible = {key: value for key, value in a[kind].items() if key not in own or key in k[kind]}
        found[kind] = differences(ansible, k[kind], kind)
    return found


def compare_role(
    engine: Engine,
    role_dir: Path,
    work: Path,
    overrides: dict | None = None,
    parallel: bool = True,
    labels: dict[str, str] | None = None,
) -> Comparison:
    """Apply ``role_dir`` both ways on two fresh machines and compare what each left.

    ``parallel=False`` runs one tool after the other, so each one's time is not shared with the other's."""
    keys = Keys(work)
    on_ansible, on_kiln = start_pair(engine, keys, {LABEL: work.name, **(labels or {})})
    try:
        with ThreadPoolExecutor(2 if parallel else 1) as pool:
            a_future = pool.submit(ansible_playbook, on_ansible, keys, role_dir, work / "ansible", overrides)
            k_future = pool.submit(kiln_apply, on_kiln, role_dir, work / "kiln", overrides)
            a_run, k_run = a_future.result(), k_future.result()
        state = compare_states(on_ansible.probe(), on_kiln.probe())
        registered = differences(
            {n: registered_view(v) for n, v in a_run.registered.items()},
            {n: registered_view(v) for n, v in k_run.registered.items()},
            "registered",
        )
        registered += differences(debug_view(a_run, k_run), debug_view(k_run, a_run), "debug")
        state["registered"] = registered
        return Comparison(role_dir.name, a_run, k_run, state)
    finally:
        on_ansible.remove()
        on_kiln.remove()


def workdir(prefix: str = "kiln-diff-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


#: groups compared at once: each is two containers and two tools mostly waiting on SSH, dpkg and podman,
#: so a few overlap well on two cores; more would only queue for the CPU (and stretch every step's time)
GROUPS_AT_ONCE = 3

#: a differential group: given the engine and a fresh work directory, stage the role and compare_role it
Group = Callable[[Engine, Path], Comparison]


@dataclass(frozen=True)
class Registered:
    run: Group
    seconds: float  # about how long one run takes alone (the longest groups start first)


#: every group a test module defines (``differential``), by name
DIFFERENTIAL_GROUPS: dict[str, Registered] = {}


def differential(name: str, seconds: float) -> Callable[[Group], Group]:
    """Register a test module's group ``name``; its tests carry ``pytest.mark.differential(name)`` and
    read its Comparison from the ``differentials`` fixture (tests/conftest.py)."""

    def register(run: Group) -> Group:
        DIFFERENTIAL_GROUPS[name] = Registered(run, seconds)
        return run

    return register


def compare_groups(
    engine: Engine, names: list[str], at_once: int = GROUPS_AT_ONCE
) -> dict[str, Comparison | BaseException]:
    """Each group in its own work directory on its own pair of machines, up to ``at_once`` groups at a
    time, longest first: name -> its Comparison, or what stopped it (raised again by the tests asking)."""

    def one(name: str) -> Comparison:
        work = workdir()
        try:
            return DIFFERENTIAL_GROUPS[name].run(engine, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    ordered = sorted(names, key=lambda name: -DIFFERENTIAL_GROUPS[name].seconds)
    with ThreadPoolExecutor(max(1, at_once)) as pool:
        futures = {name: pool.submit(one, name) for name in ordered}
        done: dict[str, Comparison | BaseException] = {}
        for name, future in futures.items():
            try:
                done[name] = future.result()
            except Exception as exc:  # noqa: BLE001 - one group's failure belongs to its own tests
                done[name] = exc
    return done


class Differentials:
    """The comparisons of a test session, each group run once. The first test that needs one runs every
    group the session's selected tests are marked with, a few at a time (compare_groups), and returns
    when all are done: no other test runs meanwhile."""

    def __init__(self, engine: Engine, wanted: list[str]) -> None:
        self.engine = engine
        self.wanted = wanted
        self.results: dict[str, Comparison | BaseException] = {}

    def __call__(self, name: str) -> Comparison:
        if name not in self.results:
            pending = [group for group in self.wanted if group not in self.results and group != name]
            self.results.update(compare_groups(self.engine, [name, *pending]))
        result = self.results[name]
        if isinstance(result, BaseException):
            raise AssertionError(f"the differential group {name} did not finish: {result!r}") from result
        return result
