"""Ansible's ``apt``: kiln's package module on apt, with Ansible's defaults.

apt does not take package's ``use``; other managers' arguments (dnf's enablerepo, ...) pass validate
and fail the step when it runs, in ansible-core's apt's words, as in Ansible. Everything else
(install_recommends unset: apt's own setting, reading installed versions first, the cache's age,
check mode) is the package module's.

Example::

    - apt: {name: nginx, default_release: bookworm-backports, install_recommends: false}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import urllib.request
from typing import Any, Dict, Iterator, List, Optional

from ..api import Context, ModuleError, Result
from . import package

SCHEMA = {
    **package.SCHEMA,  # other managers' arguments too: refused when the step runs, as ansible-core's apt does
    "description": "Ansible's apt: install, upgrade or remove Debian packages (recommends as apt is configured).",
    "args": {
        **{name: spec for name, spec in package.SCHEMA["args"].items() if name != "use"},  # package's own choice
        "name": {
            **package.SCHEMA["args"]["name"],
            "description": "Package name or list of names (pin a version with name=1.2.3); none: only refresh "
            "the index (update_cache).",
        },
    },
    "example": "- apt: {name: nginx, default_release: bookworm-backports, install_recommends: false}",
}


POLICY_RC_D = "/usr/sbin/policy-rc.d"
APT_CONF = "/etc/apt/apt.conf.d"


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    manager = package._manager(ctx)
    if manager != "apt":
        raise ModuleError(f"apt: this box's package manager is {manager}, not apt (use package)")
    return package.check(params, ctx)


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    with policy_rc_d(params.get("policy_rc_d"), ctx):
        cleaned = clean(params, ctx) if params["clean"] else None
        alone = not package.as_list(params["name"]) and package.apt_upgrade_mode(params) is None
        if cleaned is not None and alone and not params.get("deb"):
            return cleaned
        wants_update = params["update_cache"] or params.get("cache_valid_time") is not None
        if wants_update and alone and not params.get("deb"):
            return update_only(params, ctx)  # Ansible's apt stops there, before autoremove/autoclean
        if params.get("deb"):
            return install_deb(params, ctx)
        return package.change(params, state, ctx)


@contextlib.contextmanager
def policy_rc_d(status: Optional[int], ctx: Context) -> Iterator[None]:
    """/usr/sbin/policy-rc.d exiting ``status`` while the step acts; one already there is put back after."""
    if status is None or ctx.check_mode:
        yield
        return
    saved = tempfile.mkdtemp(prefix="kiln-policy-rc-")
    kept = os.path.exists(POLICY_RC_D)
    try:
        if kept:
            shutil.move(POLICY_RC_D, os.path.join(saved, "policy-rc.d"))
        with open(POLICY_RC_D, "w") as handle:
            handle.write(f"#!/bin/sh\nexit {status}\n")
        os.chmod(POLICY_RC_D, 0o755)
        yield
    finally:
        if kept:
            shutil.move(os.path.join(saved, "policy-rc.d"), POLICY_RC_D)
        elif os.path.exists(POLICY_RC_D):
            os.remove(POLICY_RC_D)
        shutil.rmtree(saved, ignore_errors=True)


def clean(params: Dict[str, Any], ctx: Context) -> Result:
    """apt-get clean: run in check mode too, and always a change, as Ansible's apt has it."""
    done = ctx.run(["apt-get", "clean"], env=package.APT_ENV, check=False)
    if done.rc != 0 or done.stderr:
        raise ModuleError(f"apt-get clean failed: {done.stderr.strip()}", rc=done.rc, stdout=done.stdout)
    return Result(True, done.stdout or "apt-get clean", data=output(done.stdout, done.stderr))


def output(stdout: str, stderr: str) -> Dict[str, Any]:
    """A command's output as Ansible registers it, with its lines."""
    return {
        "stdout": stdout,
        "stderr": stderr,
        "stdout_lines": stdout.splitlines(),
        "stderr_lines": stderr.splitlines(),
    }


def update_only(params: Dict[str, Any], ctx: Context) -> Result:
    """update_cache without packages: refresh now, unless younger than cache_valid_time; the refresh is the change."""
    valid = params.get("cache_valid_time") or 0
    age = time.time() - cache_time()
    if age <= valid:
        return Result(False, f"the index is {age:.0f}s old (valid {valid}s)", data=_cache_data(False))
    if ctx.check_mode:
        return Result(True, "would refresh the package index (check mode)", data=_cache_data(True))
    before = cache_time()
    ctx.run(["apt-get", "update", "-q"], env=package.APT_ENV, timeout=900)
    # as Ansible's apt decides it: changed when the index's time moved (an unchanged archive leaves it)
    updated = cache_time() != before
    package.touch_stamp()
    verb = "refreshed the package index" if updated else "the package index was up to date"
    return Result(updated, verb, data=_cache_data(updated))


def cache_time() -> float:
    """When the index last changed, as Ansible's apt reads it: apt's own success stamp, else the lists' folder."""
    for path in (package.APT_STAMP, package.APT_LISTS):
        if os.path.exists(path) and (path != package.APT_STAMP or not stamp_is_kilns()):
            return os.stat(path).st_mtime
    return 0.0


def stamp_is_kilns() -> bool:
    """The success stamp is kiln's own (written after its updates) unless apt's hook keeps it."""
    try:
        names = os.listdir(APT_CONF)
    except OSError:
        return True
    return not any("update-success-stamp" in _read(os.path.join(APT_CONF, name)) for name in names)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _cache_data(updated: bool) -> Dict[str, Any]:
    return {"cache_updated": updated, "cache_update_time": int(cache_time())}


# --- deb: a package file ------------------------------------------------------------------------------
def install_deb(params: Dict[str, Any], ctx: Context) -> Result:
    """The dependencies the file lacks with apt-get (as packages of their own), then dpkg -i, as Ansible's apt."""
    if params["state"] != "present":
        raise ModuleError("deb only supports state=present")
    with fetched(params["deb"], ctx) as path:
        fields = deb_fields(path, ctx)
        name, version = fields.get("Package", ""), fields.get("Version", "")
        have = package.apt_installed([name], ctx)[name]
        if have == version:
            return Result(False, f"{name} {version} is installed already", data=output("", ""))
        missing = missing_dependencies(fields.get("Pre-Depends", ""), fields.get("Depends", ""), ctx)
        if params.get("install_recommends"):
            missing += missing_dependencies(fields.get("Recommends", ""), "", ctx)
        msg = f"installed {name} {version} from {params['deb']}" + (f" (and {', '.join(missing)})" if missing else "")
        if ctx.check_mode:
            return Result(True, f"{msg} (check mode)")
        out = package.apt_get(["install", "-y", *package.apt_options(params), *missing], ctx) if missing else None
        options = [f"--{option.strip()}" for option in params["dpkg_options"].split(",") if option.strip()]
        options += ["--force-all"] if params.get("force") else []
        done = ctx.run(["dpkg", *options, "-i", path], env=package.APT_ENV, timeout=1800, check=False)
    # one output, the dependencies' install then dpkg's, as Ansible's apt reports it
    data = output((out.stdout if out else "") + done.stdout, (out.stderr if out else "") + done.stderr)
    if done.rc != 0:
        raise ModuleError(f"dpkg {' '.join(options)} -i {path} failed", rc=done.rc, changed=bool(missing), **data)
    return Result(True, msg, diff={"before": {name: have or "absent"}, "after": {name: version}}, data=data)


@contextlib.contextmanager
def fetched(source: str, ctx: Context) -> Iterator[str]:
    """A local path for ``source``: as it is, or a URL downloaded into a directory removed after."""
    if "://" not in source:
        if not os.path.isfile(source):
            raise ModuleError(f"deb: no such file {source}")
        yield source
        return
    work = tempfile.mkdtemp(prefix="kiln-deb-")
    try:
        path = os.path.join(work, os.path.basename(source.split("?")[0]) or "package.deb")
        left = ctx.clock.left() if ctx.clock is not None else 600
        try:
            with urllib.request.urlopen(source, timeout=max(1.0, min(600.0, left))) as answer:  # noqa: S310
                with open(path, "wb") as handle:
                    shutil.copyfileobj(answer, handle)
        except OSError as exc:
            raise ModuleError(f"deb: cannot download {source}: {exc}") from None
        yield path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def deb_fields(path: str, ctx: Context) -> Dict[str, str]:
    done = ctx.run(["dpkg-deb", "-f", path], check=False)
    if done.rc != 0:
        raise ModuleError(f"Unable to install package: {done.stderr.strip() or 'not a Debian package'} ({path})")
    fields: Dict[str, str] = {}
    key = ""
    for line in done.stdout.splitlines():
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def missing_dependencies(pre_depends: str, depends: str, ctx: Context) -> List[str]:
    """Per dependency group none of whose alternatives is installed: its first alternative's name."""
    groups = [group for text in (pre_depends, depends) for group in text.split(",") if group.strip()]
    choices = [[alt.split("(")[0].split(":")[0].strip() for alt in group.split("|")] for group in groups]
    installed = package.apt_installed(sorted({name for names in choices for name in names}), ctx)
    missing = []
    for names in choices:
        if not any(installed.get(name) for name in names) and names[0] not in missing:
            missing.append(names[0])
    return missing
