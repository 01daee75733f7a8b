"""Ansible roles, unchanged, with kiln and with ansible-playbook on the same base: figures and end-state differences.

    .venv/bin/python benchmarks/ansible_roles.py [NAME=]PATH [[NAME=]PATH ...] [--with PATH ...] [--var K=V ...]
                                                 [--no-bake] [--json] [--details]

Each PATH is a role directory in Ansible's layout (tasks/main.yml, ...), used unchanged under its directory's
name (or NAME). ``--with`` adds roles the measured ones include or depend on (beside them in roles/); ``--var``
gives both tools the same variable (ansible-playbook's extra vars, kiln's ``--var``). For each role, one after
the other so no two runs share the machine:

1. ``validate``: kiln's validation of the role (the same as ``invoke validate``), its errors counted;
2. ``ansible-playbook`` over SSH on a fresh container from localhost/kiln-base/debian:bookworm;
3. ``kiln apply``: the role compiled by kiln and applied by its agent on a second fresh container (no SSH,
   no snapshot): the harness of tests/ansible_diff.py;
4. ``kiln bake``: ``invoke bake --role NAME`` in a throwaway project (launch, SSH, apply, idempotence
   re-run, clean, snapshot, test stage), into its own image prefix; then a container from the baked
   image is probed too, counting files changed since the bake started (a file the bake touched but left as
   the base has it is no difference; kiln's own host-key unit is its footprint, as python3-apt is ansible's).

The probe (tests/ansible_diff.py) reads each machine's files under /etc, /opt, /srv, /usr/local, /var/www,
/home, /root changed by the run (content, mode, owner, group; "Ansible managed" lines ignored), its packages,
services (enabled, active), users and groups; ansible-playbook's machine is the reference. Exit status 0
when every role's end states equal ansible-playbook's.

Public roles are for measuring only: extract them outside the repository, e.g.
``git -C /work/.mirror/geerlingguy+ansible-role-ntp/repo archive HEAD | tar -x -C /tmp/ntp``; roles that use
community.* modules need those collections on ANSIBLE_COLLECTIONS_PATH for ansible-playbook.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kiln.controller.engine import BASE_IMAGE, Engine  # noqa: E402
from tests.ansible_diff import (  # noqa: E402
    LABEL,
    MARKER,
    Keys,
    Run,
    ansible_playbook,
    compare_states,
    differences,
    kiln_apply,
    registered_view,
    start_machine,
    start_pair,
    workdir,
)
from tests.machines import ensure_base_image  # noqa: E402

KINDS = ("files", "packages", "services", "users", "groups")
IMAGE_PREFIX = f"localhost/kiln-bench-roles-{uuid.uuid4().hex[:6]}"
BAKE_TIMEOUT = 1800
#: what kiln's image has whatever the role says: a unit that makes each copy's SSH host keys its own
KILN_FOOTPRINT = {"/etc/systemd/system/kiln-ssh-hostkeys.service"}


@dataclass
class Bake:
    """One ``invoke bake``: how long, whether it finished, its output's tail, the image it made."""

    seconds: float
    ok: bool
    output: str
    image: str = ""


@dataclass
class Figures:
    """Everything measured for one role."""

    role: str
    path: str
    validate_errors: list[str]
    ansible: Run
    apply: Run
    apply_state: dict[str, list[str]]
    bake: Bake | None = None
    image_state: dict[str, list[str]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        image_equal = self.bake is None or (
            self.bake.ok and self.image_state is not None and not any(self.image_state.values())
        )
        return self.ansible.ok and self.apply.ok and not any(self.apply_state.values()) and image_equal


# --- staging ----------------------------------------------------------------------------------------------
def role_source(spec: str) -> tuple[str, Path]:
    name, _, path = spec.rpartition("=")
    source = Path(path).resolve()
    if not (source / "tasks" / "main.yml").exists():
        raise SystemExit(f"{path}: not a role in Ansible's layout (no tasks/main.yml)")
    return name or source.name, source


def stage(work: Path, roles: dict[str, Path]) -> Path:
    """``work/project/playbooks/roles/<name>`` for every role (copied, so each tool reads exactly those bytes)."""
    project = work / "project"
    playbooks = project / "playbooks"
    (playbooks / "roles").mkdir(parents=True, exist_ok=True)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 1\n")
    for name, source in roles.items():
        shutil.copytree(source, playbooks / "roles" / name, symlinks=True)
    return project


def share_roles(work: Path, project: Path, names: list[str]) -> None:
    """The companion roles where the harness's two runs look for roles (it stages the measured one itself)."""
    for name in names:
        source = project / "playbooks" / "roles" / name
        for staged in (work / "ansible" / "roles", work / "kiln" / "playbooks" / "roles"):
            staged.mkdir(parents=True, exist_ok=True)
            if not (staged / name).exists():
                shutil.copytree(source, staged / name, symlinks=True)


# --- the runs -------------------------------------------------------------------------------------------
def validate(project: Path, name: str) -> list[str]:
    from kiln.controller.config import load_config
    from kiln.controller.model import InvalidInput
    from kiln.controller.stepfiles.compile import validate_roles

    playbooks = project / "playbooks"
    try:
        found = validate_roles(playbooks, [name], load_config(playbooks / "kiln.yaml"))
    except InvalidInput as exc:
        found = exc.diagnostics
    return [
        f"{Path(d.file).relative_to(playbooks / 'roles') if playbooks.as_posix() in d.file else d.file}"
        f":{d.line}:{d.column}: {d.message}"
        for d in found
    ]


def bake(project: Path, name: str, overrides: dict[str, str]) -> Bake:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(KILN_STATE_DIR=str(project / "state"), KILN_IMAGE_PREFIX=IMAGE_PREFIX, KILN_JSON="", CI="")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", name]
            + [arg for k, v in overrides.items() for arg in ("--var", f"{k}={v}")],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=BAKE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        return Bake(time.monotonic() - started, False, f"no end within {BAKE_TIMEOUT}s: {exc}")
    seconds = time.monotonic() - started
    output = (proc.stdout + proc.stderr)[-6000:]
    image = f"{IMAGE_PREFIX}/{name}:latest" if proc.returncode == 0 else ""
    return Bake(seconds, proc.returncode == 0, output, image)


def image_probe(engine: Engine, keys: Keys, image: str, since: float, work: Path) -> dict[str, Any]:
    """A fresh container from the baked image, its files counted from the bake's start."""
    machine = start_machine(engine, keys, {LABEL: work.name}, image=image)
    try:
        machine.sh(f"touch -d @{since:.3f} {MARKER}")
        return machine.probe()
    finally:
        machine.remove()


def against_base(reference: dict[str, Any], image: dict[str, Any], base: dict[str, Any]) -> dict[str, list[str]]:
    """The image's differences from ansible-playbook's machine, where a file neither changed is as in the base.

    A bake touches files it leaves as they were (the build user's passwd/shadow lines, added and removed):
    each probe lists only files changed since its marker, so a file one side did not change is the base's."""
    files = {}
    for path in set(reference["files"]) | set(image["files"]):
        ours, theirs = image["files"].get(path, base["files"].get(path)), reference["files"].get(path)
        theirs = base["files"].get(path) if theirs is None else theirs
        if path in KILN_FOOTPRINT and path not in reference["files"]:
            continue
        files[path] = (theirs, ours)
    found = compare_states(
        dict(reference, files={p: t for p, (t, _) in files.items() if t is not None}),
        dict(image, files={p: o for p, (_, o) in files.items() if o is not None}),
    )
    return found


def base_probe(engine: Engine, keys: Keys, work: Path) -> dict[str, Any]:
    """Every file of the base image under the probe's roots (its marker set to the epoch); read once a run."""
    if not _BASE:
        _BASE.append(image_probe(engine, keys, BASE_IMAGE, 0.0, work))
    return _BASE[0]


_BASE: list[dict[str, Any]] = []


def measure(
    engine: Engine, name: str, source: Path, companions: dict[str, Path], overrides: dict[str, str], baking: bool
) -> Figures:
    work = workdir("kiln-roles-bench-")
    try:
        project = stage(work, {name: source, **companions})
        errors = validate(project, name)
        keys = Keys(work)
        role = project / "playbooks" / "roles" / name
        share_roles(work, project, list(companions))
        on_ansible, on_kiln = start_pair(engine, keys, {LABEL: work.name})
        try:
            ansible_run = ansible_playbook(on_ansible, keys, role, work / "ansible", overrides or None)
            apply_run = kiln_apply(on_kiln, role, work / "kiln", overrides or None)
            reference = on_ansible.probe()
            apply_state = compare_states(reference, on_kiln.probe())
        finally:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda m: m.remove(), (on_ansible, on_kiln)))
        apply_state["registered"] = differences(
            {n: registered_view(v) for n, v in ansible_run.registered.items()},
            {n: registered_view(v) for n, v in apply_run.registered.items()},
            "registered",
        ) + differences(ansible_run.debug, apply_run.debug, "debug")
        figures = Figures(name, str(source), errors, ansible_run, apply_run, apply_state)
        if baking and not errors:
            since = time.time()
            figures.bake = bake(project, name, overrides)
            if figures.bake.ok:
                image = image_probe(engine, keys, figures.bake.image, since, work)
                figures.image_state = against_base(reference, image, base_probe(engine, keys, work))
        elif baking:
            figures.notes.append("not baked: validate refused it")
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measured_once_more_on_a_flake(
    engine: Engine, name: str, source: Path, companions: dict[str, Path], overrides: dict[str, str], baking: bool
) -> Figures:
    """The role measured; measured again once when the machinery itself failed (podman, SSH), not a tool."""
    try:
        return measure(engine, name, source, companions, overrides, baking)
    except Exception as exc:  # noqa: BLE001 - the run goes on to the next role either way
        print(f"({name}: the measurement itself failed, once more: {type(exc).__name__}: {exc})", flush=True)
        return measure(engine, name, source, companions, overrides, baking)


def remove_bench_images(engine: Engine) -> None:
    for row in engine.images(IMAGE_PREFIX + "/*"):  # the reference filter matches whole names: the roles under it
        for tag in row.get("Names") or []:
            if tag.startswith(IMAGE_PREFIX + "/"):
                engine.remove_image(tag)


# --- reporting ------------------------------------------------------------------------------------------
def _seconds(run: Run | Bake | None) -> str:
    if run is None:
        return "-"
    return f"{run.seconds:.1f} s" + ("" if run.ok else " (failed)")


def _counts(state: dict[str, list[str]] | None, kinds: tuple[str, ...] = KINDS) -> list[str]:
    if state is None:
        return ["-"] * len(kinds)
    return [str(len(state.get(kind, []))) for kind in kinds]


def why_not(figures: Figures) -> str:
    if figures.validate_errors:
        return f"validate: {len(figures.validate_errors)} error(s); first: {figures.validate_errors[0][:200]}"
    if not figures.ansible.ok:
        return "ansible-playbook: " + (figures.ansible.output.strip().splitlines() or ["failed"])[-1][:200]
    if not figures.apply.ok:
        return "kiln apply: " + first_error(figures.apply.output)
    if figures.bake is not None and not figures.bake.ok:
        return "kiln bake: " + last_error(figures.bake.output)
    for state in (figures.apply_state, figures.image_state or {}):
        for kind in (*KINDS, "registered"):
            if state.get(kind):
                return state[kind][0].splitlines()[0][:200]
    return ""


def first_error(output: str) -> str:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{") and '"summary"' in line:
            event = json.loads(line)
            return f"failed at {event.get('failed_step')!r}: {str(event.get('error'))[:160]}"
    return last_error(output)


def last_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return ((errors or lines or ["failed"])[-1]).strip()[:200]


def role_table(figures: Figures) -> str:
    rows = [
        f"== {figures.role} ({figures.path})",
        f"  validate          {len(figures.validate_errors)} error(s)",
        f"  ansible-playbook  {_seconds(figures.ansible)}",
        f"  kiln apply        {_seconds(figures.apply)}   (compile + the agent's apply; no SSH, no snapshot)",
        f"  kiln bake         {_seconds(figures.bake)}"
        + ("   (invoke bake: launch, apply, idempotence re-run, clean, snapshot, test)" if figures.bake else ""),
        f"  {'end state vs ansible-playbook':<30}" + "".join(f"{kind:>11}" for kind in (*KINDS, "registered")),
        f"  {'  kiln apply':<30}" + "".join(f"{c:>11}" for c in _counts(figures.apply_state, (*KINDS, "registered"))),
        f"  {'  kiln image (baked)':<30}" + "".join(f"{c:>11}" for c in _counts(figures.image_state)) + f"{'-':>11}",
        f"  equal             {'yes' if figures.equal else 'no'}",
    ]
    reason = why_not(figures)
    if reason:
        rows.append(f"  first difference  {reason}")
    rows += [f"  note              {note}" for note in figures.notes]
    return "\n".join(rows)


def summary_table(all_figures: list[Figures]) -> str:
    head = (
        f"{'role':<16}{'validate':>9}{'ansible s':>10}{'apply s':>10}{'bake s':>10}  "
        + " ".join(f"{k[:5]:>5}" for k in KINDS)
        + "  equal"
    )
    out = [head, "-" * len(head)]
    for f in all_figures:
        state = {k: len(f.apply_state.get(k, [])) + len((f.image_state or {}).get(k, [])) for k in KINDS}
        out.append(
            f"{f.role:<16}{len(f.validate_errors):>9}{_brief(f.ansible):>10}{_brief(f.apply):>10}{_brief(f.bake):>10}  "
            + " ".join(f"{state[k]:>5}" for k in KINDS)
            + f"  {'yes' if f.equal else 'no'}"
        )
    out.append("(! = did not finish; state columns: differences from ansible-playbook's machine, apply + image)")
    return "\n".join(out)


def _brief(run: Run | Bake | None) -> str:
    return "-" if run is None else f"{run.seconds:.1f}" + ("" if run.ok else "!")


def details(figures: Figures) -> str:
    lines = [f"--- {figures.role}: every difference"]
    lines += [f"validate: {e}" for e in figures.validate_errors]
    for label, state in (("apply", figures.apply_state), ("image", figures.image_state or {})):
        for found in state.values():
            lines += [f"[{label}] {line}" for line in found]
    for label, run in (
        ("ansible-playbook", figures.ansible),
        ("kiln apply", figures.apply),
        ("kiln bake", figures.bake),
    ):
        if run is not None and not run.ok:
            lines.append(f"--- {label} output (tail) ---\n{run.output[-3000:]}")
    return "\n".join(lines)


def as_json(figures: Figures) -> dict[str, Any]:
    return {
        "role": figures.role,
        "path": figures.path,
        "validate_errors": figures.validate_errors,
        "ansible_s": round(figures.ansible.seconds, 1),
        "ansible_ok": figures.ansible.ok,
        "kiln_apply_s": round(figures.apply.seconds, 1),
        "kiln_apply_ok": figures.apply.ok,
        "kiln_bake_s": round(figures.bake.seconds, 1) if figures.bake else None,
        "kiln_bake_ok": figures.bake.ok if figures.bake else None,
        "apply_differences": figures.apply_state,
        "image_differences": figures.image_state,
        "equal": figures.equal,
        "first_difference": why_not(figures),
    }


def validate_only(paths: list[str], companion_specs: list[str], details: bool) -> int:
    """Each role validated as ``invoke validate`` does (with the companions beside it): errors counted; 0 when
    every role is clean. Which kiln: this checkout's, or the one ``PYTHONPATH`` puts first (converge.py's
    ``checkout_env``), to compare two."""
    companions = dict(role_source(spec) for spec in companion_specs)
    clean = 0
    for spec in paths:
        name, source = role_source(spec)
        with tempfile.TemporaryDirectory(prefix="kiln-roles-validate-") as tmp:
            errors = validate(stage(Path(tmp), {name: source, **companions}), name)
        clean += not errors
        print(f"{name:<32} {len(errors):>4} error(s)" + (f"  first: {errors[0]}" if errors and not details else ""))
        if details:
            print("".join(f"    {error}\n" for error in errors), end="")
    print(f"{clean} of {len(paths)} role(s) validate clean")
    return 0 if clean == len(paths) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="[NAME=]PATH", help="role directories to measure")
    parser.add_argument(
        "--with",
        dest="companions",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a role the measured ones include or depend on (not measured itself)",
    )
    parser.add_argument("--var", dest="vars", action="append", default=[], metavar="K=V", help="a variable for both")
    parser.add_argument("--no-bake", action="store_true", help="skip invoke bake (validate, ansible, kiln apply)")
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="only kiln's validation of each role: its errors counted (all of them with --details); no machine",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per role instead of the tables")
    parser.add_argument("--details", action="store_true", help="every difference, after the tables")
    args = parser.parse_args(argv)
    if args.validate_only:
        return validate_only(args.paths, args.companions, args.details)
    engine = Engine()
    ensure_base_image(engine)
    companions = dict(role_source(spec) for spec in args.companions)
    measured: list[Figures] = []
    try:
        for spec in args.paths:
            name, source = role_source(spec)
            overrides = dict(item.split("=", 1) for item in args.vars)
            figures = measured_once_more_on_a_flake(engine, name, source, companions, overrides, not args.no_bake)
            measured.append(figures)
            print(json.dumps(as_json(figures)) if args.json else role_table(figures) + "\n", flush=True)
    finally:
        remove_bench_images(engine)
    if not args.json:
        print(summary_table(measured))
    if args.details:
        print("\n" + "\n\n".join(details(f) for f in measured))
    return 0 if all(f.equal for f in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
