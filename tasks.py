"""kiln's command line: thin Invoke tasks over the controller library.

Exit status: 0 success; 1 the bake failed; 2 invalid input (nothing was launched).
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
from pathlib import Path

from invoke import Exit, task

# invoke turns byte-code writing off before it loads this file (so that no tasks.pyc is left); kiln's own
# modules keep theirs as any program's do (-B and PYTHONDONTWRITEBYTECODE still apply): a checkout run only
# through invoke otherwise compiles every edited module from source on every command (~70 ms a converge)
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)


def _setup(json: bool, prefix_roles: bool = False) -> None:
    from kiln.controller import log as kiln_log  # here, not at the top: `invoke --list` loads no logging

    kiln_log.configure(json_output=json, prefix_roles=prefix_roles)


def _options(keep_on_error: bool = False, check: bool = False, diff: bool = False):
    from kiln.controller.context import BakeOptions

    return BakeOptions(keep_on_error=keep_on_error, check_mode=check, diff=diff)


def _overrides(var: list[str] | None) -> dict:
    """--var k=v pairs; a malformed one is invalid input (exit 2), like any other."""
    if not var:
        return {}  # no compiler import on the developer loop's hot path
    from kiln.controller.model import InvalidInput
    from kiln.controller.stepfiles.compile import parse_var_overrides

    try:
        return parse_var_overrides(var or [])
    except InvalidInput as exc:
        print(exc.render())
        raise Exit(code=2) from None


def _provider(name: str, sandbox: bool):
    """The configured provider; bad config or an unknown name is invalid input (exit 2)."""
    from kiln.controller.bake import make_provider
    from kiln.controller.config import load_config
    from kiln.controller.model import InvalidInput

    try:
        return make_provider(name, load_config(Path("playbooks/kiln.yaml")), Path("builds"), sandbox)
    except InvalidInput as exc:
        print(exc.render())
        raise Exit(code=2) from None


def _vault_password_file(path: str) -> None:
    """--vault-password-file wins over ANSIBLE_VAULT_PASSWORD_FILE (controller/vault.py reads the variable)."""
    if path:
        os.environ["ANSIBLE_VAULT_PASSWORD_FILE"] = str(Path(path).expanduser().resolve())


def _exit_now(code: int) -> None:
    """End the developer loop's command without tearing the interpreter down.

    Its exit handlers run and its output is flushed, as at any exit; what is skipped is clearing the
    ~400 modules it loaded (paramiko, cryptography, invoke), 0.05-0.1 s of a 0.35 s converge."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _split(value: str) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] or None


@task(
    iterable=["var"],
    help={
        "role": "The role to bake (playbooks/roles/<role>).",
        "provider": "local (podman/docker) or aws.",
        "sandbox": "aws only: run against an embedded moto server (or AWS_ENDPOINT_URL) with local containers.",
        "var": "Override a variable: --var k=v (repeatable); highest precedence.",
        "json": "Log JSON lines instead of the terminal view.",
        "keep_on_error": "Keep the build machine when the bake fails, and print how to log in.",
        "tags": "Only steps with these tags (comma separated).",
        "skip_tags": "Skip steps with these tags (comma separated).",
        "check": "Check mode: report what would change, change nothing, publish nothing.",
        "diff": "Show what each step changes.",
        "no_test": "Skip the test stage (a fresh machine from the new image runs the checks): a fast inner loop.",
        "vault_password_file": "A file holding the password of the role's !vault values (or ANSIBLE_VAULT_PASSWORD_FILE).",
    },
)
def bake(
    c,
    role,
    provider="local",
    sandbox=False,
    var=None,
    json=False,
    keep_on_error=False,
    tags="",
    skip_tags="",
    check=False,
    diff=False,
    no_test=False,
    vault_password_file="",
):
    """Bake one role into one new, verified, versioned image."""
    _setup(json)
    _vault_password_file(vault_password_file)
    import dataclasses

    from kiln.controller.bake import bake as run_bake

    options = dataclasses.replace(_options(keep_on_error, check, diff), test_image=not no_test)
    result = run_bake(
        role,
        provider,
        options,
        overrides=_overrides(var),
        tags=_split(tags),
        skip_tags=_split(skip_tags),
        sandbox=sandbox,
    )
    _exit_now(result.exit_code)  # as converge ends: ~0.05-0.1 s of module clean-up after the bake's last line


@task(help={"role": "The role whose versions to list.", "provider": "local or aws.", "json": "JSON output."})
def images(c, role, provider="local", sandbox=False, json=False):
    """List a role's image versions, newest first."""
    _setup(json)
    from kiln.controller.manifest import read

    prov = _provider(provider, sandbox)
    found = prov.images(role)
    if json:
        print(jsonlib.dumps([i.__dict__ for i in found], default=str, indent=1))
        return
    recorded = {(e["role"], e["version"], e.get("region", "")): e for e in read(Path("builds/manifest.json"))}
    print(f"{'VERSION':<13} {'STATUS':<10} {'CREATED (UTC)':<17} {'BASE':<44} {'INPUTS HASH':<13} {'REGION':<10} ID")
    for image in found:
        entry = recorded.get((role, image.version, image.region), {})
        base = entry.get("base") or {}
        base_text = f"{base['name']}@{image.base[:12]}" if base.get("name") else image.base[:12]
        print(
            f"{image.version:<13} {image.status:<10} {_when(entry.get('finished') or image.created):<17} "
            f"{base_text[:44]:<44} {image.inputs_hash[:12]:<13} {image.region or '-':<10} {image.id[:21]}"
        )


def _when(value: str) -> str:
    """Any ISO-ish timestamp (podman's or ours) as 'YYYY-MM-DD HH:MM'."""
    text = str(value).replace("T", " ")
    return text[:16] if len(text) >= 16 else text


@task(
    help={
        "role": "Validate one role (default: all).",
        "vault_password_file": "A file holding the password of !vault values (or ANSIBLE_VAULT_PASSWORD_FILE).",
    }
)
def validate(c, role="", vault_password_file=""):
    """Validate config and step files; report every error with file:line:column (exit 2 on any)."""
    _setup(False)
    _vault_password_file(vault_password_file)
    from kiln.controller.config import load_config
    from kiln.controller.model import InvalidInput
    from kiln.controller.stepfiles.compile import validate_roles

    try:
        config = load_config(Path("playbooks/kiln.yaml"))
        problems = validate_roles(Path("playbooks"), [role] if role else None, config)
    except InvalidInput as exc:
        problems = exc.diagnostics
    for problem in problems:
        print(problem.render())
    if problems:
        print(f"{len(problems)} error(s)")
        raise Exit(code=2)
    print("ok: no problems found")


@task(help={"config": "The schema of playbooks/kiln.yaml instead of the step files'.", "output": "The file to write."})
def schema(c, output="", config=False):
    """Export the JSON Schema of steps, handlers and checks, or with --config of kiln.yaml (for editors)."""
    from kiln.controller.schema_export import config_schema, json_schema

    output = output or ("docs/kiln-yaml.schema.json" if config else "docs/kiln-steps.schema.json")
    Path(output).write_text(jsonlib.dumps(config_schema() if config else json_schema(), indent=2) + "\n")
    print(f"wrote {output}")


@task(name="base-image")
def base_image(c, json=False):
    """(Re)build the local base image localhost/kiln-base/debian:bookworm with debootstrap."""
    _setup(json)
    from kiln.controller.engine import BASE_IMAGE, Engine

    Engine().build_base_image(BASE_IMAGE)
    print(BASE_IMAGE)


@task(help={"apply": "Remove what is found (default: only list).", "provider": "local or aws."})
def sweep(c, provider="local", apply=False, sandbox=False, json=False):
    """List (and with --apply remove) what builds that are over left behind: machines, images, reservations."""
    _setup(json)
    found = _provider(provider, sandbox).sweep(apply)
    for line in found:
        print(("removed " if apply else "would remove ") + line)
    if not found:
        print("nothing to sweep")
    elif not apply:
        print("dry run: nothing was removed (--apply removes it)")


@task(
    iterable=["var"],
    help={
        "role": "The role to converge on its kept dev instance.",
        "watch": "Stay connected and re-apply on every save of the role's files (Ctrl-C ends).",
        "provider": "local (a kept container) or ssh (the existing host providers.ssh names).",
    },
)
def converge(
    c, role, var=None, json=False, tags="", skip_tags="", check=False, diff=False, watch=False, provider="local"
):
    """Apply a role to its kept local instance (created on first use); only differences change."""
    _setup(json)
    from kiln.controller.devloop import converge as run_converge
    from kiln.controller.devloop import watch as run_watch

    run = run_watch if watch else run_converge
    code = run(
        role, _options(check=check, diff=diff), _overrides(var), _split(tags), _split(skip_tags), provider=provider
    )
    _exit_now(code)


@task(
    help={
        "role": "The role whose checks to run on its kept dev instance.",
        "provider": "local (a kept container) or ssh (the existing host providers.ssh names).",
    }
)
def verify(c, role, json=False, provider="local"):
    """Run a role's verify.yml checks on its kept dev instance."""
    _setup(json)
    from kiln.controller.devloop import converge as run_converge

    code = run_converge(role, _options(), verify=True, provider=provider)
    _exit_now(code)


@task(help={"role": "The role whose kept dev instance to log in to."})
def login(c, role):
    """An SSH shell on a role's kept dev instance (host key pinned)."""
    from kiln.controller.devloop import exec_login

    try:
        exec_login(role, Path("builds"))
    except FileNotFoundError as exc:
        raise Exit(str(exc), code=1) from None


@task(
    help={
        "role": "Only this role's dev instance (default: all).",
        "build_id": "Also remove what a --keep-on-error bake kept.",
    }
)
def destroy(c, role="", build_id=""):
    """Remove kept dev instances (and a kept failed build with --build-id)."""
    from kiln.controller.devloop import destroy as run_destroy

    for name in run_destroy(role or None, Path("builds"), build_id or None):
        print(f"removed {name}")


@task(
    help={
        "roles": "Comma-separated roles (default: every role).",
        "provider": "local or aws.",
        "force": "Bake every selected role even if unchanged.",
        "concurrency": "Bakes at once.",
        "on_locked": "When another scheduler holds a role: skip (default) or wait.",
        "shard": "K/N: only this runner's deterministic share (whole dependency chains) of N.",
        "run_id": "Names the run several runners share, for nightly-report (default: the UTC date).",
        "runner": "This runner's name in the report (default: host-pid).",
    }
)
def nightly(
    c,
    roles="",
    provider="local",
    force=False,
    concurrency=2,
    on_locked="skip",
    sandbox=False,
    json=False,
    shard="",
    run_id="",
    runner="",
):
    """Rebake the roles whose inputs changed, in parallel; write builds/nightly-<time>.json and .md."""
    _setup(json, prefix_roles=True)
    from kiln.controller.nightly import nightly as run_nightly

    code = run_nightly(
        _split(roles), provider, force, int(concurrency), on_locked, sandbox, shard=shard, run_id=run_id, runner=runner
    )
    if code:
        raise Exit(code=code)


@task(
    name="nightly-report",
    iterable=["report"],
    help={
        "run_id": "The run to merge (default: the run of the newest report found).",
        "report": "A runner's nightly-*.json (repeatable; default: every one under --dir).",
        "dir": "Where to look for the runners' reports (any depth) and write the merged one.",
        "json": "Print the merged report as JSON.",
    },
)
def nightly_report(c, run_id="", report=None, dir="builds", json=False):
    """Merge the reports of the runners of one nightly run: every role once, who baked it, totals."""
    from kiln.controller.nightly_report import nightly_report as merge_reports

    code, run = merge_reports(report or [], Path(dir), run_id)
    if run is not None:
        totals = ", ".join(f"{v} {k}" for k, v in run.totals.items())
        print(
            jsonlib.dumps(run.as_dict(), indent=1)
            if json
            else f"run {run.run_id}: {len(run.runners)} runners, {totals}, {run.wall_seconds:.0f} s; "
            f"{dir}/nightly-run-{run.run_id}.md"
        )
    if code:
        raise Exit(code=code)


@task(
    help={
        "role": "The role to promote.",
        "version": "A retained version (YYYYMMDD.N), older or newer.",
        "provider": "aws (the consumers are AWS's).",
        "json": "JSON output.",
    }
)
def promote(c, role, version, provider="aws", sandbox=False, json=False):
    """Point latest, the launch templates, the instance refresh and the git-ops file at a retained version."""
    _setup(json)
    from botocore.exceptions import BotoCoreError, ClientError

    from kiln.controller.config import load_config
    from kiln.controller.consumers import NotRetained, settings_for
    from kiln.controller.consumers import promote as run_promote
    from kiln.controller.model import InvalidInput
    from kiln.controller.providers.base import ProviderError

    if provider != "aws":
        print(f"promote: the consumers (latest, launch templates, git-ops) are AWS's; got --provider {provider}")
        raise Exit(code=2)
    prov = _provider(provider, sandbox)
    try:
        settings = settings_for(load_config(Path("playbooks/kiln.yaml")), Path("playbooks"), role)
        report = run_promote(prov, role, version, settings, Path("."))
    except InvalidInput as exc:
        print(exc.render())
        raise Exit(code=2) from None
    except NotRetained as exc:
        print(f"promote: {exc}")
        raise Exit(code=2) from None
    except (ProviderError, ClientError, BotoCoreError) as exc:
        print(f"promote failed: {exc}")
        raise Exit(code=1) from None
    finally:
        prov.close()
    print(jsonlib.dumps(report.as_dict(), indent=1) if json else f"{role}: promoted to {version}")
