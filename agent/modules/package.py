"""Install, upgrade or remove packages with the box's package manager (apt or dnf).

Installed versions are read first (dpkg-query / rpm); when every package is already
as wanted, the package manager is not called at all.

Example::

    - package: {name: [nginx, curl], state: present, update_cache: true, cache_valid_time: 3600}
    - package: {name: "hello=2.10-3"}        # apt pin (dnf: hello-2.10)
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import time
from typing import Any, Dict, List, Tuple

from ..api import Context, ModuleError, Result, as_list

# apt's own arguments (Ansible's apt): package hands them to apt, as Ansible's package does on Debian
APT_ARGS: Dict[str, Dict[str, Any]] = {
    "upgrade": {
        "type": "raw",
        "description": "Upgrade the installed packages instead: yes/safe (apt-get upgrade --with-new-pkgs), "
        "dist/full (apt-get dist-upgrade), no; true is yes. Packages in name are not installed then.",
    },
    "autoremove": {
        "type": "bool",
        "default": False,
        "description": "Remove the packages nothing needs any more (--auto-remove; alone: apt-get autoremove).",
    },
    "autoclean": {
        "type": "bool",
        "default": False,
        "description": "Without name: drop downloaded packages that can no longer be fetched (apt-get autoclean).",
    },
    "only_upgrade": {
        "type": "bool",
        "default": False,
        "description": "Only upgrade packages already installed (--only-upgrade).",
    },
    "allow_downgrade": {
        "type": "bool",
        "default": False,
        "aliases": ["allow-downgrade", "allow_downgrades", "allow-downgrades"],
        "description": "Allow a pinned version older than the installed one (--allow-downgrades).",
    },
    "dpkg_options": {
        "type": "str",
        "default": "force-confdef,force-confold",
        "description": "dpkg options, comma-separated (each as -o Dpkg::Options::=--OPTION).",
    },
    "force": {"type": "bool", "default": False, "description": "apt-get --force-yes (dangerous)."},
    "allow_unauthenticated": {
        "type": "bool",
        "default": False,
        "aliases": ["allow-unauthenticated"],
        "description": "Install packages that cannot be authenticated (--allow-unauthenticated).",
    },
    "fail_on_autoremove": {
        "type": "bool",
        "default": False,
        "description": "Fail rather than remove packages an install would remove (--no-remove).",
    },
    "deb": {
        "type": "str",
        "description": "A .deb to install: a path on the box or a URL (downloaded first); the dependencies it "
        "lacks are installed with apt-get, then dpkg -i, as Ansible's apt does. Not with name or upgrade.",
    },
    "clean": {
        "type": "bool",
        "default": False,
        "description": "apt-get clean first (the downloaded package files); alone, it is always a change, as in "
        "Ansible.",
    },
    "allow_change_held_packages": {
        "type": "bool",
        "default": False,
        "description": "Install or upgrade packages that are held (--allow-change-held-packages).",
    },
    "policy_rc_d": {
        "type": "int",
        "description": "The exit status of a /usr/sbin/policy-rc.d written for the step (101: installed "
        "services are not started); one already there is put back after.",
    },
}

# other package managers' arguments (every manager ansible_pkg_mgr can name, as ansible-core 2.19 and
# community.general document them), beside apt's: Ansible's package hands them to the box's manager, which
# refuses those it does not take when the step runs (tests/test_modules_package.py checks the table)
FOREIGN_ARGS: Dict[str, str] = {
    "accept": "pkg5",
    "accept_licences": "pkg5",
    "accept_license": "installp",
    "accept_licenses": "pkg5",
    "accept_pubkey": "xbps",
    "allow_vendor_change": "zypper",
    "allowerasing": "dnf, dnf5",
    "annotation": "pkgng",
    "auto_import_keys": "zypper",
    "available": "apk",
    "backend": "atomic_container",
    "backtrack": "portage",
    "be_name": "pkg5",
    "best": "dnf, dnf5",
    "bugfix": "dnf, dnf5",
    "bundle": "swupd",
    "cached": "pkgng",
    "cacheonly": "dnf, dnf5",
    "category": "svr4pkg",
    "changed_use": "portage",
    "chroot": "pkgng",
    "clean_deps": "zypper",
    "conf_file": "dnf, dnf5",
    "contenturl": "swupd",
    "deep": "portage",
    "depclean": "portage",
    "depends": "sorcery",
    "depot": "swdepot",
    "disable_excludes": "dnf, dnf5",
    "disable_gpg_check": "dnf, dnf5, zypper",
    "disable_plugin": "dnf, dnf5",
    "disable_recommends": "zypper",
    "disablerepo": "dnf, dnf5",
    "download_dir": "dnf, dnf5",
    "download_only": "dnf, dnf5",
    "enable_plugin": "dnf, dnf5",
    "enablerepo": "dnf, dnf5",
    "exclude": "dnf, dnf5",
    "executable": "opkg, pacman",
    "expire-cache": "dnf, dnf5",
    "extra_args": "pacman, zypper",
    "extra_args_precommand": "zypper",
    "force_formula": "homebrew",
    "force_resolution": "zypper",
    "format": "swupd",
    "formula": "homebrew",
    "full_upgrade": "pkgin",
    "getbinpkg": "portage",
    "getbinpkgonly": "portage",
    "grimoire": "sorcery",
    "ignore_osver": "pkgng",
    "image": "atomic_container",
    "install_options": "homebrew",
    "install_repoquery": "dnf, dnf5",
    "install_weak_deps": "dnf, dnf5",
    "installroot": "dnf, dnf5, urpmi",
    "jail": "pkgng",
    "jobs": "portage",
    "keepgoing": "portage",
    "list": "dnf, dnf5",
    "loadavg": "portage",
    "manifest": "swupd",
    "mode": "atomic_container",
    "newuse": "portage",
    "no_cache": "apk",
    "no_recommends": "urpmi",
    "nobest": "dnf, dnf5",
    "nodeps": "portage",
    "noreplace": "portage",
    "oldpackage": "zypper",
    "oneshot": "portage",
    "onlydeps": "portage",
    "options": "homebrew",
    "path": "homebrew",
    "pkgsite": "pkgng",
    "port": "macports",
    "proxy": "svr4pkg",
    "quiet": "portage, zypper",
    "quietbuild": "portage",
    "quietfail": "portage",
    "reason": "pacman",
    "reason_for": "pacman",
    "recurse": "xbps",
    "refresh": "pkg5, zypper",
    "release": "swupd",
    "releasever": "dnf, dnf5",
    "remove_nosave": "pacman",
    "replacefiles": "zypper",
    "repositories": "xbps",
    "repository": "apk, sorcery",
    "repository_path": "installp",
    "response_file": "svr4pkg",
    "root": "urpmi, xbps",
    "rootdir": "pkgng",
    "rootfs": "atomic_container",
    "security": "dnf, dnf5",
    "select": "portage",
    "selfupdate": "macports",
    "simple_errors": "zypper",
    "skip_broken": "dnf, dnf5",
    "skip_post_errors": "zypper",
    "spell": "sorcery",
    "src": "svr4pkg",
    "sslverify": "dnf, dnf5",
    "sync": "portage",
    "type": "zypper",
    "update_cache_extra_args": "pacman",
    "update_codex": "sorcery",
    "update_homebrew": "homebrew",
    "update_only": "dnf, dnf5",
    "update_ports": "macports",
    "upgrade_all": "homebrew",
    "upgrade_extra_args": "pacman",
    "upgrade_options": "homebrew",
    "upgrade_xbps": "xbps",
    "url": "swupd",
    "use_backend": "dnf",
    "use_globs": "pkgng",
    "usepkg": "portage",
    "usepkgonly": "portage",
    "validate_certs": "dnf, dnf5",
    "values": "atomic_container",
    "variant": "macports",
    "variants": "macports",
    "verbose": "pkg5, portage",
    "verify": "swupd",
    "version": "swupd",
    "versionurl": "swupd",
    "withbdeps": "portage",
    "world": "apk",
    "zone": "svr4pkg",
}

# the parameters ansible-core 2.19's apt names when it refuses one (its own words)
APT_SUPPORTED = (
    "allow_change_held_packages, allow_downgrade, allow_unauthenticated, auto_install_module_deps, autoclean, "
    "autoremove, cache_valid_time, clean, deb, default_release, dpkg_options, fail_on_autoremove, force, "
    "force_apt_get, install_recommends, lock_timeout, only_upgrade, package, policy_rc_d, purge, state, "
    "update_cache, update_cache_retries, update_cache_retry_max_delay, upgrade (allow-downgrade, allow-downgrades, "
    "allow-unauthenticated, allow_downgrades, default-release, install-recommends, name, pkg, update-cache)"
)

SCHEMA = {
    "description": "Install (present), upgrade (latest) or remove (absent) packages with apt or dnf. As Ansible's "
    "package, every argument goes to the box's manager: apt's (upgrade, deb, ...) work on apt; another manager's "
    "(enablerepo, ...) are accepted, and fail the step on a box whose manager does not take them.",
    "args": {
        "name": {
            "type": "list",
            "elements": "str",
            "default": [],
            "aliases": ["pkg", "names"],
            "description": "Package name or list of names; pin a version with name=1.2.3 (apt) or name-1.2.3 (dnf); "
            "none: only the other arguments' work (update_cache, upgrade, ...).",
        },
        "state": {
            "type": "str",
            "choices": ["present", "absent", "latest"],
            "default": "present",
            "description": "present: installed (any version unless pinned); latest: the newest "
            "available version; absent: removed.",
        },
        "update_cache": {
            "type": "bool",
            "default": False,
            "aliases": ["update"],
            "description": "Refresh the package index before installing (apt-get update / "
            "dnf makecache). Not a change by itself, and skipped when nothing "
            "needs installing.",
        },
        "cache_valid_time": {
            "type": "int",
            "description": "Seconds the apt index stays fresh: the update is skipped when "
            "the last one is younger than this (implies update_cache).",
        },
        "purge": {
            "type": "bool",
            "default": False,
            "description": "With state=absent on apt: also remove configuration files.",
        },
        "install_recommends": {
            "type": "bool",
            "aliases": ["install-recommends"],
            "description": "apt: install the packages' recommended packages too (true) or not (false); unset: apt's "
            "own setting (Debian's installs them), as Ansible's package leaves it to apt.",
        },
        "default_release": {
            "type": "str",
            "aliases": ["default-release"],
            "description": "apt: the release to install from (apt-get -t), e.g. bookworm-backports.",
        },
        "use": {
            "type": "str",
            "default": "auto",
            "description": "The manager, as Ansible's package picks it: auto (the box's own) or its name; another "
            "manager's name fails the step (kiln runs the box's own).",
        },
        **APT_ARGS,
    },
    "foreign_args": FOREIGN_ARGS,
    "mutually_exclusive": [["deb", "upgrade"]],
    "required_one_of": [
        ["name", "update_cache", "cache_valid_time", "upgrade", "autoremove", "autoclean", "deb", "clean"]
    ],
    "check_mode": "full",
    "diff": True,
    "example": "- package: {name: [nginx, curl], update_cache: true, cache_valid_time: 3600}",
}

APT_LISTS = "/var/lib/apt/lists"
APT_STAMP = "/var/lib/apt/periodic/update-success-stamp"
DPKG_OPTIONS = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}


def dpkg_options(params: Dict[str, Any]) -> List[str]:
    """``-o Dpkg::Options::=--force-confdef ...``: Ansible's dpkg_options (kiln's package keeps both)."""
    given = params.get("dpkg_options")
    if given is None:
        return list(DPKG_OPTIONS)
    return [
        word for option in given.split(",") if option.strip() for word in ("-o", f"Dpkg::Options::=--{option.strip()}")
    ]


def apt_flags(params: Dict[str, Any]) -> List[str]:
    """The flags Ansible's apt adds to apt-get as its arguments ask (all false for kiln's package)."""
    flags = {
        "force": "--force-yes",
        "allow_unauthenticated": "--allow-unauthenticated",
        "allow_downgrade": "--allow-downgrades",
        "autoremove": "--auto-remove",
        "fail_on_autoremove": "--no-remove",
        "allow_change_held_packages": "--allow-change-held-packages",
    }
    return [flag for name, flag in flags.items() if params.get(name)]


def apt_options(params: Dict[str, Any]) -> List[str]:
    """apt-get's options for this step: dpkg keeps changed config files, recommends and release as asked
    (Ansible's spelling: ``-o APT::Install-Recommends=``, ``-t``); install_recommends None is apt's own setting."""
    options = dpkg_options(params) + apt_flags(params)
    if params.get("only_upgrade"):
        options.append("--only-upgrade")
    recommends = params.get("install_recommends")
    if recommends is not None:
        options += ["-o", f"APT::Install-Recommends={'yes' if recommends else 'no'}"]
    if params.get("default_release"):
        options += ["-t", params["default_release"]]
    return options


def _manager(ctx: Context) -> str:
    found = ctx.facts.get("pkg_mgr")
    if not found:
        found = "apt" if shutil.which("apt-get") else ("dnf" if shutil.which("dnf") else "unknown")
    if found == "yum" and shutil.which("dnf"):
        found = "dnf"
    if found not in ("apt", "dnf"):
        raise ModuleError(f"package: unsupported package manager '{found}' (apt and dnf are supported)")
    return found


def split_spec(spec: str, manager: str) -> Tuple[str, str | None]:
    """'nginx=1.22*' -> ('nginx', '1.22*') for apt; dnf specs are passed whole to rpm."""
    if manager == "apt" and "=" in spec:
        name, _, version = spec.partition("=")
        return name, version
    return spec, None


# --- reading (check) ------------------------------------------------------------------
def apt_installed(names: List[str], ctx: Context) -> Dict[str, str | None]:
    """name -> installed version (None when not installed)."""
    found: Dict[str, str | None] = {name: None for name in names}
    if not names:
        return found
    done = ctx.run(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n", *names], check=False)
    for line in done.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, status, version = parts
        name = name.split(":")[0]
        if name in found and status.strip().startswith("ii"):
            found[name] = version
    return found


def apt_candidates(names: List[str], ctx: Context, release: str | None = None) -> Dict[str, str | None]:
    """name -> the version apt would install (None when apt knows no such package), from ``release`` if given."""
    found: Dict[str, str | None] = {name: None for name in names}
    if not names:
        return found
    done = ctx.run(["apt-cache", *(["-t", release] if release else []), "policy", *names], check=False)
    current = None
    for line in done.stdout.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1].split(":")[0]
        elif current in found and line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            found[current] = None if value == "(none)" else value
    return found


def apt_lists_empty() -> bool:
    try:
        entries = os.listdir(APT_LISTS)
    except FileNotFoundError:
        return True
    return not any("_Packages" in e for e in entries)


def apt_cache_age() -> float | None:
    """Seconds since the last successful apt-get update (None: never)."""
    stamps = []
    for path in (APT_STAMP, APT_LISTS):
        try:
            stamps.append(os.stat(path).st_mtime)
        except OSError:
            pass
    if apt_lists_empty() or not stamps:
        return None
    return max(0.0, time.time() - max(stamps))


def rpm_installed(specs: List[str], ctx: Context) -> Dict[str, str | None]:
    found: Dict[str, str | None] = {}
    for spec in specs:
        done = ctx.run(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}\n", spec], check=False)
        found[spec] = done.stdout.strip().splitlines()[0] if done.rc == 0 and done.stdout.strip() else None
    return found


def unsupported_parameters(module: str, names: List[str], supported: str) -> ModuleError:
    """ansible-core's refusal of arguments a module does not take, in its words (apt's and dnf's)."""
    return ModuleError(
        f"Unsupported parameters for (ansible.legacy.{module}) module: {', '.join(names)}. "
        f"Supported parameters include: {supported}."
    )


def refuse_foreign(params: Dict[str, Any], manager: str) -> None:
    """Another manager's arguments fail the step (check mode too), as the box's own module refuses them."""
    given = sorted(name for name in params if name in FOREIGN_ARGS)
    if not given:
        return
    if manager == "apt":
        raise unsupported_parameters("apt", given, APT_SUPPORTED)
    raise ModuleError(f"package on {manager}: kiln does not implement {', '.join(given)}")


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    manager = _manager(ctx)
    asked = {"yum": "dnf"}.get(params.get("use") or "auto", params.get("use") or "auto")  # yum is dnf, as in Ansible
    if asked not in ("auto", manager):
        raise ModuleError(f"package: use {params['use']}, but this box's package manager is {manager}")
    refuse_foreign(params, manager)
    if params.get("deb") and as_list(params["name"]):
        raise ModuleError("apt: parameters are mutually exclusive: deb|package|upgrade")
    specs = as_list(params["name"])
    if manager == "apt":
        names = [split_spec(s, manager)[0] for s in specs]
        return {
            "manager": manager,
            "installed": apt_installed(names, ctx),
            "lists_empty": apt_lists_empty(),
            "cache_age": apt_cache_age(),
        }
    return {"manager": manager, "installed": rpm_installed(specs, ctx)}


# --- deciding and changing (apply) ----------------------------------------------------
def _apt_todo(
    params: Dict[str, Any], installed: Dict[str, str | None], candidates: Dict[str, str | None] | None
) -> List[str]:
    todo = []
    for spec in as_list(params["name"]):
        name, pin = split_spec(spec, "apt")
        have = installed.get(name)
        if params["state"] == "absent":
            if have is not None:
                todo.append(name)
        elif have is None:
            todo.append(spec)
        elif pin is not None and not fnmatch.fnmatchcase(have, pin):
            todo.append(spec)
        elif params["state"] == "latest" and candidates is not None and pin is None:
            if candidates.get(name) is not None and candidates[name] != have:
                todo.append(spec)
    return todo


def _apt_update(ctx: Context) -> None:
    ctx.run(["apt-get", "update", "-q"], env=APT_ENV, timeout=900)
    touch_stamp()


def touch_stamp() -> None:
    """kiln's record of a successful apt-get update, which cache_valid_time reads."""
    try:
        os.makedirs(os.path.dirname(APT_STAMP), exist_ok=True)
        with open(APT_STAMP, "a"):
            pass
        os.utime(APT_STAMP, None)
    except OSError:
        pass


def apt_get(argv: List[str], ctx: Context) -> Any:
    """apt-get install/remove; a failure changed nothing, as Ansible's apt reports it (apt-get stops before dpkg)."""
    done = ctx.run(["apt-get", *argv], env=APT_ENV, timeout=1800, check=False)
    if done.rc != 0:
        shown = " ".join(["apt-get", *argv])
        lines = {"stdout_lines": done.stdout.splitlines(), "stderr_lines": done.stderr.splitlines()}
        output = {"stdout": done.stdout, "stderr": done.stderr, **lines}
        raise ModuleError(f"'{shown}' failed: {done.stderr.strip()}", rc=done.rc, changed=False, **output)
    return done


def _apply_apt(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    want = params["state"]
    installed = state["installed"]
    names = list(installed)
    fresh = (
        params.get("cache_valid_time") is not None
        and state["cache_age"] is not None
        and state["cache_age"] < params["cache_valid_time"]
    )
    cache_updated = False
    wants_update = params["update_cache"] or params.get("cache_valid_time") is not None

    def update_once() -> None:
        nonlocal cache_updated
        if not cache_updated:
            _apt_update(ctx)
            cache_updated = True

    candidates = None
    if want == "latest":
        if wants_update and not fresh and not ctx.check_mode:
            update_once()
        if not state["lists_empty"] or cache_updated:
            candidates = apt_candidates(names, ctx, params.get("default_release"))
    todo = _apt_todo(params, installed, candidates)
    before = {n: (v or "absent") for n, v in installed.items()}
    if not todo:
        return Result(
            False, f"{', '.join(names)}: already {want}", data={"cache_updated": cache_updated, "versions": installed}
        )
    if want == "absent":
        after = dict(before, **{n: "absent" for n in todo})
        if ctx.check_mode:
            return Result(True, f"would remove {', '.join(todo)}", diff={"before": before, "after": after})
        verb = "purge" if params["purge"] else "remove"
        done = apt_get([verb, "-y", "-q", *dpkg_options(params), *apt_flags(params), *todo], ctx)
    else:
        if ctx.check_mode:
            if not state["lists_empty"]:
                known = apt_candidates([split_spec(s, "apt")[0] for s in todo], ctx, params.get("default_release"))
                missing = [n for n, v in known.items() if v is None]
                if missing:
                    raise ModuleError(
                        f"no package available named {', '.join(missing)} "
                        "(the index may be stale: set update_cache: true)"
                    )
            after = dict(before)
            for spec in todo:
                name, pin = split_spec(spec, "apt")
                after[name] = pin or (candidates or {}).get(name) or "present"
            return Result(True, f"would install {', '.join(todo)}", diff={"before": before, "after": after})
        if (wants_update and not fresh) or state["lists_empty"]:
            update_once()
        pinned = ["--allow-downgrades"] if any(split_spec(s, "apt")[1] for s in todo) else []
        # without -q, as ansible-core runs it: the registered stdout reads the same
        done = apt_get(["install", "-y", *apt_options(params), *pinned, *todo], ctx)
    now = apt_installed(names, ctx)
    after = {n: (v or "absent") for n, v in now.items()}
    verb = "removed" if want == "absent" else "installed"
    output = {"stdout": done.stdout, "stderr": done.stderr}
    output.update(stdout_lines=done.stdout.splitlines(), stderr_lines=done.stderr.splitlines())
    return Result(
        True,
        f"{verb} {', '.join(todo)}",
        diff={"before": before, "after": after},
        data={"cache_updated": cache_updated, "versions": now, **output},
    )


def _apply_dnf(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    want = params["state"]
    installed = state["installed"]
    specs = list(installed)
    if want == "absent":
        todo = [s for s in specs if installed[s] is not None]
    elif want == "present":
        todo = [s for s in specs if installed[s] is None]
    else:
        todo = [s for s in specs if installed[s] is None]
        have = [s for s in specs if installed[s] is not None]
        if have:
            cache = [] if params["update_cache"] else ["-C"]
            done = ctx.run(["dnf", "-q", *cache, "check-update", *have], check=False)
            if done.rc == 100:
                upgradable = {
                    line.split()[0].rsplit(".", 1)[0]
                    for line in done.stdout.splitlines()
                    if line.strip() and not line.startswith(" ")
                }
                todo += [s for s in have if s in upgradable]
    before = {s: (v or "absent") for s, v in installed.items()}
    if not todo:
        return Result(False, f"{', '.join(specs)}: already {want}", data={"versions": installed})
    if ctx.check_mode:
        after = dict(before, **{s: ("absent" if want == "absent" else "present") for s in todo})
        verb = "remove" if want == "absent" else "install"
        return Result(True, f"would {verb} {', '.join(todo)}", diff={"before": before, "after": after})
    refresh = ["--refresh"] if params["update_cache"] else []
    if want == "absent":
        ctx.run(["dnf", "-y", "-q", "remove", *todo], timeout=1800)
    elif want == "latest":
        ctx.run(["dnf", "-y", "-q", *refresh, "install", *todo], timeout=1800)
        ctx.run(["dnf", "-y", "-q", "upgrade", *todo], timeout=1800, check=False)
    else:
        ctx.run(["dnf", "-y", "-q", *refresh, "install", *todo], timeout=1800)
    now = rpm_installed(specs, ctx)
    after = {s: (v or "absent") for s, v in now.items()}
    verb = "removed" if want == "absent" else "installed"
    return Result(True, f"{verb} {', '.join(todo)}", diff={"before": before, "after": after}, data={"versions": now})


UPGRADES = {"dist": "dist-upgrade", "full": "dist-upgrade", "yes": "upgrade", "safe": "upgrade"}
CLEANUPS = (("autoclean", "Del "), ("autoremove", "Remv "))


def apt_upgrade_mode(params: Dict[str, Any]) -> str | None:
    """Ansible's upgrade (yes/safe/full/dist; true is yes), or name '*' with state latest (yes)."""
    mode = params.get("upgrade")
    if mode is True:
        mode = "yes"
    if mode in (None, False, "no") and as_list(params["name"]) == ["*"] and params["state"] == "latest":
        mode = "yes"
    if mode in (None, False, "no"):
        return None
    if mode not in UPGRADES:
        raise ModuleError(f"upgrade: value must be one of: dist, full, no, safe, yes, got: {mode}")
    return mode


def _simulated(argv: List[str], marker: str, ctx: Context) -> List[str]:
    """What apt-get would do (its --simulate lines starting with ``marker``): read before acting."""
    done = ctx.run(["apt-get", "-s", *argv], env=APT_ENV, timeout=900)
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith(marker) and len(line.split()) > 1]


def _apt_upgrade(params: Dict[str, Any], state: Dict[str, Any], ctx: Context, mode: str) -> Result:
    """apt-get dist-upgrade / upgrade --with-new-pkgs, as Ansible's apt runs them when aptitude is absent."""
    wants_update = params["update_cache"] or params.get("cache_valid_time") is not None
    age = state["cache_age"]
    fresh = params.get("cache_valid_time") is not None and age is not None and age < params["cache_valid_time"]
    updated = False
    if (wants_update and not fresh or state["lists_empty"]) and not ctx.check_mode:
        _apt_update(ctx)
        updated = True
    argv = [UPGRADES[mode], *(["--with-new-pkgs"] if UPGRADES[mode] == "upgrade" else [])]
    release = ["-t", params["default_release"]] if params.get("default_release") else []
    flags = [*dpkg_options(params), *apt_flags(params), *release]
    todo = _simulated([*flags, *argv], "Inst ", ctx) + _simulated([*flags, *argv], "Remv ", ctx)
    data = {"cache_updated": updated}
    if not todo:
        return Result(False, f"apt-get {' '.join(argv)}: nothing to upgrade", data=data)
    msg = f"apt-get {' '.join(argv)}: {', '.join(sorted(set(todo)))}"
    if ctx.check_mode:
        return Result(True, f"{msg} (check mode)", data=data)
    done = ctx.run(["apt-get", "-y", "-q", *flags, *argv], env=APT_ENV, timeout=3600)
    return Result(True, msg, data=dict(data, stdout=done.stdout, stderr=done.stderr))


def _apt_cleanup(params: Dict[str, Any], ctx: Context) -> Result | None:
    """autoclean / autoremove without packages (apt-get autoclean, autoremove): changed when apt says it did."""
    acted: List[str] = []
    flags = [*dpkg_options(params), *(["--purge"] if params["purge"] else []), *apt_flags(params)]
    for operation, marker in CLEANUPS:
        if not params.get(operation):
            continue
        todo = _simulated([*flags, operation], marker, ctx)
        if todo and not ctx.check_mode:
            ctx.run(["apt-get", "-y", *flags, operation], env=APT_ENV, timeout=1800)
        acted += [f"{operation} {', '.join(todo)}"] if todo else []
    if not any(params.get(operation) for operation, _ in CLEANUPS):
        return None
    return Result(bool(acted), "; ".join(acted) or "nothing to clean or remove")


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if state["manager"] == "apt":
        from . import apt  # imported here: apt builds on this module; on an apt box package is apt, as in Ansible

        return apt.apply(params, state, ctx)
    return _apply_dnf(params, state, ctx)


def change(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    """Upgrade, clean up, install or remove with the box's manager (apt's deb, clean and update alone aside)."""
    if state["manager"] == "apt":
        mode = apt_upgrade_mode(params)
        if mode is not None:
            return _apt_upgrade(params, state, ctx, mode)
        if not as_list(params["name"]):
            cleaned = _apt_cleanup(params, ctx)
            if cleaned is not None:
                return cleaned
        return _apply_apt(params, state, ctx)
    return _apply_dnf(params, state, ctx)
