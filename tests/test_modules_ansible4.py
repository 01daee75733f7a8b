"""community.general's pamd and community.crypto's openssh_keypair as agent modules.

pamd's line parser and editor are pure: each case runs the collection's own pamd code in-process
(unpacked by scripts/setup.sh --test in .venv/ansible-collections) and kiln's on the same file
and arguments, and compares the files written, the change counts and the refusals; no expected
text is written here. The end states on a box against ansible-playbook are compared in
tests/test_ansible_parity.py (group kiln_auth). Refusals at validate are checked with file:line:column.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from kiln.agent.api import ModuleError
from kiln.agent.modules import pamd

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / ".venv" / "ansible-collections"


def _reference():
    if not (COLLECTIONS / "ansible_collections" / "community" / "general").is_dir():
        pytest.fail(f"community.general is not unpacked in {COLLECTIONS}: run scripts/setup.sh --test")
    sys.path.insert(0, str(COLLECTIONS))
    try:
        from ansible_collections.community.general.plugins.modules import pamd as reference
    finally:
        sys.path.remove(str(COLLECTIONS))
    return reference


# Debian bookworm's /etc/pam.d/sshd (rules, bracketed controls, @include, trailing comments in args)
SSHD = """# PAM configuration for the Secure Shell service

# Standard Un*x authentication.
@include common-auth

# Disallow non-root logins when /etc/nologin exists.
account    required     pam_nologin.so

# Standard Un*x authorization.
@include common-account

session [success=ok ignore=ignore module_unknown=ignore default=bad]        pam_selinux.so close
session    required     pam_loginuid.so
session    optional     pam_keyinit.so force revoke
@include common-session

# Print the message of the day upon successful login.
session    optional     pam_motd.so  motd=/run/motd.dynamic
session    optional     pam_motd.so noupdate
session    optional     pam_mail.so standard noenv # [1]
session    required     pam_limits.so
session    required     pam_env.so # [1]
session    required     pam_env.so user_readenv=1 envfile=/etc/default/locale
session [success=ok ignore=ignore module_unknown=ignore default=bad]        pam_selinux.so open

# Standard Un*x password updating.
@include common-password
"""

# a file whose first line is a rule, with comments before and after rules and at the end
SU = """auth       sufficient pam_rootok.so
# auth       required   pam_wheel.so
session       required   pam_env.so readenv=1

session    optional   pam_mail.so nopen
session    required   pam_limits.so
# the end
#
"""

COMMON_AUTH = """# here are the per-package modules (the "Primary" block)
auth\t[success=1 default=ignore]\tpam_unix.so nullok
# here's the fallback if no module succeeds
auth\trequisite\t\t\tpam_deny.so
auth\trequired\t\t\tpam_permit.so
"""

SSHD_MOTD = ("session", "optional", "pam_motd.so")
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("sshd-absent", SSHD, {"state": "absent"}),
    ("sshd-absent-none", SSHD, {"state": "absent", "module_path": "pam_nothing.so"}),
    ("sshd-updated-control", SSHD, {"new_control": "required"}),
    ("sshd-updated-args-cleared", SSHD, {"module_arguments": ""}),
    ("sshd-updated-args", SSHD, {"module_arguments": "motd=/etc/motd,noupdate"}),
    ("sshd-updated-same", SSHD, {"type": "session", "control": "required", "module_path": "pam_limits.so"}),
    (
        "sshd-updated-bracketed",
        SSHD,
        {
            "control": "[success=ok ignore=ignore module_unknown=ignore default=bad]",
            "module_path": "pam_selinux.so",
            "new_control": "[success=1 default=ignore]",
        },
    ),
    (
        "sshd-updated-type-and-path",
        SSHD,
        {"control": "required", "module_path": "pam_loginuid.so", "new_type": "-session", "new_module_path": "x.so"},
    ),
    (
        "sshd-before",
        SSHD,
        {
            "state": "before",
            "new_type": "session",
            "new_control": "required",
            "new_module_path": "pam_kiln.so",
            "module_arguments": ["a=1", "b"],
        },
    ),
    (
        "sshd-before-after-include",
        SSHD,
        {
            "state": "before",
            "control": "[success=ok ignore=ignore module_unknown=ignore default=bad]",
            "module_path": "pam_selinux.so",
            "new_type": "session",
            "new_control": "optional",
            "new_module_path": "pam_kiln.so",
        },
    ),
    (
        "sshd-after",
        SSHD,
        {
            "state": "after",
            "new_type": "session",
            "new_control": "optional",
            "new_module_path": "pam_kiln.so",
            "module_arguments": "quiet",
        },
    ),
    (
        "sshd-after-last-rule",
        SSHD,
        {
            "state": "after",
            "control": "[success=ok ignore=ignore module_unknown=ignore default=bad]",
            "module_path": "pam_selinux.so",
            "new_type": "session",
            "new_control": "required",
            "new_module_path": "pam_kiln.so",
        },
    ),
    ("sshd-args-present-new", SSHD, {"state": "args_present", "module_arguments": ["quiet", "motd=/etc/kiln"]}),
    ("sshd-args-present-value", SSHD, {"state": "args_present", "module_arguments": "motd=/etc/kiln"}),
    (
        "sshd-args-present-there",
        SSHD,
        {"state": "args_present", "module_arguments": "noupdate", "control": "optional", "module_path": "pam_motd.so"},
    ),
    ("sshd-args-present-bracket", SSHD, {"state": "args_present", "module_arguments": "[a b]"}),
    ("sshd-args-absent", SSHD, {"state": "args_absent", "module_arguments": "noupdate,motd=/run/motd.dynamic"}),
    ("sshd-args-absent-none", SSHD, {"state": "args_absent", "module_arguments": ["quiet"]}),
    (
        "su-absent-first",
        SU,
        {"type": "auth", "control": "sufficient", "module_path": "pam_rootok.so", "state": "absent"},
    ),
    (
        "su-before-first",
        SU,
        {
            "type": "auth",
            "control": "sufficient",
            "module_path": "pam_rootok.so",
            "state": "before",
            "new_type": "auth",
            "new_control": "required",
            "new_module_path": "pam_wheel.so",
        },
    ),
    (
        "su-before-drops-comments",
        SU,
        {
            "type": "session",
            "control": "required",
            "module_path": "pam_env.so",
            "state": "before",
            "new_type": "auth",
            "new_control": "required",
            "new_module_path": "pam_wheel.so",
        },
    ),
    (
        "su-after-drops-trailing",
        SU,
        {
            "type": "session",
            "control": "required",
            "module_path": "pam_limits.so",
            "state": "after",
            "new_type": "session",
            "new_control": "optional",
            "new_module_path": "pam_kiln.so",
        },
    ),
    (
        "su-after-middle",
        SU,
        {
            "type": "auth",
            "control": "sufficient",
            "module_path": "pam_rootok.so",
            "state": "after",
            "new_type": "auth",
            "new_control": "required",
            "new_module_path": "pam_wheel.so",
            "module_arguments": "use_uid",
        },
    ),
    (
        "tabs-updated",
        COMMON_AUTH,
        {"type": "auth", "control": "requisite", "module_path": "pam_deny.so", "new_control": "required"},
    ),
    (
        "tabs-bracketed-args",
        COMMON_AUTH,
        {
            "type": "auth",
            "control": "[success=1 default=ignore]",
            "module_path": "pam_unix.so",
            "state": "args_present",
            "module_arguments": "try_first_pass",
        },
    ),
    (
        "indented-comment",
        "  # indented\nauth required pam_permit.so\n",
        {"type": "auth", "control": "required", "module_path": "pam_permit.so"},
    ),
    (
        "one-line-updated",
        "auth required pam_permit.so",
        {"type": "auth", "control": "required", "module_path": "pam_permit.so", "new_control": "optional"},
    ),
    (
        "bad-control-value",
        "auth [succes=ok] pam_permit.so\n",
        {"type": "auth", "control": "required", "module_path": "pam_permit.so"},
    ),
    (
        "bad-control-action",
        "auth [success=maybe] pam_permit.so\n",
        {"type": "auth", "control": "required", "module_path": "pam_permit.so"},
    ),
    (
        "bad-simple-control",
        "auth sometimes pam_permit.so\n",
        {"type": "auth", "control": "required", "module_path": "pam_permit.so"},
    ),
]
MARK = re.compile(r"^# Updated by Ansible - .*$", re.M)


def params_of(given: dict[str, Any]) -> dict[str, Any]:
    return {"type": SSHD_MOTD[0], "control": SSHD_MOTD[1], "module_path": SSHD_MOTD[2], "state": "updated", **given}


def run_reference(reference, content: str, params: dict[str, Any]) -> tuple[str, Any, str]:
    """The collection's edit: (outcome, change count or message, file written)."""
    service = reference.PamdService(content)
    find = (params["type"], params["control"], params["module_path"])
    new = (params.get("new_type"), params.get("new_control"), params.get("new_module_path"))
    arguments = pamd.as_list(params.get("module_arguments"))
    state = params["state"]
    if state == "args_present" and any(a.startswith("[") for a in reference.parse_module_arguments(arguments)):
        return "failed", "bracketed", content
    calls = {
        "updated": lambda: service.update_rule(*find, *new, arguments),
        "before": lambda: service.insert_before(*find, *new, arguments),
        "after": lambda: service.insert_after(*find, *new, arguments),
        "args_present": lambda: service.add_module_arguments(*find, arguments),
        "args_absent": lambda: service.remove_module_arguments(*find, arguments),
        "absent": lambda: service.remove(*find),
    }
    changes = calls[state]()
    valid, message = service.validate()
    if not valid:
        return "failed", message, content
    return "ok", changes, MARK.sub("# Updated by Ansible - T", str(service)) if changes else content


def run_kiln(content: str, params: dict[str, Any]) -> tuple[str, Any, str]:
    try:
        lines = pamd.parse(content)
        changes = pamd.edit(lines, params)
        found = pamd.problem(lines)
    except ModuleError as exc:
        return "failed", "bracketed" if "bracketed" in exc.msg else exc.msg, content
    if found:
        return "failed", found, content
    return "ok", changes, pamd.render(lines, "T") if changes else content


@pytest.mark.parametrize(("content", "given"), [pytest.param(c, g, id=i) for i, c, g in CASES])
def test_pamd_edits_as_the_collection_does(content: str, given: dict[str, Any]) -> None:
    reference = _reference()
    params = params_of(given)
    assert run_kiln(content, params) == run_reference(reference, content, params)


@pytest.mark.parametrize(("content", "given"), [pytest.param(c, g, id=i) for i, c, g in CASES])
def test_pamd_again_on_its_own_output_as_the_collection_does(content: str, given: dict[str, Any]) -> None:
    """The second run (the idempotence gate's): the same edit on the file the first one wrote."""
    reference = _reference()
    params = params_of(given)
    outcome, _, written = run_reference(reference, content, params)
    if outcome != "ok":
        pytest.skip("the first run fails (compared above)")
    assert run_kiln(written, params) == run_reference(reference, written, params)


def test_pamd_module_arguments_are_split_as_ansibles_list_type() -> None:
    from ansible.module_utils.common.validation import check_type_list

    for value in ("crond,quiet", "", "listsep=,", ["listsep=,"], 5, ["a", 1]):
        expected = [str(v) for v in check_type_list(value)]
        assert pamd.as_list(value) == expected, value


def test_pamd_a_line_that_is_no_rule_fails_with_its_text() -> None:
    with pytest.raises(ModuleError, match="auth-only"):
        pamd.parse("auth-only\n")


# --- refusals at validate, with file:line:column ------------------------------------------------------
def role_problems(root: Path, tasks: str) -> list[str]:
    from kiln.controller.config import Config
    from kiln.controller.stepfiles.compile import validate_roles

    main = root / "roles" / "r" / "tasks" / "main.yml"
    main.parent.mkdir(parents=True)
    main.write_text(tasks)
    found = validate_roles(root, ["r"], Config(path=root / "kiln.yaml"))
    return [f"{Path(d.file).name}:{d.line}:{d.column}: {d.message}" for d in found]


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        (
            "- community.crypto.openssh_keypair:\n    path: /etc/k\n    passphrase: secret\n",
            "main.yml:3:17: community.crypto.openssh_keypair.passphrase: the collection encrypts keys with its "
            "cryptography backend",
        ),
        (
            "- community.crypto.openssh_keypair: {path: /etc/k, backend: cryptography}\n",
            "main.yml:1:61: community.crypto.openssh_keypair.backend: kiln makes keys with ssh-keygen",
        ),
        (
            "- community.crypto.openssh_keypair: {path: /etc/k, type: rsa2}\n",
            "main.yml:1:58: community.crypto.openssh_keypair.type: 'rsa2' is not one of",
        ),
        (
            "- community.general.pamd: {name: sshd, type: session, control: optional}\n",
            "main.yml:1:3: community.general.pamd: missing required argument 'module_path'",
        ),
        (
            "- community.general.pamd:\n    name: sshd\n    type: session\n    control: optional\n"
            "    module_path: pam_motd.so\n    state: after\n",
            "main.yml:1:3: community.general.pamd: 'new_control' is required when state is after",
        ),
    ],
)
def test_refusals_name_file_line_column(tmp_path: Path, tasks: str, expected: str) -> None:
    found = role_problems(tmp_path, tasks)
    assert any(p.startswith(expected) for p in found), found


def test_the_modules_compile_under_their_collection_names(tmp_path: Path) -> None:
    tasks = (
        "- community.crypto.openssh_keypair: {path: /etc/k, type: ed25519, mode: '0600', seuser: x}\n"
        "- community.general.pamd: {name: sshd, type: session, control: optional, module_path: pam_motd.so, "
        "state: absent, backup: true}\n"
    )
    assert role_problems(tmp_path, tasks) == []


# --- ini_file: the collection's do_ini on a real file, kiln's edit on the same lines --------------------
INI = """; a comment
top = 1

[server]
port = 80
# port = 8080
host=localhost
listen = a
listen = b

[client]
name = x
[server]
port = 81
tag = second
"""


class ReferenceModule:
    """What the collection's do_ini asks of AnsibleModule: flags, a temporary folder, a move."""

    check_mode = False
    _diff = False

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = str(tmpdir)

    def fail_json(self, **kwargs: Any) -> None:
        raise RuntimeError(kwargs.get("msg"))

    def atomic_move(self, src: str, dest: str, unsafe_writes: bool = False) -> None:
        Path(src).replace(dest)

    def backup_local(self, path: str) -> str:
        return ""


INI_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("set", INI, {"section": "server", "option": "port", "value": "8080"}),
    ("same", INI, {"section": "server", "option": "host", "value": "localhost"}),
    ("same-ignore-spaces", INI, {"section": "server", "option": "host", "value": "localhost", "ignore_spaces": True}),
    ("inactive-kept", INI, {"section": "server", "option": "port", "value": "80", "modify_inactive_option": False}),
    ("values", INI, {"section": "server", "option": "listen", "values": ["b", "c"]}),
    ("values-not-exclusive", INI, {"section": "server", "option": "listen", "values": ["c"], "exclusive": False}),
    ("new-option", INI, {"section": "client", "option": "timeout", "value": "5", "no_extra_spaces": True}),
    ("no-section", INI, {"option": "top", "value": "2"}),
    ("new-section", INI, {"section": "extra", "option": "k", "value": "v"}),
    ("only-section", INI, {"section": "bare", "allow_no_value": True}),
    ("no-value", INI, {"section": "client", "option": "flag", "allow_no_value": True}),
    (
        "has-values",
        INI,
        {
            "section": "server",
            "option": "port",
            "value": "90",
            "section_has_values": [{"option": "tag", "value": "second"}],
        },
    ),
    (
        "has-values-new",
        INI,
        {
            "section": "server",
            "option": "port",
            "value": "90",
            "section_has_values": [{"option": "tag", "values": ["third"]}],
        },
    ),
    ("absent-option", INI, {"section": "server", "option": "listen", "state": "absent"}),
    (
        "absent-value",
        INI,
        {"section": "server", "option": "listen", "values": ["a"], "state": "absent", "exclusive": False},
    ),
    ("absent-section", INI, {"section": "client", "state": "absent"}),
    ("absent-nothing", INI, {"section": "nowhere", "option": "x", "state": "absent"}),
    ("no-final-newline", "[a]\nb = 1", {"section": "a", "option": "b", "value": "1"}),
    ("empty", "", {"section": "a", "option": "b", "value": "1"}),
]


def ini_params(given: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        "state": "present",
        "exclusive": True,
        "no_extra_spaces": False,
        "ignore_spaces": False,
        "allow_no_value": False,
        "modify_inactive_option": True,
    }
    return {**defaults, **given}


def ini_reference(tmp_path: Path, content: str, params: dict[str, Any]) -> tuple[bool, str, str]:
    reference = _reference_module("ini_file")
    path = tmp_path / "ref.ini"
    path.write_text(content)
    values = [params["value"]] if params.get("value") is not None else list(params.get("values") or [])
    conditions = [
        {"option": c["option"], "values": [c["value"]] if c.get("value") is not None else list(c.get("values") or [])}
        for c in params.get("section_has_values") or []
    ] or None
    changed, _, _, msg = reference.do_ini(
        ReferenceModule(tmp_path),
        str(path),
        params.get("section"),
        conditions,
        params.get("option"),
        values,
        params["state"],
        params["exclusive"],
        False,
        params["no_extra_spaces"],
        params["ignore_spaces"],
        True,
        params["allow_no_value"],
        params["modify_inactive_option"],
        False,
    )
    return changed, msg, path.read_text()


def _reference_module(name: str):
    if not (COLLECTIONS / "ansible_collections" / "community" / "general").is_dir():
        pytest.fail(f"community.general is not unpacked in {COLLECTIONS}: run scripts/setup.sh --test")
    sys.path.insert(0, str(COLLECTIONS))
    try:
        import importlib

        return importlib.import_module(f"ansible_collections.community.general.plugins.modules.{name}")
    finally:
        sys.path.remove(str(COLLECTIONS))


@pytest.mark.parametrize(("content", "given"), [pytest.param(c, g, id=i) for i, c, g in INI_CASES])
def test_ini_file_edits_as_the_collection_does(tmp_path: Path, content: str, given: dict[str, Any]) -> None:
    from kiln.agent.modules import ini_file

    params = ini_params(given)
    lines, changed, msg = ini_file.edit(params, content.splitlines(keepends=True))
    assert (changed, msg, "".join(lines)) == ini_reference(tmp_path, content, params)
