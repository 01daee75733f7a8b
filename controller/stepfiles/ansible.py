"""Ansible's spelling of a step, mapped onto kiln's agent modules: one table.

A task written for Ansible names its module by its short name (``apt``), its FQCN
(``ansible.builtin.apt``, ``ansible.posix.sysctl``, ``community.general.timezone``) or a
legacy name, and may give its arguments as a ``key=value`` string. :func:`resolve` turns
that spelling into a :class:`Mapping`: the agent module that runs it and how Ansible's
argument names become kiln's. Arguments are then validated with the agent module's SCHEMA
(agent/schema.py), like any kiln step.

Contract with the agent side (issue 9): every target is an agent module with a SCHEMA
(tests/test_modules_ansible5.py walks the table), except the Ansible names in ``NOT_YET``,
which validate refuses at the task's line: a role using them never launches a machine.
``pending`` lists the Ansible arguments a kiln module should learn; until
its SCHEMA knows one, the argument passes to the box unchecked.

``include_vars`` compiles to a step ``{"module": "include_vars", "args": {"candidates":
[name, ...], "files": {name: {variables}}}}``: the candidates in order (templated names
rendered on the box with facts), the role's vars/ files read and decrypted on the
controller; the first candidate present in ``files`` is loaded.

Modules of other operating systems (``OTHER_OS``: pacman, pkgng, zypper, pkg5, launchd, win_package, ...)
compile to a ``fail`` step saying so: the task is valid, and fails only on a box where its ``when`` holds
(Ansible's module would fail there too: it cannot work on Debian). A misspelt name is still unknown.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

FQCN_PREFIXES = ("ansible.builtin.", "ansible.legacy.")
POSIX = ("sysctl", "authorized_key", "mount", "synchronize", "acl", "seboolean", "selinux", "firewalld", "at")
COMMUNITY_GENERAL = (
    "make",
    "timezone",
    "seport",
    "sefcontext",
    "selinux_permissive",
    "ufw",
    "pam_limits",
    "locale_gen",
    "modprobe",
    "alternatives",
    "ini_file",
    "pacman",
    "pkgng",
    "openbsd_pkg",
    "zypper",
    "zypper_repository",
    "apk",
    "homebrew",
    "capabilities",
    "npm",
    "make",
    "filesystem",
    "lvg",
    "lvol",
    "parted",
    "ssh_config",
    "pamd",
)
COMMUNITY_CRYPTO = ("openssh_keypair",)
# modules of other operating systems (Galaxy roles carry their tasks under a when): the collections holding them
COMMUNITY_GENERAL_OTHER_OS = (
    "dnf_config_manager",
    "dnf_versionlock",
    "yum_versionlock",
    "rhsm_repository",
    "rhsm_release",
    "redhat_subscription",
    "rpm_ostree_pkg",
    "pacman_key",
    "urpmi",
    "slackpkg",
    "xbps",
    "swupd",
    "opkg",
    "sorcery",
    "layman",
    "portinstall",
    "sysrc",
    "pkgin",
    "pkg5",
    "pkg5_publisher",
    "pkgutil",
    "svr4pkg",
    "svc",
    "solaris_zone",
    "beadm",
    "swdepot",
    "installp",
    "homebrew_cask",
    "homebrew_tap",
    "homebrew_services",
    "macports",
    "mas",
    "launchd",
    "osx_defaults",
    "portage",
)
WINDOWS = {
    "ansible.windows": (
        "win_package",
        "win_service",
        "win_service_info",
        "win_feature",
        "win_optional_feature",
        "win_updates",
        "win_regedit",
        "win_file",
        "win_copy",
        "win_template",
        "win_shell",
        "win_command",
        "win_powershell",
        "win_user",
        "win_group",
        "win_reboot",
        "win_environment",
        "win_path",
        "win_get_url",
        "win_stat",
        "win_acl",
        "win_dsc",
        "win_share",
        "win_hostname",
    ),
    "community.windows": (
        "win_lineinfile",
        "win_firewall_rule",
        "win_unzip",
        "win_scheduled_task",
        "win_iis_website",
        "win_timezone",
    ),
    "chocolatey.chocolatey": ("win_chocolatey",),
}
OTHER_OS = {
    "pacman": "Arch Linux's package manager",
    "pkgng": "FreeBSD's package manager",
    "openbsd_pkg": "OpenBSD's package manager",
    "zypper": "SUSE's package manager",
    "zypper_repository": "SUSE's repository manager",
    "apk": "Alpine's package manager",
    "homebrew": "macOS's package manager",
    "portage": "Gentoo's package manager",
    "yum_repository": "RedHat's repository manager",
    "rpm_key": "RedHat's key manager",
    "dnf_config_manager": "RedHat's repository switch (dnf config-manager)",
    "dnf_versionlock": "RedHat's version locks (dnf)",
    "yum_versionlock": "RedHat's version locks (yum)",
    "rhsm_repository": "RedHat's subscription repositories",
    "rhsm_release": "RedHat's subscription release",
    "redhat_subscription": "RedHat's subscription manager",
    "rpm_ostree_pkg": "rpm-ostree's package layering (Fedora/RHEL CoreOS)",
    "pacman_key": "Arch Linux's key manager",
    "urpmi": "Mageia's package manager",
    "slackpkg": "Slackware's package manager",
    "xbps": "Void Linux's package manager",
    "swupd": "Clear Linux's package manager",
    "opkg": "OpenWrt's package manager",
    "sorcery": "Source Mage's package manager",
    "layman": "Gentoo's overlay manager",
    "portinstall": "FreeBSD's ports",
    "sysrc": "FreeBSD's rc.conf",
    "pkgin": "NetBSD's (pkgsrc) package manager",
    "pkg5": "Solaris's package manager",
    "pkg5_publisher": "Solaris's package publishers",
    "pkgutil": "Solaris's OpenCSW package manager",
    "svr4pkg": "Solaris's SVR4 package manager",
    "svc": "Solaris's daemontools services",
    "solaris_zone": "Solaris's zones",
    "beadm": "Solaris's boot environments",
    "swdepot": "HP-UX's package manager",
    "installp": "AIX's package manager",
    "homebrew_cask": "macOS's package manager (casks)",
    "homebrew_tap": "macOS's package manager (taps)",
    "homebrew_services": "macOS's package manager (services)",
    "macports": "macOS's MacPorts",
    "mas": "macOS's App Store",
    "launchd": "macOS's service manager",
    "osx_defaults": "macOS's defaults",
    **{name: "Windows" for windows in WINDOWS.values() for name in windows},
    # SELinux is the RedHat family's: roles reach these only where ansible_selinux says it is enabled
    "seport": "SELinux's port labelling",
    "sefcontext": "SELinux's file contexts",
    "seboolean": "SELinux's booleans",
    "selinux": "SELinux's mode",
    "selinux_permissive": "SELinux's permissive domains",
}


@dataclass(frozen=True)
class Mapping:
    """How one Ansible module runs on kiln's agent."""

    module: str
    renames: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)  # argument -> why it changes nothing in kiln
    pending: tuple[str, ...] = ()  # arguments the kiln module should learn (pass unchecked until then)
    free_form: str = ""  # the argument a non key=value string gives (command's cmd)
    ansible: str = ""  # the name as written
    wrap: str = ""  # the argument every other one goes under (set_fact's facts)
    keep: tuple[str, ...] = ()  # with wrap: the arguments that stay where they are


_APT = Mapping(
    "apt",
    renames={"pkg": "name", "update-cache": "update_cache"},
    ignored={
        "force_apt_get": "kiln always uses apt-get on Debian",
        "lock_timeout": "the step's timeout bounds it",
        "auto_install_module_deps": "kiln's apt needs no python3-apt on the box",
        "update_cache_retries": "kiln runs apt-get update once, bounded by the step's timeout",
        "update_cache_retry_max_delay": "kiln runs apt-get update once, bounded by the step's timeout",
    },
)
_SERVICE = Mapping(
    "service",
    pending=(
        "pattern",
        "sleep",
        "arguments",
        "use",
        "runlevel",
    ),
)
_COMMAND = Mapping(
    "command",
    renames={"_raw_params": "cmd", "argv": "argv"},
    free_form="cmd",
    ignored={"warn": "kiln does not warn about commands", "executable": ""},
    pending=("expand_argument_vars", "strip_empty_ends", "stdin_add_newline"),
)
_SHELL = Mapping(
    "shell",
    renames={"_raw_params": "cmd"},
    free_form="cmd",
    ignored={"warn": "kiln does not warn about commands"},
    pending=("executable", "stdin_add_newline"),
)
#: file attributes kiln has yet to learn (chattr); the SELinux ones and unsafe_writes are _NO_SELINUX_ARGS
_FILE_COMMON = ("attributes",)
_NO_SELINUX_ARGS = {
    **{name: "Debian runs without SELinux labels" for name in ("seuser", "serole", "setype", "selevel")},
    "unsafe_writes": "kiln always writes through a temporary file",
}

TABLE: dict[str, Mapping] = {
    "apt": _APT,
    "assemble": Mapping("assemble"),
    "make": Mapping("make"),
    # Ansible runs yum and dnf5 as its dnf action: dnf's arguments, and a failure on a box without dnf
    "dnf": Mapping("dnf"),
    "dnf5": Mapping("dnf"),
    "yum": Mapping("dnf"),
    # Ansible's package hands every argument to the box's manager: apt's are kiln's package's, other managers'
    # are its SCHEMA's foreign_args (accepted here, refused on a box whose manager lacks them, as Ansible's apt does)
    "package": Mapping("package", renames=_APT.renames, ignored=_APT.ignored),
    "service": _SERVICE,
    "systemd": _SERVICE,
    "systemd_service": _SERVICE,
    "command": _COMMAND,
    "shell": _SHELL,
    "file": Mapping("file", ignored=_NO_SELINUX_ARGS, pending=_FILE_COMMON),
    "copy": Mapping(
        "copy",
        ignored=_NO_SELINUX_ARGS,
        pending=("directory_mode", "follow", "local_follow", "checksum") + _FILE_COMMON,
    ),
    "template": Mapping(
        "template",
        ignored=_NO_SELINUX_ARGS,
        pending=(
            "trim_blocks",
            "lstrip_blocks",
            "newline_sequence",
            "variable_start_string",
            "variable_end_string",
            "block_start_string",
            "block_end_string",
            "output_encoding",
            "follow",
        )
        + _FILE_COMMON,
    ),
    "lineinfile": Mapping(
        "line_in_file",
        renames={"dest": "path", "regex": "regexp"},
        ignored=_NO_SELINUX_ARGS,
        pending=("search_string", "others") + _FILE_COMMON,
    ),
    "blockinfile": Mapping(
        "blockinfile",
        renames={"dest": "path", "content": "block"},
        ignored=_NO_SELINUX_ARGS,
        pending=("append_newline", "prepend_newline") + _FILE_COMMON,
    ),
    "replace": Mapping("replace", ignored=_NO_SELINUX_ARGS),
    "user": Mapping(
        "user",
        pending=(
            "expires",
            "generate_ssh_key",
            "ssh_key_bits",
            "ssh_key_type",
            "ssh_key_file",
            "move_home",
            "non_unique",
            "skeleton",
        ),
    ),
    "group": Mapping("group", pending=("non_unique", "local")),
    "cron": Mapping("cron", pending=("cron_file", "disabled", "env", "insertafter", "insertbefore", "backup")),
    "sysctl": Mapping("sysctl", renames={"key": "name", "val": "value"}, pending=("sysctl_set",)),
    "get_url": Mapping(
        "get_url",
        pending=(
            "url_username",
            "url_password",
            "force_basic_auth",
            "backup",
            "tmp_dest",
            "use_proxy",
            "http_agent",
            "client_cert",
            "client_key",
            "use_netrc",
            "decompress",
        ),
    ),
    "unarchive": Mapping(
        "unarchive",
        pending=(
            "remote_src",
            "mode",
            "extra_opts",
            "keep_newer",
            "exclude",
            "include",
            "list_files",
            "copy",
            "validate_certs",
        ),
    ),
    "git": Mapping(
        "git",
        pending=(
            "accept_hostkey",
            "clone",
            "recursive",
            "single_branch",
            "key_file",
            "track_submodules",
            "umask",
            "bare",
            "refspec",
            "remote",
            "executable",
        ),
    ),
    "reboot": Mapping(
        "reboot",
        pending=(
            "pre_reboot_delay",
            "post_reboot_delay",
            "connect_timeout",
            "test_command",
            "search_paths",
            "boot_time_command",
        ),
    ),
    "set_fact": Mapping("set_fact", wrap="facts", keep=("cacheable",)),
    "openssh_keypair": Mapping("openssh_keypair", ignored=_NO_SELINUX_ARGS),
    "pamd": Mapping("pamd"),
    # modules of the same name on the agent (the ones still missing are in NOT_YET, refused at validate)
    **{
        name: Mapping(name)
        for name in (
            "stat",
            "debug",
            "assert",
            "fail",
            "service_facts",
            "package_facts",
            "timezone",
            "hostname",
            "apt_key",
            "apt_repository",
            "deb822_repository",
            "pip",
            "wait_for",
            "authorized_key",
            "locale_gen",
            "ufw",
            "pam_limits",
            "mount",
            "modprobe",
            "alternatives",
            "ini_file",
            "known_hosts",
            "setup",
            "getent",
            "slurp",
            "find",
            "uri",
            "tempfile",
            "pause",
            "npm",
        )
    },
}
# mapped Ansible names whose agent module is still to come: refused at validate ("kiln does not implement")
NOT_YET = ("ufw",)
# compiled by the controller itself (validate.py): names as Ansible spells them
CONTROLLER_MODULES = ("include_tasks", "import_tasks", "include_role", "import_role", "include_vars", "meta", "include")
# what kiln cannot honour: the keyword, then what to do instead
REFUSED_KEYWORDS = {
    "delegate_to": "kiln applies a role to the one machine being baked; there is no other host to delegate to: "
    "do that work in the role of the machine it concerns (or in its verify.yml)",
    "local_action": "steps run on the machine being baked, never on the controller: prepare controller-side files "
    "before the bake and ship them in the role's files/",
    "connection": "kiln connects once over SSH for the whole apply: remove connection",
    "remote_user": "kiln logs in as its own build user and becomes root: use become_user for another user",
    "serial": "a bake has one host: remove serial",
    "strategy": "a bake has one host: remove strategy",
    "throttle": "a bake has one host: remove throttle",
    "async": "kiln runs steps one at a time within the step timeout: remove async/poll (use timeout)",
    "poll": "kiln runs steps one at a time within the step timeout: remove async/poll (use timeout)",
    "any_errors_fatal": "a bake has one host: a failure always ends it (use ignore_errors or rescue)",
    "max_fail_percentage": "a bake has one host: remove max_fail_percentage",
    "debugger": "kiln has no task debugger: use --keep-on-error and log in to the build machine",
}
# keys of a task kiln accepts and that change nothing in a one-host bake
IGNORED_KEYWORDS = ("collections", "diff", "port", "vars_files", "module_defaults")
INCLUDE_KEYWORDS = (
    "apply",
    "file",
    "name",
    "tasks_from",
    "vars_from",
    "defaults_from",
    "handlers_from",
    "public",
    "allow_duplicates",
    "rolespec_validate",
)


def resolve(key: str, kiln_modules: Any) -> Mapping | None:
    """The mapping for a step key: a kiln module as it is, an Ansible name, its FQCN; None otherwise."""
    short = short_name(key)
    if short is None:
        return None
    if key in kiln_modules and key not in TABLE:
        return Mapping(key, ansible=key)
    if short in OTHER_OS:
        return Mapping("fail", ansible=key)
    mapping = TABLE.get(short)
    if mapping is None:
        return None
    return Mapping(
        mapping.module,
        mapping.renames,
        mapping.ignored,
        mapping.pending,
        mapping.free_form,
        key,
        mapping.wrap,
        mapping.keep,
    )


def short_name(key: str) -> str | None:
    """``apt`` for ``apt``, ``ansible.builtin.apt`` or ``ansible.legacy.apt``; None for an FQCN kiln lacks."""
    for prefix in FQCN_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    if key.startswith("ansible.posix."):
        name = key[len("ansible.posix.") :]
        return name if name in POSIX else None
    if key.startswith("community.general."):
        name = key[len("community.general.") :]
        return name if name in COMMUNITY_GENERAL or name in COMMUNITY_GENERAL_OTHER_OS else None
    for collection, names in WINDOWS.items():
        if key.startswith(collection + "."):
            name = key[len(collection) + 1 :]
            return name if name in names else None
    if key.startswith("community.crypto."):
        name = key[len("community.crypto.") :]
        return name if name in COMMUNITY_CRYPTO else None
    if "." in key:
        return None
    return key


def is_controller_module(key: str) -> str | None:
    short = short_name(key)
    return short if short in CONTROLLER_MODULES else None


KV = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)=(.*)$", re.S)
COMMAND_KV = ("creates", "removes", "chdir", "executable", "warn", "stdin", "stdin_add_newline", "strip_empty_ends")


class KeyValueError(ValueError):
    pass


def parse_key_values(text: str, free_form: str = "") -> dict[str, Any]:
    """Ansible's ``key=value`` argument string as a mapping.

    For modules with a free form (command, shell) only the keys Ansible takes from it
    (creates, chdir, ...) are arguments; the rest is the command as written.
    """
    if free_form:
        try:
            words = shlex.split(text, posix=True)
        except ValueError as exc:
            raise KeyValueError(f"cannot split the key=value arguments: {exc}") from None
        rest, args = [], {}
        for raw, word in zip(_raw_words(text), words, strict=False):
            match = KV.match(word)
            if match and match.group(1) in COMMAND_KV:
                args[match.group(1)] = match.group(2)
            else:
                rest.append(raw)
        if rest:
            args[free_form] = " ".join(rest)
        return args
    shielded, spans = _shield_jinja(text)  # msg={{ a | default('b c') }} is one argument, as Ansible splits it
    try:
        words = [_unshield(word, spans) for word in shlex.split(shielded, posix=True)]
    except ValueError as exc:
        raise KeyValueError(f"cannot split the key=value arguments: {exc}") from None
    args = {}
    for word in words:
        match = KV.match(word)
        if not match:
            raise KeyValueError(f"'{word}' is not key=value (write the arguments as a mapping, or as key=value pairs)")
        args[match.group(1)] = match.group(2)
    return args


JINJA_SPAN = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


def _shield_jinja(text: str) -> tuple[str, list[str]]:
    """``text`` with each Jinja span replaced by a placeholder without blanks or quotes, and the spans."""
    spans: list[str] = []

    def keep(match: re.Match[str]) -> str:
        spans.append(match.group(0))
        return f"\0{len(spans) - 1}\0"

    return JINJA_SPAN.sub(keep, text), spans


def _unshield(word: str, spans: list[str]) -> str:
    return re.sub("\0(\\d+)\0", lambda match: spans[int(match.group(1))], word)


def _raw_words(text: str) -> list[str]:
    """The words of ``text`` as written (quotes kept), aligned with shlex's split."""
    lexer = shlex.shlex(text, posix=False, punctuation_chars=False)
    lexer.whitespace_split = True
    return list(lexer)


def coerce(spec: dict[str, Any] | None, value: str) -> Any:
    """A key=value string value typed as the kiln argument expects (Ansible converts them the same way)."""
    kind = (spec or {}).get("type", "str")
    if kind == "bool" and value.lower() in ("yes", "true", "on", "1", "no", "false", "off", "0"):
        return value.lower() in ("yes", "true", "on", "1")
    if kind in ("int", "number", "float") and re.match(r"^-?\d+(\.\d+)?$", value):
        return float(value) if "." in value else int(value)
    if kind == "list" and "," in value:
        return [v.strip() for v in value.split(",")]
    return value


def template_to_expression(text: str) -> str:
    """``setup-{{ ansible_os_family }}.yml`` as the expression ``'setup-' ~ (ansible_os_family) ~ '.yml'``."""
    parts = []
    for literal, expr in re.findall(r"([^{]*(?:\{(?!\{)[^{]*)*)(?:\{\{(.*?)\}\}|$)", text, re.S):
        if literal:
            parts.append(repr(literal))
        if expr.strip():
            parts.append(f"({expr.strip()})")
    return " ~ ".join(parts) if parts else "''"


def glob_of(text: str) -> str:
    """A templated file name as a glob: each ``{{ ... }}`` matches anything."""
    return re.sub(r"\{\{.*?\}\}", "*", text, flags=re.S)
