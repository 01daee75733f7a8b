"""Ansible modules kiln maps must exist on the agent, and the ones added for that (issue 9).

Every name in the mapping table (controller/stepfiles/ansible.py) runs on an agent module with a SCHEMA;
a name whose agent module is missing is refused at validate, with file:line:column, before anything is
launched (it used to compile, launch a machine, and fail there with "unknown module").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.agent.modules import discover
from kiln.controller.stepfiles import ansible

AGENT_MODULES = discover()


def role_problems(root: Path, tasks: str) -> list[str]:
    from kiln.controller.config import Config
    from kiln.controller.stepfiles.compile import validate_roles

    main = root / "roles" / "r" / "tasks" / "main.yml"
    main.parent.mkdir(parents=True)
    main.write_text(tasks)
    found = validate_roles(root, ["r"], Config(path=root / "kiln.yaml"))
    return [f"{Path(d.file).name}:{d.line}:{d.column}: {d.message}" for d in found]


def mapped_names() -> list[str]:
    """Every spelling the table answers: short names, and the collections' FQCNs."""
    names = list(ansible.TABLE)
    names += [f"ansible.posix.{name}" for name in ansible.POSIX]
    names += [f"community.general.{name}" for name in ansible.COMMUNITY_GENERAL]
    names += [f"community.crypto.{name}" for name in ansible.COMMUNITY_CRYPTO]
    return names


@pytest.mark.parametrize("name", mapped_names())
def test_every_mapped_name_runs_on_an_agent_module_with_a_schema(name: str) -> None:
    mapping = ansible.resolve(name, AGENT_MODULES)
    if mapping is None:  # a collection name kiln does not map: validate's "unknown module"
        return
    if name.split(".")[-1] in ansible.NOT_YET:  # declared still to come: it must really be missing
        assert mapping.module not in AGENT_MODULES, f"{name} is implemented now: take it out of ansible.NOT_YET"
        return
    assert mapping.module in AGENT_MODULES, f"{name} maps to '{mapping.module}', which agent/modules/ lacks"
    assert isinstance(getattr(AGENT_MODULES[mapping.module], "SCHEMA", None), dict)


@pytest.mark.parametrize("name", ansible.NOT_YET)
def test_a_mapped_name_without_its_agent_module_is_refused_at_validate(tmp_path: Path, name: str) -> None:
    """What the table maps but the agent lacks: refused where it is written, never launched."""
    found = role_problems(tmp_path, f"- name: A module still to come.\n  {name}:\n    path: /etc/x\n")
    assert any(p.startswith(f"main.yml:2:3: kiln does not implement '{name}' yet") for p in found), found


def test_systemd_unit_is_no_module_as_in_ansible(tmp_path: Path) -> None:
    """ansible-core has no systemd_unit ("couldn't resolve module/action"): kiln refuses it too, at its line."""
    found = role_problems(tmp_path, "- name: Start it.\n  ansible.builtin.systemd_unit: {name: cron, state: started}\n")
    assert any(p.startswith("main.yml:2:3: unknown module 'ansible.builtin.systemd_unit'") for p in found), found


# --- the collections' own code as the reference, in-process ---------------------------------------------
REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / ".venv" / "ansible-collections"


def reference_module(dotted: str):
    import importlib
    import sys

    if not (COLLECTIONS / "ansible_collections" / "ansible" / "posix").is_dir():
        pytest.fail(f"the collections are not unpacked in {COLLECTIONS}: run scripts/setup.sh --test")
    sys.path.insert(0, str(COLLECTIONS))
    try:
        return importlib.import_module(dotted)
    finally:
        sys.path.remove(str(COLLECTIONS))


KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@laptop"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB"
KEYS_FILE = (
    "# kept by hand\n"
    'no-pty,from="10.0.0.1,10.0.0.2" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA old comment\n'
    "\n"
    "garbage line\n"
    'command="echo \\#x",no-agent-forwarding ecdsa-sha2-nistp256 AAAAE2VjZHNh carol@desk x y\n'
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\n"
)


@pytest.mark.parametrize("text", [KEYS_FILE, "", KEY_A + "\n" + KEY_B + "\n"])
def test_authorized_key_reads_and_writes_a_file_as_the_collection(text: str) -> None:
    from kiln.agent.modules import authorized_key

    reference = reference_module("ansible_collections.ansible.posix.plugins.modules.authorized_key")
    assert authorized_key.serialize(authorized_key.parse_file(text)) == reference.serialize(
        reference.parsekeys(None, text)
    )


def test_authorized_key_compares_options_by_name_as_the_collection() -> None:
    from kiln.agent.modules import authorized_key

    params = {"state": "present", "exclusive": False, "key_options": 'from="10.0.0.1,10.0.0.2",no-pty'}
    params["comment"] = "old comment"
    assert authorized_key.edit(params, KEYS_FILE, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA")[1] is False
    params["key_options"] = "no-pty"
    assert authorized_key.edit(params, KEYS_FILE, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA")[1] is True


@pytest.mark.parametrize(
    ("name", "patterns", "excludes", "use_regex"),
    [
        ("a.conf", ["*.conf"], None, False),
        ("a.conf", ["*.conf"], ["a.*"], False),
        ("b.txt", ["*.conf", "*.txt"], ["a*"], False),
        ("readme", [r"^r.*"], None, True),
        ("readme", [r"e"], None, True),  # a regex matches at the start, not anywhere
        ("xreadme", [r".*"], [r"x"], True),
    ],
)
def test_find_matches_names_as_ansible(name: str, patterns: list, excludes: list | None, use_regex: bool) -> None:
    from kiln.agent.modules import find

    reference = reference_module("ansible.modules.find")
    assert find.name_matches(name, patterns, excludes, use_regex) == reference.pfilter(
        name, patterns, excludes, use_regex
    )


@pytest.mark.parametrize("prefix", ["a/b", "../x"])
def test_tempfile_refuses_a_prefix_that_is_a_path(prefix: str) -> None:
    from kiln.agent.api import Context, ModuleError
    from kiln.agent.modules import tempfile

    with pytest.raises(ModuleError, match="prefix must be a valid file name component"):
        tempfile.check({"prefix": prefix, "suffix": "", "state": "file"}, Context())


@pytest.mark.parametrize(
    "body",
    [{"a": 1, "b": "x y"}, [["a", "1"], ["a", "2"]], {"list": ["x", "y"], "none": None}, "raw=text&as=is"],
)
def test_uri_form_urlencodes_as_ansible(body) -> None:
    from kiln.agent.modules import uri

    assert uri.form_urlencoded(body) == reference_module("ansible.modules.uri").form_urlencoded(body)


@pytest.mark.parametrize(("given", "read"), [(200, [200]), ([200, "201"], [200, 201]), ("200,204", [200, 204])])
def test_uri_status_code_is_a_status_or_a_list(given, read) -> None:
    from kiln.agent.modules import uri

    assert uri.statuses(given) == read


@pytest.mark.parametrize(
    "line",
    [
        "git.example.org ssh-ed25519 AAAAC3Nz comment here\n",
        "@cert-authority *.example.org ssh-rsa AAAAB3Nz\n",
        "|1|c2FsdA==|aGFzaA== ecdsa-sha2-nistp256 AAAAE2Vj",
    ],
)
def test_known_hosts_compares_lines_as_ansible(line: str) -> None:
    from kiln.agent.modules import known_hosts

    reference = reference_module("ansible.modules.known_hosts")
    assert known_hosts.normalized(line) == reference.normalize_known_hosts_key(line)


def test_known_hosts_hashes_a_host_as_ssh_keygen_reads_it(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from kiln.agent.modules import known_hosts

    if not shutil.which("ssh-keygen"):
        pytest.fail("ssh-keygen is needed (openssh-client)")
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts.hashed("box.example.org", "box.example.org ssh-ed25519 AAAAC3Nz") + "\n")
    found = subprocess.run(["ssh-keygen", "-F", "box.example.org", "-f", str(path)], capture_output=True, text=True)
    assert "ssh-ed25519 AAAAC3Nz" in found.stdout and "box.example.org" not in path.read_text()


FSTAB = (
    "# <file system> <mount point> <type> <options> <dump> <pass>\n"
    "UUID=1111 / ext4 errors=remount-ro 0 1\n"
    "/dev/vdb1 /srv/old ext4 defaults\n"
    "tmpfs /srv/tmp tmpfs size=10m 0 0 # a comment\n"
    "/swapfile none swap sw 0 0\n"
    "\n"
    "/dev/sdz /srv/kiln\\040data ext4 ro 0 2"
)


@pytest.mark.parametrize(
    "given",
    [
        {"path": "/srv/old", "src": "/dev/vdb1", "fstype": "ext4"},
        {"path": "/srv/tmp", "src": "tmpfs", "fstype": "tmpfs", "opts": "size=20m", "boot": False},
        {"path": "none", "src": "/swapfile2", "fstype": "swap", "opts": "sw"},
        {"path": "/srv/kiln data", "src": "/dev/sdz", "fstype": "ext4", "opts": "ro", "passno": "2"},
        {"path": "/srv/new & more", "src": "//server/share", "fstype": "cifs", "dump": "1"},
    ],
)
def test_mount_edits_fstab_as_the_collection(tmp_path: Path, given: dict) -> None:
    """The collection's _set_mount_save_old and unset_mount on a real file, kiln's set_line/unset_line on its lines."""
    from kiln.agent.modules import mount

    reference = reference_module("ansible_collections.ansible.posix.plugins.modules.mount")

    class Module:
        check_mode = False
        params = {"backup": False}

    params = {"boot": True, "fstab": str(tmp_path / "fstab"), "dump": None, "passno": None, "opts": None, **given}
    args = mount.entry_args(params)
    for edit, theirs in ((mount.set_line, reference.set_mount), (mount.unset_line, reference.unset_mount)):
        (tmp_path / "fstab").write_text(FSTAB)
        ours, changed = edit(FSTAB.splitlines(True), dict(args))
        _name, their_changed = theirs(Module(), dict(args))
        assert changed == their_changed
        assert not changed or "".join(ours) == (tmp_path / "fstab").read_text()  # unchanged: neither writes


def test_setup_reads_local_facts_as_ansible(tmp_path: Path) -> None:
    """JSON, INI and an executable's JSON, each under its file's name; a file that is neither says so."""
    from kiln.agent.api import Context
    from kiln.agent.modules import setup

    (tmp_path / "app.fact").write_text('{"version": "1.2"}')
    (tmp_path / "site.fact").write_text("[general]\nowner = ops\n")
    (tmp_path / "run.fact").write_text("#!/bin/sh\necho '{\"up\": true}'\n")
    (tmp_path / "run.fact").chmod(0o755)
    (tmp_path / "bad.fact").write_text("neither: json, nor = [ini\n")
    (tmp_path / "other.txt").write_text("{}")
    found = setup.local_facts(str(tmp_path), Context())
    assert found["app"] == {"version": "1.2"} and found["site"] == {"general": {"owner": "ops"}}
    assert found["run"] == {"up": True} and "error loading facts as JSON or ini" in found["bad"]
    assert "other" not in found


# modules-load.d and modprobe.d as a box may have them: the module listed, old options, a comment
BOOT_FILES = {
    "load/modules.conf": "# loaded at boot\nloop\nbr_netfilter # for bridges\n",
    "load/other.conf": "overlay\n",
    "options/old.conf": "options br_netfilter nf_call=0\noptions loop max_loop=8\n",
}


@pytest.mark.parametrize(
    ("name", "params", "persistent"),
    [
        ("br_netfilter", "", "present"),
        ("br_netfilter", "nf_call=1", "present"),
        ("vxlan", "udp_port=4789", "present"),
        ("br_netfilter", "", "absent"),
        ("loop", "max_loop=8", "present"),
        ("loop", "", "absent"),
        ("vxlan", "", "absent"),
    ],
)
def test_modprobe_persists_as_the_collection(tmp_path: Path, name: str, params: str, persistent: str) -> None:
    """The collection's Modprobe (its folders pointed at a copy) and kiln's Persistence on another copy."""
    from kiln.agent.modules import modprobe

    reference = reference_module("ansible_collections.community.general.plugins.modules.modprobe")
    trees = {}
    for side in ("ansible", "kiln"):
        for rel, text in BOOT_FILES.items():
            (tmp_path / side / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / side / rel).write_text(text)
        trees[side] = (str(tmp_path / side / "load"), str(tmp_path / side / "options"))

    arguments = {"state": "present", "name": name, "params": params, "persistent": persistent}

    class Module:
        check_mode = False
        params = arguments

        def get_bin_path(self, *_args: object) -> str:
            return "/sbin/modprobe"

    reference.MODULES_LOAD_LOCATION, reference.PARAMETERS_FILES_LOCATION = trees["ansible"]
    theirs = reference.Modprobe(Module())
    if persistent == "present" and not (theirs.module_is_loaded_persistently and theirs.params_is_set):
        theirs.load_module_permanent()
    elif persistent == "absent" and (theirs.module_is_loaded_persistently or theirs.permanent_params):
        theirs.unload_module_permanent()
    ours = modprobe.Persistence(name, params, *trees["kiln"])
    if persistent == "present" and not (ours.loaded_at_boot() and ours.params_set()):
        changed = ours.make_present(True)
    elif persistent == "absent" and (ours.loaded_at_boot() or ours.boot_params()):
        changed = ours.make_absent(True)
    else:
        changed = False

    def files(side: str) -> dict:
        root = tmp_path / side
        return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files("kiln") == files("ansible") and changed == theirs.changed


LOCALE_GEN = (
    "# This file lists locales that you wish to have built.\n"
    "# de_DE.UTF-8 UTF-8\n"
    "#  en_GB.UTF-8 UTF-8\n"
    "en_US.UTF-8 UTF-8\n"
    "# en_US ISO-8859-1\n"
    "#fr_FR.UTF-8 UTF-8\n"
)


@pytest.mark.parametrize(
    ("names", "enabled"),
    [(["de_DE.UTF-8"], True), (["en_GB.UTF-8", "fr_FR.UTF-8"], True), (["en_US.UTF-8"], False), (["en_US"], True)],
)
def test_locale_gen_edits_locale_gen_as_the_collection(tmp_path: Path, names: list, enabled: bool) -> None:
    from kiln.agent.modules import locale_gen

    reference = reference_module("ansible_collections.community.general.plugins.modules.locale_gen")
    path = tmp_path / "locale.gen"
    path.write_text(LOCALE_GEN)
    reference.ETC_LOCALE_GEN = str(path)
    reference.LocaleGen.set_locale_glibc(None, names, enabled)
    assert "".join(locale_gen.edited(LOCALE_GEN.splitlines(True), names, enabled)) == path.read_text()


def test_locale_gen_reads_locale_a_as_the_collection() -> None:
    from kiln.agent.modules import locale_gen

    assert locale_gen.missing(["en_US.UTF-8", "de_DE.UTF-8", "C.utf8"], "C\nC.utf8\nen_US.utf8\nPOSIX\n") == [
        "de_DE.UTF-8"
    ]
    supported = ["en_US.UTF-8 UTF-8\n", "# de_DE.UTF-8 UTF-8\n"]
    assert locale_gen.unavailable(["de_DE.UTF-8", "xx_XX.UTF-8", "C.UTF-8"], supported, "C.utf8\n") == ["xx_XX.UTF-8"]


def test_known_hosts_default_path_is_the_users_own() -> None:
    """~/.ssh/known_hosts by default, as Ansible's: the schema takes it, the module expands it."""
    from kiln.agent import schema as argschema
    from kiln.agent.modules import known_hosts

    args, errors = argschema.validate(known_hosts.SCHEMA, {"name": "git.example.org", "state": "absent"})
    assert not errors and args["path"] == "~/.ssh/known_hosts"


# --- package: every argument goes to the box's manager, as Ansible's package hands it to apt ------------------
def test_package_takes_apts_arguments_and_other_managers_at_validate(tmp_path: Path) -> None:
    """apt's allow_downgrade is package's; dnf's enablerepo (a RedHat task) is accepted; a typo still is not."""
    found = role_problems(
        tmp_path,
        "- name: Install docker.\n"
        "  package: {name: docker-ce, state: present, allow_downgrade: true}\n"
        "- name: Install fail2ban from EPEL.\n"
        "  package: {name: fail2ban, state: present, enablerepo: epel}\n"
        "  when: ansible_os_family == 'RedHat'\n"
        "- name: A typo no manager has.\n"
        "  ansible.builtin.package: {name: git, enablerepos: epel}\n",
    )
    assert found == [
        "main.yml:7:40: ansible.builtin.package: unknown argument 'enablerepos' (did you mean 'enablerepo'?)"
    ], found


def test_package_refuses_another_managers_argument_on_apt_in_ansibles_words() -> None:
    """On an apt box the step fails as ansible-core's apt fails it (run here with the same arguments)."""
    import json
    import subprocess
    import sys

    from kiln.agent.api import Context, ModuleError
    from kiln.agent.modules import package
    from kiln.agent.schema import validate

    given = {"name": "fail2ban", "enablerepo": "epel", "disable_gpg_check": True}
    module_args = {"ANSIBLE_MODULE_ARGS": dict(given, _ansible_module_name="ansible.legacy.apt")}
    ran = subprocess.run(
        [sys.executable, "-m", "ansible.modules.apt"],
        input=json.dumps(module_args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    theirs = json.loads(ran.stdout)
    params, errors = validate(package.SCHEMA, given)
    assert not errors and theirs["failed"]
    with pytest.raises(ModuleError) as raised:
        package.check(params, Context(facts={"pkg_mgr": "apt"}, check_mode=True))
    assert str(raised.value) == theirs["msg"]


def test_package_knows_every_managers_arguments_as_ansible_documents_them() -> None:
    """FOREIGN_ARGS is what the managers ansible_pkg_mgr can name take (names and aliases), beside apt's."""
    import ast

    import yaml
    from ansible.module_utils.facts.system.pkg_mgr import PKG_MGRS

    from kiln.agent.modules import package

    core = Path(__import__("ansible.modules", fromlist=["x"]).__file__).parent
    general = COLLECTIONS / "ansible_collections" / "community" / "general" / "plugins" / "modules"
    if not general.is_dir():
        pytest.fail(f"the collections are not unpacked in {COLLECTIONS}: run scripts/setup.sh --test")

    def documented(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        text = next(
            n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "DOCUMENTATION"
        )
        options = yaml.safe_load(text).get("options") or {}
        return {name for key, spec in options.items() for name in [key, *((spec or {}).get("aliases") or [])]}

    takes = {}
    for manager in sorted({entry["name"] for entry in PKG_MGRS}):
        path = next(p for p in (core / f"{manager}.py", general / f"{manager}.py") if p.exists())
        takes[manager] = documented(path)
    apt = takes.pop("apt")
    own = {name for key, spec in package.SCHEMA["args"].items() for name in [key, *spec.get("aliases", [])]}
    expected = {}
    for manager, names in takes.items():
        for name in names - apt - own:
            expected.setdefault(name, []).append(manager)
    assert package.FOREIGN_ARGS == {name: ", ".join(sorted(managers)) for name, managers in expected.items()}


# --- other operating systems' modules: valid, a step that fails only where its when holds -------------------
def other_os_spellings() -> list[str]:
    names = [f"community.general.{name}" for name in ansible.COMMUNITY_GENERAL_OTHER_OS]
    names += [f"{collection}.{name}" for collection, found in ansible.WINDOWS.items() for name in found]
    return names + ["pkg5", "ansible.builtin.pkg5", "win_package", "ansible.builtin.dnf5"]


def test_other_os_modules_validate_under_their_when_and_misspelt_ones_do_not(tmp_path: Path) -> None:
    """apache's setup-Solaris.yml idiom: pkg5 (and every other platform's module) is valid; pkg6 is not."""
    tasks = "".join(
        f"- name: Another platform's step.\n  {name}: {{name: x}}\n  when: ansible_os_family == 'Solaris'\n"
        for name in other_os_spellings()
    )
    misspelt = "- name: Misspelt.\n  {}: {{name: x}}\n"
    tasks += "".join(misspelt.format(name) for name in ("pkg6", "community.general.pkg6", "ansible.windows.win_pakage"))
    found = role_problems(tmp_path, tasks)
    unknown = [p.split(": ", 1)[1].split(" (")[0] for p in found]
    assert unknown == [
        "unknown module 'pkg6'",
        "unknown module 'community.general.pkg6'",
        "unknown module 'ansible.windows.win_pakage'",
    ], found


def test_other_os_modules_are_where_ansible_finds_them() -> None:
    """Each name is a module of its collection as ansible-core routes it (or community.general has it)."""
    import yaml

    runtime = Path(__import__("ansible").__file__).parent / "config" / "ansible_builtin_runtime.yml"
    routed = yaml.safe_load(runtime.read_text())["plugin_routing"]["modules"]
    general = COLLECTIONS / "ansible_collections" / "community" / "general" / "plugins" / "modules"
    if not general.is_dir():
        pytest.fail(f"the collections are not unpacked in {COLLECTIONS}: run scripts/setup.sh --test")
    for name in ansible.COMMUNITY_GENERAL_OTHER_OS:
        assert (general / f"{name}.py").is_file(), name
        assert name in ansible.OTHER_OS, name
    for collection, names in ansible.WINDOWS.items():
        for name in names:
            redirect = (routed.get(name) or {}).get("redirect")
            assert redirect in (None, f"{collection}.{name}"), (name, redirect)
            assert name in ansible.OTHER_OS and name.startswith("win_"), name


# --- systemd/service with a name alone: the unit's properties as status -----------------------------------------
def test_systemd_with_a_name_alone_is_valid_and_its_status_is_read(tmp_path: Path) -> None:
    """geerlingguy.docker's idiom: no state, registered, then .status['FragmentPath'] read; service alike."""
    found = role_problems(
        tmp_path,
        "- name: Read docker's unit.\n"
        "  ansible.builtin.systemd_service:\n"
        "    name: docker\n"
        "  register: docker_service\n"
        "- name: Read it through service.\n"
        "  service: name=docker\n"
        "- name: Use it.\n"
        "  debug: {msg: \"{{ docker_service.status['FragmentPath'] }}\"}\n"
        "- name: State without a name is still refused.\n"
        "  systemd: {state: started}\n",
    )
    assert [p.split(": ", 1)[1] for p in found] == [
        "systemd: missing required argument 'name' (state acts on a unit; daemon_reload or daemon_reexec alone "
        "needs none)"
    ], found


SHOW = (
    "Type=notify\n"
    "ExecMainPID=123\n"
    "ExecStart={ path=/usr/sbin/sshd ; argv[]=/usr/sbin/sshd -D $SSHD_OPTS ; ignore_errors=no ;"
    " start_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n"
    "ExecReload={ path=/bin/kill ; argv[]=/bin/kill -HUP $MAINPID\n"
    "  ; ignore_errors=no ; pid=0 }\n"
    "Description={ an odd description\n"
    "Names=ssh.service sshd.service\n"
    "FragmentPath=/lib/systemd/system/ssh.service\n"
    "Environment=\n"
    "not a property\n"
    "ActiveState=active\n"
)


def test_systemd_status_is_parsed_as_ansibles_systemd_reads_systemctl_show() -> None:
    from kiln.agent.modules import service

    reference = reference_module("ansible.modules.systemd_service")
    lines = SHOW.split("\n")
    assert service.parse_show(lines) == reference.parse_systemctl_show(lines)


def test_package_use_names_the_manager_as_ansibles_package_does(tmp_path: Path) -> None:
    """use: auto or the box's manager runs it; another manager's name fails the step, not the validation."""
    from kiln.agent.api import Context, ModuleError
    from kiln.agent.modules import package
    from kiln.agent.schema import validate

    found = role_problems(tmp_path, "- package: {name: git, use: apt}\n- package: {name: git, use: dnf}\n")
    assert found == [], found
    params, errors = validate(package.SCHEMA, {"name": "git", "use": "dnf"})
    assert not errors
    with pytest.raises(ModuleError, match="use dnf, but this box's package manager is apt"):
        package.check(params, Context(facts={"pkg_mgr": "apt"}))


# --- mutually exclusive arguments: a template may render to omit -------------------------------------------------
PIP_EITHER = (
    "- name: geerlingguy.pip's idiom (a virtualenv, or else a pip).\n"
    "  ansible.builtin.pip:\n"
    '    name: "{{ item.name }}"\n'
    '    virtualenv: "{{ item.virtualenv | default(omit) }}"\n'
    '    executable: "{{ item.virtualenv | default(false) | ternary(omit, pip_executable) }}"\n'
    "  loop: [{name: a, virtualenv: /opt/v}, {name: b}]\n"
    "  vars: {pip_executable: pip3}\n"
)


def test_templated_arguments_are_exclusive_only_once_rendered(tmp_path: Path) -> None:
    """Either may render to omit: validate leaves it to the box (which judges the rendered ones); literals stay
    refused, in the engine and in the JSON Schema alike."""
    import jsonschema

    from kiln.agent.schema import json_schema, validate

    literal = "- name: Both.\n  pip: {name: a, virtualenv: /opt/v, executable: pip3}\n"
    found = role_problems(tmp_path, PIP_EITHER + literal)
    assert [p.split(": ", 1)[1] for p in found] == ["pip: 'executable' and 'virtualenv' are mutually exclusive"]
    assert found[0].startswith("main.yml:9:"), found
    pip = AGENT_MODULES["pip"].SCHEMA
    rendered = {"name": "b", "virtualenv": "/opt/v", "executable": "pip3"}
    assert [e.message for e in validate(pip, rendered)[1]] == ["'executable' and 'virtualenv' are mutually exclusive"]
    editor = jsonschema.Draft202012Validator(json_schema(pip))
    assert not editor.is_valid(rendered)
    assert editor.is_valid(dict(rendered, virtualenv="{{ item.virtualenv | default(omit) }}"))


# --- dnf (yum, dnf5): dnf's arguments at validate; on a box without dnf, the step fails as Ansible's action does -----
def test_yum_dnf_and_apt_take_every_managers_arguments_and_refuse_typos(tmp_path: Path) -> None:
    """geerlingguy.postgresql's RedHat-only yum (exclude, a templated enablerepo) validates, and so do another
    manager's arguments (apt's on dnf, dnf's on apt: Ansible's module refuses them only when it runs); a name no
    manager takes and use with use_backend are refused at their place."""
    found = role_problems(
        tmp_path,
        "- name: RedHat only.\n"
        "  yum:\n"
        "    name: postgresql\n"
        "    state: installed\n"
        '    enablerepo: "{{ postgresql_enablerepo | default(omit, true) }}"\n'
        "    exclude: python-unversioned-command\n"
        "    lock_timeout: 60\n"
        "  when: ansible_os_family == 'RedHat'\n"
        "- dnf: {name: x, disable_gpg_check: true, install_weak_deps: false, allowerasing: true, use_backend: dnf4}\n"
        "- ansible.builtin.dnf5: {name: x, security: true, bugfix: true, update_cache: true}\n"
        "- yum: {name: x, exclde: a}\n"
        "- dnf: {name: x, install_recommends: true, cache_valid_time: 60, update: true}\n"
        "- dnf: {name: x, use: dnf, use_backend: dnf4}\n"
        "- apt: {name: x, enablerepo: epel, exclude: [a]}\n"
        "- apt: {name: x, enablerepoo: epel}\n",
    )
    assert found == [
        "main.yml:11:18: yum: unknown argument 'exclde' (did you mean 'exclude'?)",
        "main.yml:13:28: dnf: 'use' and 'use_backend' are mutually exclusive",
        "main.yml:15:18: apt: unknown argument 'enablerepoo' (did you mean 'enablerepo'?)",
    ], found


def ansible_module_refusal(module: str, given: dict) -> str:
    """ansible-core's module run here on ``given``: its failure's message (argument checks come first)."""
    import json
    import subprocess
    import sys

    module_args = {"ANSIBLE_MODULE_ARGS": dict(given, _ansible_module_name=f"ansible.legacy.{module}")}
    ran = subprocess.run(
        [sys.executable, "-m", f"ansible.modules.{module}"],
        input=json.dumps(module_args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    theirs = json.loads(ran.stdout)
    assert theirs["failed"], theirs
    return theirs["msg"]


def test_another_managers_argument_fails_apt_and_dnf_in_their_words() -> None:
    """apt's arguments on a dnf box fail dnf's step, dnf's on an apt box fail apt's, as ansible-core's modules word
    it (run here with the same arguments); on an apt box, dnf fails first in the dnf action's words."""
    from kiln.agent.api import Context, ModuleError
    from kiln.agent.schema import validate

    cases = (
        ("dnf", {"name": "x", "install_recommends": True, "purge": True}, "dnf"),
        ("apt", {"name": "x", "enablerepo": "epel", "exclude": ["a"]}, "apt"),
    )
    for module, given, manager in cases:
        ours = AGENT_MODULES[module]
        params, errors = validate(ours.SCHEMA, given)
        assert not errors, errors
        with pytest.raises(ModuleError) as raised:
            ours.check(params, Context(facts={"pkg_mgr": manager}, check_mode=True))
        assert str(raised.value) == ansible_module_refusal(module, given)


def test_dnfs_arguments_are_ansible_cores() -> None:
    """Every argument ansible-core's dnf and dnf5 take (and its dnf action's use/use_backend), and no other."""
    from ansible.module_utils.yumdnf import yumdnf_argument_spec

    dnf = AGENT_MODULES["dnf"]
    schema = dnf.SCHEMA
    ours = set(schema["args"]) | set(dnf.NOT_IMPLEMENTED)
    theirs = set(yumdnf_argument_spec["argument_spec"]) | {"use_backend", "use", "auto_install_module_deps"}
    assert ours == theirs
    aliases = {alias for spec in schema["args"].values() for alias in spec.get("aliases", [])}
    assert aliases == {"pkg", "expire-cache"}
    states = yumdnf_argument_spec["argument_spec"]["state"]["choices"]
    assert sorted(schema["args"]["state"]["choices"]) == sorted(states)


def test_dnf_fails_on_an_apt_box_in_the_dnf_actions_words() -> None:
    """ansible-core's dnf action reads ansible_pkg_mgr: apt is no dnf backend, whatever the arguments."""
    import inspect

    from ansible.plugins.action import dnf as dnf_action

    from kiln.agent.api import Context, ModuleError
    from kiln.agent.schema import validate

    dnf = AGENT_MODULES["dnf"]
    source = inspect.getsource(dnf_action)
    assert all(f'"{sentence}' in source for sentence in dnf.UNDETECTED.split(". ", 1)), "ansible-core's words changed"
    for args in ({"name": "zip"}, {"name": "zip", "exclude": "x", "use_backend": "yum"}):
        params, errors = validate(dnf.SCHEMA, args)
        assert not errors
        with pytest.raises(ModuleError) as raised:
            dnf.check(params, Context(facts={"pkg_mgr": "apt"}))
        assert str(raised.value) == dnf.UNDETECTED


# --- community.general.npm ----------------------------------------------------------------------------------------
def test_npm_validates_as_geerlingguy_nodejs_writes_it(tmp_path: Path) -> None:
    """Global packages from a list (version omitted unless given), a package.json's directory; absent needs a name."""
    found = role_problems(
        tmp_path,
        "- name: Ensure npm global packages are installed.\n"
        "  npm:\n"
        '    name: "{{ item.name | default(item) }}"\n'
        '    version: "{{ item.version | default(omit) }}"\n'
        "    global: true\n"
        "    state: \"{{ item.state | default('present') }}\"\n"
        "  environment: {NPM_CONFIG_PREFIX: /usr/local/lib/npm}\n"
        "  with_items: [typescript, {name: node-sass, version: 9.0.0}]\n"
        "- community.general.npm: {path: /srv/app, production: true, ci: false}\n"
        "- community.general.npm: {path: /srv/app, state: absent}\n"
        "- npm: {name: x, gloabl: true}\n",
    )
    assert found == [
        "main.yml:10:3: community.general.npm: 'name' is required when state is absent",
        "main.yml:11:18: npm: unknown argument 'gloabl' (did you mean 'global'?)",
    ], found


def test_npms_arguments_are_the_collections() -> None:
    """Each argument, its type, default and choices as community.general's npm declares them."""
    import ast

    source = COLLECTIONS / "ansible_collections" / "community" / "general" / "plugins" / "modules" / "npm.py"
    if not source.is_file():
        pytest.fail(f"the collections are not unpacked in {COLLECTIONS}: run scripts/setup.sh --test")
    tree = ast.parse(source.read_text())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    theirs: dict = {}

    def keywords(call: ast.Call) -> dict:  # dict(type='str', ...) as written
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}

    for node in ast.walk(main):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "arg_spec":
            theirs.update({kw.arg: keywords(kw.value) for kw in node.value.keywords})
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            theirs[ast.literal_eval(node.targets[0].slice)] = keywords(node.value)
    ours = AGENT_MODULES["npm"].SCHEMA["args"]
    assert set(ours) == set(theirs)
    for name, spec in theirs.items():
        kind = {"path": "path", "bool": "bool"}.get(spec.get("type", "str"), "str")
        assert ours[name]["type"] == kind, name
        assert ours[name].get("default") == spec.get("default"), name
        assert ours[name].get("choices") == spec.get("choices"), name
