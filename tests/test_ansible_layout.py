"""Roles in Ansible's layout: loaded, compiled and refused (file:line:column) through compile_role/validate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kiln.controller.config import Config
from kiln.controller.engine import Engine
from kiln.controller.stepfiles.compile import bundle_json, compile_role, list_roles, validate_roles
from tests.ansible_diff import ROLES, Comparison, Differentials, compare_role, differential
from tests.machines import SESSION, TEST_LABEL
from tests.playbooks import invoke


def write_role(root: Path, name: str, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "roles" / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def config(root: Path) -> Config:
    return Config(path=root / "kiln.yaml")


def problems(root: Path, role: str) -> list[str]:
    return [f"{Path(d.file).name}:{d.line}:{d.column}: {d.message}" for d in validate_roles(root, [role], config(root))]


WEB = {
    "tasks/main.yml": """---
- name: Include OS-specific variables.
  include_vars: "{{ item }}"
  with_first_found:
    - "{{ ansible_facts['distribution'] }}-{{ ansible_facts['distribution_major_version'] }}.yml"
    - "{{ ansible_os_family }}.yml"
- name: Define web_user.
  set_fact:
    web_user: "{{ __web_user }}"
  when: web_user is not defined
- include_tasks: "setup-{{ ansible_os_family }}.yml"
- import_tasks: pages.yml
  when: web_pages | length > 0
- name: Configure {{ web_name }}
  ansible.builtin.template:
    src: site.conf.j2
    dest: /etc/site.conf
    mode: 0644
  notify: reload site
""",
    "tasks/setup-Debian.yml": """---
- apt: update_cache=yes cache_valid_time=86400
  changed_when: false
- name: Install the server.
  ansible.builtin.apt:
    name: "{{ web_package }}"
    state: present
""",
    "tasks/setup-Archlinux.yml": "---\n- pacman:\n    name: nginx\n    state: present\n",
    "tasks/pages.yml": """---
- copy:
    content: "{{ item.value }}"
    dest: "/srv/{{ item.key }}"
  with_dict: "{{ web_pages }}"
  loop_control:
    label: "{{ item.key }}"
    index_var: page_index
  become: true
  become_user: www-data
  environment:
    LANG: C
  vars:
    owner: "{{ web_user }}"
""",
    "handlers/main.yml": """---
- name: restart site
  service: name=nginx state=restarted
  listen: reload site
- name: check config
  command: nginx -t -c /etc/nginx/nginx.conf
  changed_when: false
""",
    "defaults/main.yml": "---\nweb_package: nginx\nweb_pages: {index.html: hi}\nweb_name: '{{ web_package }}'\n",
    "vars/Debian.yml": "---\n__web_user: www-data\n",
    "vars/Archlinux.yml": "---\n__web_user: http\n",
    "templates/site.conf.j2": "user {{ web_user }};\n",
    "meta/main.yml": "---\ndependencies:\n  - role: base\ngalaxy_info:\n  author: someone\n",
}
BASE = {  # kiln's own layout, a dependency of an Ansible-layout role
    "role.yml": "description: base\n",
    "steps.yml": "- file: {path: /srv, state: directory}\n",
}


def test_an_ansible_layout_role_compiles_with_its_dependency(tmp_path):
    write_role(tmp_path, "web", WEB)
    write_role(tmp_path, "base", BASE)
    assert list_roles(tmp_path) == ["base", "web"]
    assert problems(tmp_path, "web") == []
    compiled = compile_role(tmp_path, "web", "local", config(tmp_path))
    assert compiled.chain == ["base", "web"]
    bundle = bundle_json(compiled, {"kiln": {"role": "web"}})
    steps = bundle["steps"]
    modules = [s["module"] for s in steps]
    assert modules == ["file", "include_vars", "set_fact", "block", "block", "template"]
    include_vars = steps[1]["args"]["file"]
    assert "select('in', ['Archlinux.yml', 'Debian.yml'])" in include_vars
    assert steps[2]["args"] == {"facts": {"web_user": "{{ __web_user }}"}}
    per_os = steps[3]["block"]
    assert [b["when"] for b in per_os] == [
        "('setup-' ~ (ansible_os_family) ~ '.yml') == 'setup-Archlinux.yml'",
        "('setup-' ~ (ansible_os_family) ~ '.yml') == 'setup-Debian.yml'",
    ]
    assert per_os[0]["block"][0]["module"] == "fail"  # pacman: another OS's module
    apt_update, apt = per_os[1]["block"]
    assert apt_update["args"] == {"update_cache": True, "cache_valid_time": 86400, "name": []}
    assert apt["module"] == "apt"
    pages = steps[4]
    copy = pages["block"][0]
    assert "when" not in pages and copy["when"] == "web_pages | length > 0"  # import_tasks: checked per task
    assert copy["loop"] == "{{ (web_pages) | dict2items }}"
    assert copy["loop_control"] == {"label": "{{ item.key }}", "index_var": "page_index"}
    assert copy["become_user"] == "www-data" and copy["environment"] == {"LANG": "C"}
    assert copy["vars"] == {"owner": "{{ web_user }}"}
    assert steps[5]["args"]["mode"] == "0644" and steps[5]["name"] == "Configure nginx"
    restart, check = bundle["handlers"]
    assert restart["listen"] == ["reload site"] and restart["args"] == {"name": "nginx", "state": "restarted"}
    assert check["args"] == {"cmd": "nginx -t -c /etc/nginx/nginx.conf"}
    assert json.loads(compiled.files["vars/web/Debian.yml"]) == {"__web_user": "www-data"}


def test_kiln_layout_role_may_depend_on_an_ansible_layout_role(tmp_path):
    write_role(tmp_path, "common", {"tasks/main.yml": "- debug: msg=hi\n", "defaults/main.yml": "x: 1\n"})
    write_role(tmp_path, "app", {"role.yml": "depends: [common]\n", "steps.yml": "- command: echo {{ x }}\n"})
    compiled = compile_role(tmp_path, "app", "local", config(tmp_path))
    assert compiled.chain == ["common", "app"] and compiled.variables["x"] == 1


REFUSALS = {
    "delegate_to": ("- command: echo hi\n  delegate_to: localhost\n", "main.yml:2:3: 'delegate_to' is not a kiln"),
    "local_action": ("- local_action: command echo hi\n", "main.yml:1:3: 'local_action' is not a kiln"),
    "hostvars": ("- debug:\n    msg: \"{{ hostvars['db1'].ip }}\"\n", "main.yml:2:10: another host's hostvars"),
    "missing include": ("- include_tasks: nope.yml\n", "main.yml:1:18: 'nope.yml' not found in the role's tasks/"),
    "templated include": (
        "- include_tasks: 'x-{{ ansible_os_family }}.yml'\n",
        "main.yml:1:18: no file in the role's tasks/ matches",
    ),
    "bad key=value": ("- file: path=/x bogus\n", "main.yml:1:9: 'bogus' is not key=value"),
    "unknown FQCN": ("- community.crypto.openssl_privatekey: {path: /k}\n", "main.yml:1:3: unknown module"),
    "listen off a handler": ("- command: echo\n  listen: x\n", "main.yml:2:3: 'listen' belongs to a handler"),
    "meta end_play": ("- meta: end_play\n", "main.yml:1:9: meta: 'end_play' is not supported"),
    "unknown filter no bogus loop": ("- template: {src: t.j2, dest: /t}\n", "t.j2:1:35: unknown filter 'nofilter'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_file_line_column(tmp_path, case):
    tasks, expected = REFUSALS[case]
    template = "{% for x in [1] %}{{ loop.index | nofilter }}{% endfor %}\n"
    write_role(tmp_path, "r", {"tasks/main.yml": tasks, "templates/t.j2": template})
    found = problems(tmp_path, "r")
    assert any(p.startswith(expected) for p in found), found
    assert not any("undefined variable 'loop'" in p for p in found), found


def test_templated_src_checks_every_template_of_the_role(tmp_path):
    write_role(
        tmp_path,
        "r",
        {
            "tasks/main.yml": "- template:\n    src: '{{ name }}.j2'\n    dest: /x\n",
            "defaults/main.yml": "name: a\n",
            "templates/a.j2": "{{ undefined_thing }}\n",
        },
    )
    assert problems(tmp_path, "r") == ["a.j2:1:4: undefined variable 'undefined_thing'"]


def test_dependency_from_meta_that_does_not_exist(tmp_path):
    write_role(tmp_path, "r", {"tasks/main.yml": "- debug: msg=hi\n", "meta/main.yml": "dependencies: [nope]\n"})
    assert problems(tmp_path, "r") == ["main.yml:1:16: unknown role 'nope'"]


@pytest.mark.slow
def test_bake_an_ansible_layout_role(tmp_path):
    """An untouched Ansible-layout role (per-OS include_tasks, key=value, FQCN, YAML 1.1 modes) bakes."""
    playbooks = tmp_path / "playbooks"
    write_role(
        playbooks,
        "motd",
        {
            "tasks/main.yml": "---\n- include_tasks: 'setup-{{ ansible_os_family }}.yml'\n"
            '- name: Write the motd.\n  ansible.builtin.copy:\n    content: "{{ motd_text }}\\n"\n'
            "    dest: /srv/motd/motd\n    mode: 0640\n",
            "tasks/setup-Debian.yml": "- file: path=/srv/motd state=directory mode=0755\n",
            "tasks/setup-RedHat.yml": "- dnf: name=nothing\n",
            "defaults/main.yml": "motd_text: baked by kiln\n",
        },
    )
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 3\n")
    (playbooks / "roles" / "motd" / "verify.yml").write_text(
        "- file: {path: /srv/motd/motd, mode: '0640', contains: baked by kiln}\n"
    )
    done = invoke(tmp_path, "bake", "--role", "motd", "--no-test", playbooks=playbooks, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "baked  image=" in output and "checks_passed=1" in output, output


# --- include_role / import_role --------------------------------------------------------------------------
SITE = {
    "tasks/main.yml": """---
- import_role:
    name: vhost
    tasks_from: user
  tags: [users]
- name: Configure each host.
  include_role:
    name: vhost
  loop: "{{ hosts_list }}"
  loop_control:
    loop_var: host
    index_var: position
  when: host != 'skip'
- include_role: name=vhost tasks_from=page defaults_from=page vars_from=page
  vars:
    page_name: index
- include_role:
    name: galaxy.tools
    apply:
      become: true
      become_user: nobody
      tags: [tools]
""",
    "defaults/main.yml": "hosts_list: [a, skip, c]\n",
}
VHOST = {
    "tasks/main.yml": "- template: {src: host.j2, dest: '/etc/{{ host }}.conf'}\n  notify: hosts changed\n",
    "tasks/user.yml": "- user: {name: '{{ vhost_user }}'}\n",
    "tasks/page.yml": "- copy: {content: '{{ page_title }} {{ page_size }}', dest: '/srv/{{ page_name }}'}\n",
    "defaults/main.yml": "vhost_user: web\nhost: none\n",
    "defaults/page.yml": "page_title: Hi\n",
    "vars/main.yml": "vhost_conf: /etc/vhost\n",
    "vars/page.yml": "page_size: 10\n",
    "handlers/main.yml": "- name: reload hosts\n  command: echo reload\n  listen: hosts changed\n",
    "templates/host.j2": "{{ host }} {{ position | default('-') }} {{ vhost_conf }}\n",
    "meta/main.yml": "dependencies: [base]\n",
}
TOOLS = {"tasks/main.yml": "- command: echo {{ tools_word }}\n", "defaults/main.yml": "tools_word: hi\n"}


def test_include_and_import_role_compile_the_named_roles_tasks(tmp_path):
    write_role(tmp_path, "site", SITE)
    write_role(tmp_path, "vhost", VHOST)
    write_role(tmp_path, "base", BASE)
    write_role(tmp_path, "galaxy.tools", TOOLS)  # as ansible-galaxy installs it
    assert problems(tmp_path, "site") == []
    compiled = compile_role(tmp_path, "site", "local", config(tmp_path))
    assert compiled.chain == ["base", "vhost", "galaxy.tools", "site"]
    user, hosts, page, tools = compiled.steps
    base, create_user = user["block"]  # the included role's dependency first, once
    assert (base["role"], base["module"]) == ("base", "file")
    assert (create_user["role"], create_user["module"], create_user["tags"]) == ("vhost", "user", ["users"])
    # the looped include: one block, run once per item on the box, its when checked per item
    assert (hosts["loop"], hosts["loop_control"]) == ("{{ hosts_list }}", {"loop_var": "host", "index_var": "position"})
    assert hosts["when"] == "host != 'skip'"
    (template,) = hosts["block"]
    assert "vars" not in template and "when" not in template
    assert template["args"]["src"] == "vhost/host.j2" and template["notify"] == ["hosts changed"]
    assert len({step["index"] for step in flatten(compiled.steps + compiled.handlers)}) == len(
        flatten(compiled.steps + compiled.handlers)
    ), "every step keeps an index of its own"
    assert page["block"][0]["vars"] == {"page_name": "index"}
    (echo,) = tools["block"]
    assert (echo["become_user"], echo["tags"]) == ("nobody", ["tools"]) and "tags" not in tools
    assert [h["name"] for h in compiled.handlers] == ["reload hosts"]
    variables = compiled.variables
    assert (variables["vhost_user"], variables["vhost_conf"], variables["page_title"]) == ("web", "/etc/vhost", "Hi")
    assert variables["page_size"] == 10  # vhost is imported: its variables are public
    # galaxy.tools is included (public: false, Ansible's default): its defaults are its own tasks' only
    assert "tools_word" not in variables and compiled.role_vars["galaxy.tools"]["tools_word"] == "hi"
    assert {"templates/vhost/host.j2", "vars/vhost/page.yml"} <= set(compiled.files)


def flatten(steps):
    return [s for step in steps for s in [step, *flatten(step.get("block", []))]]


ROLE_REFUSALS = {
    "unknown role": (
        "- include_role:\n    name: vhosts\n",
        "main.yml:2:11: unknown role 'vhosts' in playbooks/roles/ (did you mean 'vhost'?)",
    ),
    "unknown role, key=value": ("- import_role: name=nope\n", "main.yml:1:16: unknown role 'nope'"),
    "missing tasks_from": (
        "- include_role: {name: vhost, tasks_from: pages}\n",
        "main.yml:1:43: 'pages' not found in vhost's tasks/ (did you mean 'page.yml'?)",
    ),
    "missing vars_from": ("- import_role: {name: vhost, vars_from: nope}\n", "main.yml:1:41: 'nope' not found in"),
    "templated name": (
        "- include_role: {name: '{{ which }}'}\n",
        "main.yml:1:24: include_role needs a literal role name",
    ),
    "unknown setting": (
        "- include_role: {name: vhost, task_from: page}\n",
        "main.yml:1:31: unknown include_role setting 'task_from' (did you mean 'tasks_from'?)",
    ),
    "apply on import_role": (
        "- import_role: {name: vhost, apply: {become: true}}\n",
        "main.yml:1:30: unknown import_role setting 'apply': apply is for include_role",
    ),
    "apply with a step keyword": (
        "- include_role: {name: vhost, apply: {register: x}}\n",
        "main.yml:1:39: apply cannot carry 'register'",
    ),
    "import_role loop": (
        "- import_role: {name: vhost}\n  loop: [a, b]\n",
        "main.yml:2:3: import_role cannot loop",
    ),
    "a role including itself": ("- include_role: {name: r}\n", "main.yml:1:24: include_role of 'r' includes itself"),
    "public not a boolean": (
        "- include_role: {name: vhost, public: maybe}\n",
        "main.yml:1:39: public must be true or false",
    ),
    "apply not a mapping": ("- include_role: {name: vhost, apply: become}\n", "main.yml:1:38: apply must be a mapping"),
    "a bare role name": ("- include_role: vhost\n", "main.yml:1:17: include_role needs settings with the role's name"),
    "register on an include": (
        "- include_role: {name: vhost}\n  register: x\n",
        "main.yml:2:3: 'register' cannot be used with include_role",
    ),
}


@pytest.mark.parametrize("case", sorted(ROLE_REFUSALS))
def test_include_role_refusals_name_file_line_column(tmp_path, case):
    tasks, expected = ROLE_REFUSALS[case]
    write_role(tmp_path, "r", {"tasks/main.yml": tasks})
    write_role(tmp_path, "vhost", VHOST)
    write_role(tmp_path, "base", BASE)
    found = problems(tmp_path, "r")
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.slow
def test_an_unknown_included_role_is_refused_and_nothing_is_launched(engine, tmp_path):
    playbooks = tmp_path / "playbooks"
    write_role(playbooks, "site", {"tasks/main.yml": "---\n- name: Hosts.\n  include_role:\n    name: vhots\n"})
    write_role(playbooks, "vhost", VHOST)
    write_role(playbooks, "base", BASE)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 3\n")
    shown = "playbooks/roles/site/tasks/main.yml:4:11: error: unknown role 'vhots' in playbooks/roles/"
    checked = invoke(tmp_path, "validate", "--role", "site", playbooks=playbooks, timeout=120)
    assert checked.returncode == 2 and shown in checked.stdout, checked.stdout + checked.stderr
    baked = invoke(tmp_path, "bake", "--role", "site", playbooks=playbooks, timeout=300)
    assert baked.returncode == 2, baked.stdout + baked.stderr
    assert shown in baked.stdout and "nothing was launched" in baked.stdout, baked.stdout
    assert "==> launch" not in baked.stderr and "Traceback" not in baked.stderr, baked.stderr
    assert not engine.containers("kiln.role=site"), "a build machine was launched"


def compare_with_siblings(engine: Engine, work: Path, role: str, siblings: tuple[str, ...]) -> Comparison:
    """``role`` (tests/ansible_roles) compared with the roles it uses beside it, all unchanged."""
    for staged in (work / "ansible" / "roles", work / "kiln" / "playbooks" / "roles"):
        staged.mkdir(parents=True)
    for sibling in siblings:
        (work / "ansible" / "roles" / sibling).symlink_to(ROLES / sibling)
        shutil.copytree(ROLES / sibling, work / "kiln" / "playbooks" / "roles" / sibling)
    return compare_role(engine, ROLES / role, work, labels={TEST_LABEL: SESSION})


@differential("kiln_site", seconds=17)
def kiln_site_group(engine: Engine, work: Path) -> Comparison:
    return compare_with_siblings(engine, work, "kiln_site", ("kiln_site_vhost",))


@differential("kiln_loops", seconds=19)
def kiln_loops_group(engine: Engine, work: Path) -> Comparison:
    return compare_with_siblings(engine, work, "kiln_loops", ("kiln_loops_site",))


@differential("kiln_scope", seconds=15)
def kiln_scope_group(engine: Engine, work: Path) -> Comparison:
    siblings = ("kiln_scope_dep", "kiln_scope_private", "kiln_scope_public", "kiln_scope_imported")
    return compare_with_siblings(engine, work, "kiln_scope", siblings)


@pytest.mark.slow
@pytest.mark.differential("kiln_site")
def test_include_and_import_role_end_state_equals_ansible_playbooks(differentials: Differentials):
    """kiln_site (tests/ansible_roles) includes and imports kiln_site_vhost: import_role with tasks_from,
    include_role looped with loop_var and a per-item when, tasks_from with defaults_from and role params,
    vars_from with apply; the included role's handler runs through listen. Both roles are used unchanged."""
    result = differentials("kiln_site")
    assert result.ansible.ok, result.ansible.output[-3000:]
    assert result.equal, result.report()


@pytest.mark.slow
@pytest.mark.differential("kiln_loops")
def test_include_loops_over_what_only_the_box_knows_end_state_equals_ansible_playbooks(differentials: Differentials):
    """kiln_loops (tests/ansible_roles) loops include_tasks over a registered result (loop_var, index_var, label,
    a per-item when, a handler, registers and a loop inside) and over facts, and include_role over a set_fact
    value (with_items) into kiln_loops_site, whose handler runs. Both roles are used unchanged."""
    result = differentials("kiln_loops")
    assert result.ansible.ok, result.ansible.output[-3000:]
    assert result.equal, result.report()
    for name in ("loops_last", "loops_echo", "loops_fact", "loops_site_conf", "loops_tools"):  # ran on both sides
        assert name in result.ansible.registered and name in result.kiln.registered, name


@pytest.mark.slow
def test_a_reboot_inside_an_include_loop_resumes_at_its_item(engine):
    """The agent runs an include loop's block once per item; a reboot in one item's steps resumes with that item's
    next step (the item and its index as they were), then the later items."""
    from tests.machines import AgentBox, summary_of
    from tests.test_reboot import apply_through_reboots

    def echo(index: int, text: str) -> dict:
        return {"index": index, "module": "shell", "name": f"echo {text}", "args": {"cmd": f"echo {text} >> /srv/rl"}}

    steps = [
        {"module": "shell", "name": "words", "args": {"cmd": "printf 'a\\nb\\n'"}, "register": "words"},
        {
            "module": "block",
            "name": "each word",
            "loop": "{{ words.stdout_lines }}",
            "loop_control": {"loop_var": "word", "index_var": "at"},
            "block": [
                echo(3, "{{ word }}-{{ at }}"),
                {"index": 4, "module": "reboot", "name": "reboot", "args": {}, "when": "word == 'a'"},
                echo(5, "{{ word }}-{{ at }}-after"),
            ],
            "rescue": [],
            "always": [],
        },
        echo(6, "done"),
    ]
    box = AgentBox(engine).start()
    try:
        events, reboots = apply_through_reboots(box, steps)
        assert reboots == 1 and summary_of(events)["ok_run"], events
        assert box.sh("cat /srv/rl") == "a-0\na-0-after\nb-1\nb-1-after\ndone\n"
    finally:
        box.stop()


def test_include_tasks_loops_with_apply_and_role_params(tmp_path):
    write_role(
        tmp_path,
        "r",
        {
            "tasks/main.yml": """---
- include_tasks: user.yml
  loop: [alice, bob]
  loop_control: {loop_var: person}
  vars: {shell: /bin/sh}
  args:
    apply:
      become: true
      become_user: nobody
      tags: [users]
- debug: msg="{{ greeting }} world"
""",
            "tasks/user.yml": "- command: echo {{ person }} {{ shell }}\n",
            "defaults/main.yml": "greeting: hello\n",
        },
    )
    assert problems(tmp_path, "r") == []
    looped, debug = compile_role(tmp_path, "r", "local", config(tmp_path)).steps
    # one block, its steps compiled once: the box runs them once per item (the item is the box's, as in Ansible)
    assert (looped["loop"], looped["loop_control"]) == (["alice", "bob"], {"loop_var": "person"})
    (echo,) = looped["block"]
    assert echo["vars"] == {"shell": "/bin/sh"} and echo["args"]["cmd"] == "echo {{ person }} {{ shell }}"
    assert (echo["become_user"], tuple(echo["tags"])) == ("nobody", ("users",))
    assert debug["args"] == {"msg": "{{ greeting }} world"}  # key=value, though debug has a free form


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ("- import_tasks: user.yml\n  loop: [a]\n", "main.yml:2:3: import_tasks cannot loop"),
        (
            "- include_tasks: user.yml\n  loop: '{{ nowhere }}'\n",
            "main.yml:2:9: undefined variable 'nowhere'",
        ),
        (
            "- include_tasks: user.yml\n  loop: [a]\n  loop_control: {label: '{{ nobody }}'}\n",
            "main.yml:3:25: undefined variable 'nobody'",
        ),
        ("- import_tasks: {file: user.yml, apply: {become: true}}\n", "main.yml:1:34: apply is for include_tasks"),
    ],
)
def test_include_tasks_loop_refusals(tmp_path, tasks, expected):
    write_role(tmp_path, "r", {"tasks/main.yml": tasks, "tasks/user.yml": "- command: echo {{ item }}\n"})
    found = problems(tmp_path, "r")
    assert any(p.startswith(expected) for p in found), found


def test_selinux_modules_fail_only_where_their_task_runs(tmp_path):
    """dev-sec's ssh_hardening manages SELinux ports in a file included when SELinux is enabled: valid here."""
    tasks = "- community.general.seport: {ports: 22, proto: tcp, setype: ssh_port_t}\n  when: ansible_selinux\n"
    write_role(tmp_path, "r", {"tasks/main.yml": tasks})
    assert problems(tmp_path, "r") == []
    (step,) = compile_role(tmp_path, "r", "local", config(tmp_path)).steps
    assert step["module"] == "fail" and "SELinux's port labelling" in step["args"]["msg"], step


def test_an_unknown_module_is_the_one_problem_not_the_uses_of_what_it_registers(tmp_path):
    tasks = "- ansible.mysql.mysql_info: {filter: settings}\n  register: mysql_settings\n"
    tasks += "- debug: msg={{ mysql_settings.settings.datadir }}\n"
    write_role(tmp_path, "r", {"tasks/main.yml": tasks})
    assert problems(tmp_path, "r") == [
        "main.yml:1:3: unknown module 'ansible.mysql.mysql_info' (see docs/step-files.md for the modules)"
    ]


def test_key_value_arguments_keep_jinja_whole(tmp_path):
    """Ansible splits ``msg={{ x | default('a b') }}`` as one argument; so does kiln."""
    tasks = "- debug: msg={{ greeting | default('hello world') }}\n- file: path={{ base }}/x state=directory\n"
    write_role(tmp_path, "r", {"tasks/main.yml": tasks, "defaults/main.yml": "base: /srv\n"})
    assert problems(tmp_path, "r") == []
    debug, directory = compile_role(tmp_path, "r", "local", config(tmp_path)).steps
    assert debug["args"] == {"msg": "{{ greeting | default('hello world') }}"}
    assert directory["args"] == {"path": "{{ base }}/x", "state": "directory"}


@pytest.mark.slow
def test_a_bake_applies_the_role_with_roots_umask(tmp_path):
    """Files and directories a role makes without a mode get what root's umask (022) gives, as with Ansible:
    the agent does not inherit the private umask kiln's bootstrap keeps for its own files."""
    playbooks = tmp_path / "playbooks"
    write_role(
        playbooks,
        "umask",
        {
            "tasks/main.yml": "---\n- file: path=/srv/umask/conf.d state=directory mode=0755\n"
            "- shell: echo hi > /srv/umask/made-by-shell\n  args:\n    creates: /srv/umask/made-by-shell\n",
            "verify.yml": "- file: {path: /srv/umask, mode: '0755'}\n- file: {path: /srv/umask/made-by-shell, mode: '0644'}\n",
        },
    )
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 3\n")
    done = invoke(tmp_path, "bake", "--role", "umask", "--no-test", playbooks=playbooks, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "checks_passed=2" in output, output[-3000:]


def test_set_fact_with_templated_names_is_rendered_whole_on_the_box(tmp_path):
    tasks = '- set_fact:\n    "os_{{ item.key }}": "{{ item.value }}"\n    plain: [1, "{{ x }}"]\n  with_dict: {a: 1}\n'
    write_role(tmp_path, "r", {"tasks/main.yml": tasks, "defaults/main.yml": "x: 2\n"})
    assert problems(tmp_path, "r") == []
    (step,) = compile_role(tmp_path, "r", "local", config(tmp_path)).steps
    assert step["args"]["facts"] == "{{ {('os_' ~ (item.key)): (item.value), 'plain': [1, (x)]} }}"


def test_a_dependency_with_when_tags_vars_and_role_params(tmp_path):
    meta = "dependencies:\n  - role: repo\n    when: ansible_os_family == 'RedHat'\n    repo_name: epel\n"
    meta += "    vars: {repo_gpg: true}\n    tags: [repos]\n"
    write_role(tmp_path, "app", {"tasks/main.yml": "- debug: msg=app\n", "meta/main.yml": meta})
    repo_tasks = "- debug: msg={{ repo_name }}\n- block:\n    - command: echo {{ repo_gpg }}\n"
    write_role(tmp_path, "repo", {"tasks/main.yml": repo_tasks})
    assert problems(tmp_path, "app") == []
    repo, _ = compile_role(tmp_path, "app", "local", config(tmp_path)).steps
    assert (repo["name"], "when" in repo) == ("role repo", False)
    debug, block = repo["block"]
    condition = "ansible_os_family == 'RedHat'"
    assert (debug["when"], debug["tags"]) == (condition, ["repos"])
    assert debug["vars"] == {"repo_name": "epel", "repo_gpg": True}
    assert block["when"] == condition and block["block"][0]["when"] == condition  # checked task by task
    assert block["block"][0]["vars"]["repo_name"] == "epel"


def test_a_dependency_refuses_task_keywords_it_cannot_carry(tmp_path):
    meta = "dependencies:\n  - role: repo\n    become: true\n"
    write_role(tmp_path, "app", {"tasks/main.yml": "- debug: msg=app\n", "meta/main.yml": meta})
    write_role(tmp_path, "repo", {"tasks/main.yml": "- debug: msg=repo\n"})
    assert problems(tmp_path, "app") == [
        "main.yml:3:5: dependency setting 'become' is not supported: a dependency takes when, vars, tags and "
        "role parameters (variables for its tasks)"
    ]


def test_step_names_render_with_their_own_vars_never_with_a_value_the_box_sets(tmp_path):
    tasks = """---
- name: Configure each host.
  include_role: {name: vhost}
  loop: [a, b]
  loop_control: {loop_var: host}
- set_fact: {vhost_user: changed}
- name: Greet {{ vhost_user }}
  debug: msg=hi
"""
    write_role(tmp_path, "site", {"tasks/main.yml": tasks})
    write_role(tmp_path, "vhost", {**VHOST, "tasks/main.yml": "- name: Configure {{ host }}\n  debug: msg=hi\n"})
    write_role(tmp_path, "base", BASE)
    hosts, _, greet = compile_role(tmp_path, "site", "local", config(tmp_path)).steps
    assert hosts["block"][-1]["name"] == "Configure {{ host }}"  # the item is the box's: the name is rendered there
    assert greet["name"] == "Greet {{ vhost_user }}"  # vhost_user's default 'web' is not what the box has then


def test_an_included_roles_dependency_keeps_its_settings(tmp_path):
    meta = "dependencies:\n  - role: repo\n    when: ansible_os_family == 'Debian'\n    repo_name: main\n"
    write_role(tmp_path, "site", {"tasks/main.yml": "- include_role: {name: app}\n"})
    write_role(tmp_path, "app", {"tasks/main.yml": "- debug: msg=app\n", "meta/main.yml": meta})
    write_role(tmp_path, "repo", {"tasks/main.yml": "- debug: msg={{ repo_name }}\n"})
    assert problems(tmp_path, "site") == []
    (include,) = compile_role(tmp_path, "site", "local", config(tmp_path)).steps
    repo, app = include["block"]
    (debug,) = repo["block"]
    assert (repo["name"], debug["when"], debug["vars"]) == (
        "role repo",
        "ansible_os_family == 'Debian'",
        {"repo_name": "main"},
    )


@pytest.mark.slow
@pytest.mark.differential("kiln_scope")
def test_role_variable_scope_equals_ansible_playbooks(differentials: Differentials):
    """kiln_scope (tests/ansible_roles) reads names its dependency and the roles it includes privately,
    includes publicly and imports also define: each role's tasks see its own defaults over the others', and a
    private include_role's defaults and vars stay its own; each role writes what it sees."""
    result = differentials("kiln_scope")
    assert result.ansible.ok, result.ansible.output[-3000:]
    assert result.equal, result.report()


def test_a_template_files_jinja2_header_sets_how_validate_reads_it(tmp_path):
    """A template whose header changes the delimiters (its text holds Go's {{ }}) is read as ansible-core reads it:
    its [[ ]] names are checked, its {{ }} are text; a line is still named by its place in the file."""
    root = write_role(
        tmp_path,
        "gotmpl",
        {
            "tasks/main.yml": "- template: {src: exporter.yml.j2, dest: /etc/exporter.yml}\n",
            "defaults/main.yml": "listen: ':9100'\n",
            "templates/exporter.yml.j2": "#jinja2: variable_start_string: '[[', variable_end_string: ']]'\n"
            "listen: [[ listen ]]\nformat: '{{ .Name }} {{ .Value }}'\nother: [[ not_defined_here ]]\n",
        },
    )
    assert problems(root, "gotmpl") == ["exporter.yml.j2:4:11: undefined variable 'not_defined_here'"]
