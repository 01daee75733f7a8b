"""kiln agent: ``facts`` | ``apply BUNDLE_DIR [--resume] [--rerun] [--verify CHECKS_FILE] [--packages]`` |
``verify CHECKS_FILE`` | ``serve BUNDLE_DIR``.

Prints one JSON object per line; the exit status says ok (0), failed (1), or, for
``apply``, rebooting (3): the run state is saved in BUNDLE_DIR and ``apply --resume``
after the boot continues with the step after the reboot.
``apply --rerun --verify CHECKS`` goes on, in the same process, once the apply is clean: a
second apply (the idempotence check) and then the checks, each part opened by a ``phase``
event and closed by its own ``summary``. A part that fails (a failed step, a step marked
idempotent that changed again, a failed check) ends the run there. ``--packages`` ends a run whose
parts all passed with the installed packages (the ``packages`` event, as ``packages`` prints it): a
bake's build machine then starts python once.
``apply --linger SECONDS`` (a converge on its kept machine) leaves a warm agent behind that runs the
next converges' commands without starting python again (agent/warm.py).
``serve`` keeps one agent warm for ``converge --watch``: each JSON line on stdin
(``{"id", "bundle", "files"}``) writes the files that changed into BUNDLE_DIR and applies
that bundle, ending with ``{"event": "served", "id": ...}``; end of input ends it.
Stdlib only (Jinja2 rides along in the zipapp for templates), Python >= 3.9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict

from .protocol import EXIT_REBOOT, Event, Phase


def emit(event: Dict[str, Any]) -> None:
    from .protocol import encode

    sys.stdout.write(encode(event) + "\n")
    sys.stdout.flush()


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("facts")
    apply_p = sub.add_parser("apply")
    apply_p.add_argument("bundle")
    apply_p.add_argument("--check", action="store_true")
    apply_p.add_argument("--diff", action="store_true")
    apply_p.add_argument(
        "--resume", action="store_true", help="continue a run that rebooted the machine (state saved in the bundle dir)"
    )
    apply_p.add_argument("--rerun", action="store_true", help="then apply again: it must change nothing")
    apply_p.add_argument("--verify", metavar="CHECKS", help="then run these checks")
    apply_p.add_argument("--packages", action="store_true", help="then, when every part passed, list the packages")
    apply_p.add_argument(
        "--linger", type=float, default=0, metavar="SECONDS", help="then leave a warm agent (idle for SECONDS at most)"
    )
    verify_p = sub.add_parser("verify")
    verify_p.add_argument("checks")
    sub.add_parser("packages")
    serve_p = sub.add_parser("serve")
    serve_p.add_argument("bundle")
    args = parser.parse_args(argv)

    from . import facts

    if args.command == "facts":
        emit({"event": Event.FACTS, "facts": facts.gather()})
        return 0
    if args.command == "packages":
        return packages()
    if args.command == "apply":
        rc = apply(args, facts)
        if args.linger > 0 and rc != EXIT_REBOOT:
            from .warm import linger

            linger(os.path.dirname(os.path.abspath(args.bundle)), args.linger, main, emit)
        return rc
    if args.command == "serve":
        return serve(args.bundle, facts.gather())
    if args.command == "verify":
        return verify(args.checks)
    return 2


def packages(bundle_dir: Any = None) -> int:
    """The installed packages; at the end of an apply (``bundle_dir``), with what the run set (its run-vars.json,
    "" when it set nothing): the image's checks read it, and the controller need not fetch it."""
    from .inventory import installed_packages

    event: Dict[str, Any] = {"event": Event.PACKAGES, "packages": installed_packages()}
    if bundle_dir is not None:
        from .runner import RUN_VARIABLES_FILE

        try:
            with open(os.path.join(bundle_dir, RUN_VARIABLES_FILE)) as handle:
                event["run_variables"] = handle.read()
        except OSError:
            event["run_variables"] = ""
    emit(event)
    return 0


def apply(args: argparse.Namespace, facts: Any) -> int:
    """``apply``: the bundle's steps (then, with --rerun and --verify, the later parts); the exit status."""
    from .runner import RESUME_FILE, Runner

    with open(os.path.join(args.bundle, "bundle.json")) as handle:
        bundle = json.load(handle)
    state_file = os.path.join(args.bundle, RESUME_FILE)
    resume = None
    if args.resume:
        try:
            with open(state_file) as handle:
                resume = json.load(handle)
        except (OSError, ValueError) as exc:
            emit(
                {
                    "event": Event.SUMMARY,
                    "ok": 0,
                    "changed": 0,
                    "failed": 1,
                    "skipped": 0,
                    "ignored": 0,
                    "duration": 0,
                    "changed_steps": [],
                    "ok_run": False,
                    "error": f"nothing to resume: {type(exc).__name__}: {exc}",
                }
            )
            return 1
    if os.path.exists(state_file):  # consumed (resume) or stale (a fresh apply starts over)
        os.unlink(state_file)
    gathered = facts.gather()
    emit({"event": Event.FACTS, "facts": gathered})
    runner = Runner(bundle, apply_context(args, bundle, gathered), emit, state_dir=args.bundle)
    runner.run(resume)
    if runner.exit_code:
        return runner.exit_code
    if args.rerun:
        emit({"event": Event.PHASE, "phase": Phase.IDEMPOTENCE})
        again = Runner(
            bundle, apply_context(args, bundle, facts.gather()), emit, modules=runner.modules, state_dir=args.bundle
        )
        again.run()
        if again.exit_code or any(step.get("idempotent", True) for step in again.changed_steps):
            return again.exit_code  # the controller fails the idempotence check on this part's summary
    if args.verify:
        emit({"event": Event.PHASE, "phase": Phase.VERIFY})
        if verify(args.verify):
            return 1
    return packages(args.bundle) if args.packages else 0


def apply_context(args: argparse.Namespace, bundle: Dict[str, Any], gathered: Dict[str, Any]) -> Any:
    from .api import Context

    return Context(
        check_mode=args.check or bundle.get("check_mode", False),
        diff_mode=args.diff or bundle.get("diff", False),
        files_dir=os.path.join(args.bundle, "files"),
        templates_dir=os.path.join(args.bundle, "templates"),
        facts=gathered,
    )


def verify(checks_file: str) -> int:
    """Run the checks in ``checks_file`` (0: all passed), rendered with the bundle's variables beside it."""
    from . import facts
    from .verify import run_checks_file

    # checks may read variables, facts, kiln.version and what the apply registered: the bundle's beside them
    return 0 if run_checks_file(checks_file, facts.gather(), emit) else 1


def serve(bundle_dir: str, gathered: Dict[str, Any]) -> int:
    """Apply each bundle that arrives on stdin with the modules and facts already loaded."""
    import base64

    from .api import Context
    from .modules import discover
    from .runner import Runner

    modules = discover()
    emit({"event": Event.FACTS, "facts": gathered})
    emit({"event": Event.READY})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        for rel, data in sorted(request.get("files", {}).items()):
            write_bundle_file(bundle_dir, rel, base64.b64decode(data))
        bundle = request["bundle"]
        ctx = Context(
            check_mode=bundle.get("check_mode", False),
            diff_mode=bundle.get("diff", False),
            files_dir=os.path.join(bundle_dir, "files"),
            templates_dir=os.path.join(bundle_dir, "templates"),
            facts=gathered,
        )
        runner = Runner(bundle, ctx, emit, modules=modules, state_dir=bundle_dir)
        runner.run()
        emit({"event": Event.SERVED, "id": request.get("id"), "exit": runner.exit_code})
        if runner.exit_code == EXIT_REBOOT:  # rebooting: this process ends with the machine
            return 3
    return 0


def write_bundle_file(bundle_dir: str, rel: str, data: bytes) -> None:
    """A file of the bundle (``files/...`` or ``templates/...``), never a path out of it."""
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or parts[0] not in ("files", "templates"):
        raise ValueError(f"refusing bundle path {rel}")
    path = os.path.join(bundle_dir, rel)
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    with open(path + ".tmp", "wb") as handle:
        handle.write(data)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
