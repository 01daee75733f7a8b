"""Ansible's variable semantics on the box (issue 9), proved against ansible-core where they mean what they
mean in Ansible: a role of ours, written here, applied unchanged by ansible-playbook and by kiln to two
containers from the same base (tests/ansible_diff.py); the end states and the registered and debugged
values must be equal. There are no expected values for those: ansible-playbook's result is the expectation.

What Ansible has no counterpart for (kiln's error messages, verify.yml) is checked on kiln alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.controller.engine import Engine
from tests.ansible_diff import Comparison, Differentials, compare_role, differential
from tests.machines import SESSION, TEST_LABEL, AgentBox, steps_of, summary_of

# --- the differential role: one ansible-playbook run and one kiln run for every case below -------------
#: case -> (defaults/main.yml lines, tasks/main.yml steps); the role is all of them, in this order
CASES: dict[str, tuple[str, str]] = {
    "lazy": (
        """
# bug 1: a variable reads an attribute of a later variable that is itself still a template, and the
# chain ends in a fact (only the box can render it)
lazy_port_next: "{{ lazy_server.port + 1 }}"
lazy_server:
  port: "{{ lazy_port }}"
  name: "{{ lazy_family }}.example"
lazy_port: "{{ 80 if ansible_os_family == 'Debian' else 81 }}"
lazy_family: "{{ ansible_facts.os_family | lower }}"
lazy_url: "http://{{ lazy_server.name }}:{{ lazy_server.port }}/"
""",
        """
- name: lazy variables, in dependency order
  copy:
    dest: /etc/kiln-vars/lazy.txt
    content: "{{ lazy_port_next }} {{ lazy_url }} {{ lazy_server.port }}\\n"
- {name: show lazy_port_next, debug: {var: lazy_port_next}}
""",
    ),
    "registered": (
        """
# bug 3: variables built from registered results (a loop's too) and from set_fact values
number_list: "{{ numbers.results | map(attribute='stdout') | map('int') | list }}"
number_codes: "{{ numbers.results | map(attribute='rc') | list }}"
number_sum: "{{ number_list | sum }}"
first_word: "{{ words.stdout_lines[0] }}"
greeting_name: world
greeting: "hello {{ greeting_name }}"
doubled_sum: "{{ doubled | int }}"
""",
        """
- name: numbers
  command: "echo {{ item }}"
  loop: [3, 5, 7]
  register: numbers
  changed_when: false
- name: words
  shell: printf 'alpha\\nbeta\\n'
  register: words
  changed_when: false
- name: the greeting is for kiln from now on
  set_fact:
    greeting_name: kiln
    doubled: "{{ number_sum | int * 2 }}"
- name: derived values
  copy:
    dest: /etc/kiln-vars/derived.txt
    content: "{{ number_sum }} {{ number_list | join(',') }} {{ number_codes }} {{ first_word }} {{ greeting }}\\n"
- name: derived values in a template
  template: {src: report.j2, dest: /etc/kiln-vars/report.txt, mode: "0644"}
- {name: show number_list, debug: {var: number_list}}
- {name: show greeting, debug: {var: greeting}}
- {name: show doubled_sum, debug: {var: doubled_sum}}
""",
    ),
    "loop_set_fact": (
        """
counter: 0
""",
        """
- name: set_fact in a loop
  set_fact:
    collected: "{{ (collected | default([])) + [item] }}"
    counter: "{{ counter | int + 1 }}"
  loop: [a, b, c]
- name: what the loop collected
  copy:
    dest: /etc/kiln-vars/collected.txt
    content: "{{ collected | join(',') }} {{ counter }}\\n"
- {name: show collected, debug: {var: collected}}
- {name: show counter, debug: {var: counter}}
""",
    ),
    "omit": (
        """
wanted_mode: "0640"
""",
        """
- name: an argument that is omitted
  copy:
    dest: /etc/kiln-vars/omitted.txt
    content: "omitted\\n"
    mode: "{{ no_such_mode | default(omit) }}"
    owner: "{{ omit }}"
- name: an argument that is not omitted
  copy:
    dest: /etc/kiln-vars/kept.txt
    content: "kept\\n"
    mode: "{{ wanted_mode | default(omit) }}"
""",
    ),
    "listen": (
        "",
        """
- name: a config that tells its listeners
  copy: {dest: /etc/kiln-vars/a.conf, content: "a\\n"}
  notify: config changed
- name: another that tells a topic and a handler by name
  copy: {dest: /etc/kiln-vars/b.conf, content: "b\\n"}
  notify: [other topic, third handler, config changed]
""",
    ),
    "block_when": (
        """
# a block's when is inherited by each of its tasks (block, rescue and always) and checked by each as it runs
block_gate: true
rescue_gate: true
""",
        """
- name: a block whose own task closes its condition
  when: block_gate | bool
  block:
    - name: before the gate closes
      copy: {dest: /etc/kiln-vars/block-first.txt, content: "first\\n"}
    - name: the gate closes
      set_fact: {block_gate: false}
    - name: after the gate closed
      copy: {dest: /etc/kiln-vars/block-later.txt, content: "later\\n"}
      register: block_later
  always:
    - name: the always part checks the condition too
      copy: {dest: /etc/kiln-vars/block-always.txt, content: "always\\n"}
      register: block_always
- name: a block gated on what its own task registers
  when: gate_probe is not defined or gate_probe.stdout == 'open'
  block:
    - name: the probe
      command: echo closed
      register: gate_probe
      changed_when: false
    - name: after the probe
      copy: {dest: /etc/kiln-vars/probe-after.txt, content: "after\\n"}
      register: probe_after
- name: a block whose rescue closes its condition
  when: rescue_gate | bool
  block:
    - name: a task that fails
      command: "false"
      register: rescued_failure
  rescue:
    - name: the rescue closes the gate
      set_fact: {rescue_gate: false}
    - name: after the rescue closed the gate
      copy: {dest: /etc/kiln-vars/rescue-later.txt, content: "rescue\\n"}
      register: rescue_later
""",
    ),
    "output": (
        """
# values render as ansible-core 2.19 renders them: trim_blocks, None left out of text, one piece keeps its type
out_none: null
out_items: [a, b]
out_port: 8080
out_whole_none: "{{ out_none }}"
out_in_text: "v={{ out_none }};"
out_one_piece: "{% if out_port %}{{ out_port }}{% endif %}"
""",
        """
- name: a loop and a condition inside copy's content
  copy:
    dest: /etc/kiln-vars/output.txt
    content: |
      {% for i in out_items %}
      item={{ i }}
      {% endfor %}
      {% if out_port %}
      port={{ out_port }}
      {% endif %}
      none=[{{ out_none }}] text={{ out_in_text }}
- {name: show out_whole_none, debug: {var: out_whole_none}}
- {name: show out_in_text, debug: {var: out_in_text}}
- {name: show out_one_piece, debug: {var: out_one_piece}}
""",
    ),
    "registered_values": (
        "",
        """
- name: a command that exits 2
  shell: "echo out; echo err >&2; exit 2"
  register: exits_two
  failed_when: exits_two.rc not in [0, 2]
  changed_when: false
""",
    ),
}

FIRST_TASK = """
- name: the directory for what the cases write
  file: {path: /etc/kiln-vars, state: directory, mode: "0755"}
"""

HANDLERS = """
- name: first handler
  listen: config changed
  shell: echo first >> /etc/kiln-vars/handlers.log

- name: second handler
  listen: [other topic, config changed]
  shell: echo second >> /etc/kiln-vars/handlers.log

- name: third handler
  shell: echo third >> /etc/kiln-vars/handlers.log

- name: nobody's handler
  listen: nobody
  shell: echo nobody >> /etc/kiln-vars/handlers.log
"""

REPORT = """sum={{ number_sum }}
{% for n in number_list %}
n={{ n }}
{% endfor %}
first={{ first_word }}
greeting={{ greeting }}
doubled={{ doubled_sum }}
none=[{{ out_none | default(none) }}]
"""


def role_files(cases: list[str]) -> dict[str, str]:
    """The role made of ``cases`` (all of them: the differential group; one: to show a case alone)."""
    return {
        "defaults/main.yml": "".join(CASES[case][0] for case in cases) or "{}\n",
        "tasks/main.yml": FIRST_TASK + "".join(CASES[case][1] for case in cases),
        "handlers/main.yml": HANDLERS,
        "templates/report.j2": REPORT,
    }


ROLE = role_files(list(CASES))
KINDS = ("files", "packages", "services", "users", "groups", "registered")


def write_role(root: Path, name: str, files: dict[str, str]) -> Path:
    role = root / name
    for rel, text in files.items():
        (role / rel).parent.mkdir(parents=True, exist_ok=True)
        (role / rel).write_text(text.lstrip("\n"))
    return role


@differential("kiln_vars", seconds=21)
def kiln_vars_group(engine: Engine, work: Path) -> Comparison:
    """The role written here, one run each way (on two containers of this session)."""
    role = write_role(work / "role", "kiln_vars", ROLE)
    return compare_role(engine, role, work, labels={TEST_LABEL: SESSION})


@pytest.fixture
def comparison(differentials: Differentials) -> Comparison:
    result = differentials("kiln_vars")
    assert result.ansible.ok, f"ansible-playbook itself failed:\n{result.ansible.output[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.differential("kiln_vars")
def test_kiln_applies_the_variables_role(comparison: Comparison) -> None:
    assert comparison.kiln.ok, comparison.report(kinds=())


@pytest.mark.slow
@pytest.mark.differential("kiln_vars")
@pytest.mark.parametrize("kind", KINDS)
def test_variables_end_state_equals_ansible_playbooks(comparison: Comparison, kind: str) -> None:
    assert comparison.kiln.ok and not comparison.state[kind], comparison.report(kinds=(kind,))


@pytest.mark.slow
@pytest.mark.differential("kiln_vars")
def test_the_comparison_saw_every_case(comparison: Comparison) -> None:
    """The cases above ran on both sides (a case that ran on neither would compare equal)."""
    for name in (
        "numbers",
        "words",
        "exits_two",
        "block_later",
        "block_always",
        "probe_after",
        "rescue_later",
        "rescued_failure",
    ):
        assert name in comparison.ansible.registered and name in comparison.kiln.registered, name
    for var in ("lazy_port_next", "number_list", "collected", "counter", "greeting", "doubled_sum", "out_in_text"):
        assert var in comparison.ansible.debug and var in comparison.kiln.debug, var


# --- kiln alone: what Ansible has no counterpart for ---------------------------------------------------
def kiln_run(box: AgentBox, work: Path, files: dict[str, str], verify: bool = False) -> tuple[list[dict], str]:
    """Compile the role in ``files`` as ``invoke bake`` does and run the real agent on ``box``: its events
    and its stderr (``apply``, then ``verify.yml``'s checks with ``verify``)."""
    from kiln.controller.config import load_config
    from kiln.controller.engine import run_to_completion
    from kiln.controller.stepfiles.compile import bundle_json, compile_role

    playbooks = work / "playbooks"
    write_role(playbooks / "roles", "vars_role", files)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 3\n")
    compiled = compile_role(playbooks, "vars_role", "local", load_config(playbooks / "kiln.yaml"))
    bundle = bundle_json(compiled, {"kiln": {"role": "vars_role", "version": "t", "build_id": "t"}})
    content: dict[str, tuple[bytes | None, int]] = {
        "/var/lib/kiln/v/bundle.json": (json.dumps(bundle).encode(), 0o600),
        "/var/lib/kiln/v/checks.json": (json.dumps(compiled.checks).encode(), 0o600),
    }
    for rel, data in compiled.files.items():
        content[f"/var/lib/kiln/v/{rel}"] = (data, 0o644)
    box.sh("rm -rf /var/lib/kiln/v")
    box.put(content)
    argv = [box.engine.command, *box.engine._global_args(), "exec", box.name, "python3", "/var/lib/kiln/agent.pyz"]
    argv += ["apply", "/var/lib/kiln/v"] + (["--verify", "/var/lib/kiln/v/checks.json"] if verify else [])
    _, out, err = run_to_completion(argv, None, 300)
    lines = out.decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")], err.decode(errors="replace")


@pytest.mark.slow
def test_variables_that_need_each_other_are_an_error_naming_them(box: AgentBox, tmp_path: Path) -> None:
    files = {
        "defaults/main.yml": """
cycle_a: "{{ cycle_b.port }}"
cycle_b: {port: "{{ cycle_c }}"}
cycle_c: "{{ cycle_a if ansible_os_family == 'Debian' else 1 }}"
""",
        "tasks/main.yml": """
- name: uses the cycle
  copy: {dest: /tmp/cycle.txt, content: "{{ cycle_a }}"}
""",
    }
    events, stderr = kiln_run(box, tmp_path, files)
    (step,) = steps_of(events)
    assert step["status"] == "failed", step
    assert "'cycle_a'" in step["msg"] and "'cycle_b'" in step["msg"] and "'cycle_c'" in step["msg"], step
    assert "cycle" in step["msg"], step
    assert summary_of(events)["ok_run"] is False
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_an_undefined_name_read_through_variables_names_the_variable(box: AgentBox, tmp_path: Path) -> None:
    files = {
        "defaults/main.yml": """
listen_port: "{{ server.port }}"
server: {port: "{{ ansible_facts.no_such_fact }}"}
""",
        "tasks/main.yml": """
- name: uses it
  copy: {dest: /tmp/undefined.txt, content: "{{ listen_port }}"}
""",
    }
    events, stderr = kiln_run(box, tmp_path, files)
    (step,) = steps_of(events)
    assert step["status"] == "failed", step
    assert "variable 'listen_port'" in step["msg"] and "variable 'server'" in step["msg"], step
    assert "defaults/main.yml:1)" in step["msg"] and "defaults/main.yml:2)" in step["msg"], step  # where each is
    assert "no_such_fact" in step["msg"], step
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_verify_reads_facts_based_nested_and_registered_variables(box: AgentBox, tmp_path: Path) -> None:
    files = {
        "defaults/main.yml": """
app:
  dir: "/opt/{{ app_family }}"
  conf: "{{ app_conf_name }}"
app_family: "{{ ansible_os_family | lower }}"
app_conf_name: "{{ app_name.stdout }}.conf"
app_path: "{{ app.dir }}/{{ app.conf }}"
""",
        "tasks/main.yml": """
- name: the app's name
  command: echo kilnapp
  register: app_name
  changed_when: false
- name: the app's file size
  set_fact:
    app_size: "{{ app_name.stdout | length }}"
- name: the app's directory
  file: {path: "{{ app.dir }}", state: directory}
- name: the app's config
  copy: {dest: "{{ app_path }}", content: "size={{ app_size }} family={{ ansible_os_family }}\\n"}
""",
        "verify.yml": """
- file: "{{ app_path }}"
  contains: ["size={{ app_size }} family={{ ansible_os_family }}"]
- file: "/opt/{{ ansible_facts.os_family | lower }}/{{ app_name.stdout }}.conf"
""",
    }
    events, stderr = kiln_run(box, tmp_path, files, verify=True)
    assert summary_of(events)["ok_run"], steps_of(events)
    checks = [e for e in events if e["event"] == "check"]
    assert len(checks) == 2 and all(c["status"] == "passed" for c in checks), checks
    assert box.sh("cat /opt/debian/kilnapp.conf") == "size=7 family=Debian\n"
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_a_roles_checks_see_the_variables_its_steps_saw(box: AgentBox, tmp_path: Path) -> None:
    """A dependency's own default wins over the baked role's for its steps, and so for its verify.yml checks (here
    one rendered on the box, as it reads what a step registered)."""
    write_role(
        tmp_path / "playbooks" / "roles",
        "verify_dep",
        {
            "defaults/main.yml": "site_port: 8080\n",
            "tasks/main.yml": """
- name: the dependency's marker
  command: echo dep
  register: dep_marker
  changed_when: false
- name: the dependency's file
  copy: {dest: "/tmp/kiln-verify-{{ site_port }}-{{ dep_marker.stdout }}", content: "x\\n"}
""",
            "verify.yml": '- file: "/tmp/kiln-verify-{{ site_port }}-{{ dep_marker.stdout }}"\n',
        },
    )
    files = {
        "defaults/main.yml": "site_port: 80\n",
        "meta/main.yml": "dependencies: [verify_dep]\n",
        "tasks/main.yml": "- name: the role's own\n  debug: {msg: '{{ site_port }}'}\n",
    }
    events, stderr = kiln_run(box, tmp_path, files, verify=True)
    assert summary_of(events)["ok_run"], steps_of(events)
    checks = [e for e in events if e["event"] == "check"]
    assert [c["status"] for c in checks] == ["passed"], checks
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_an_include_loops_items_stay_out_of_what_the_box_reports_under_no_log(box: AgentBox, tmp_path: Path) -> None:
    files = {
        "tasks/main.yml": """
- name: the tokens
  set_fact: {tokens: [s3cr3t-one, s3cr3t-two]}
- name: each token
  include_tasks: token.yml
  loop: "{{ tokens }}"
  when: item != 's3cr3t-two'
  no_log: true
""",
        "tasks/token.yml": '- name: keep a token\n  copy: {dest: /tmp/kiln-token, content: "{{ item }}"}\n  no_log: true\n',
    }
    events, stderr = kiln_run(box, tmp_path, files)
    assert summary_of(events)["ok_run"] and summary_of(events)["skipped"] == 1, steps_of(events)
    shown = json.dumps([e for e in events if e["event"] != "facts"])
    assert "s3cr3t" not in shown, shown
    assert box.sh("cat /tmp/kiln-token") == "s3cr3t-one"


#: a role whose task names read a variable a set_fact changes (directly, and through another variable), and the
#: item of an include loop over a set_fact value
NAMES_ROLE = {
    "defaults/main.yml": 'greeting_name: world\ngreeting: "hello {{ greeting_name }}"\n',
    "tasks/main.yml": """
- name: Before {{ greeting }}
  debug: msg=before
- name: The greeting is for kiln from now on
  set_fact: {greeting_name: kiln}
- name: Greet {{ greeting }}
  debug: msg=after
- name: Greet {{ greeting_name }} by name
  debug: msg=after
- name: The people to greet
  set_fact: {people: [ann, bob]}
- name: Greet each person
  include_tasks: person.yml
  loop: "{{ people }}"
  loop_control: {loop_var: person, index_var: place}
""",
    "tasks/person.yml": """
- name: Greet {{ person }} ({{ place }}) from {{ greeting_name }}
  debug: msg=hi
""",
}


INCLUDES = ("include_tasks", "include_role")


def ansible_task_names(work: Path, files: dict[str, str]) -> list[str]:
    """The names ansible-playbook gives the role's tasks as they run. Its tasks only set and show variables, so
    ansible-playbook runs them on this machine (connection local), changing nothing here."""
    import os
    import subprocess
    import sys

    from tests.ansible_diff import CALLBACK

    write_role(work / "roles", "names_role", files)
    (work / "callbacks").mkdir()
    (work / "callbacks" / "kiln_record.py").write_text(CALLBACK)
    (work / "ansible.cfg").write_text(
        f"[defaults]\ncallbacks_enabled = kiln_record\ncallback_plugins = {work / 'callbacks'}\n"
        f"roles_path = {work / 'roles'}\n"
    )
    (work / "site.yml").write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "roles": ["names_role"]}]))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
        "ANSIBLE_HOME": str(work / "home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "KILN_RECORD_FILE": str(work / "record.json"),
    }
    playbook = str(Path(sys.executable).with_name("ansible-playbook"))
    done = subprocess.run(
        [playbook, "-i", "localhost,", "-c", "local", str(work / "site.yml")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = json.loads((work / "record.json").read_text())
    # an include is no step of kiln's (its steps are): its own result is left out
    return [r["name"].split(" : ", 1)[-1] for r in records if r["action"].split(".")[-1] not in INCLUDES]


@pytest.mark.slow
def test_step_names_render_when_they_run_as_ansible_playbook_names_tasks(box: AgentBox, tmp_path: Path) -> None:
    expected = ansible_task_names(tmp_path / "ansible", NAMES_ROLE)
    events, stderr = kiln_run(box, tmp_path / "kiln", NAMES_ROLE)
    assert [step["name"] for step in steps_of(events)] == expected, expected
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_a_checks_arguments_render_with_the_values_the_apply_left(box: AgentBox, tmp_path: Path) -> None:
    """A verify.yml check reading a variable a set_fact changes (through another variable) sees the new value."""
    files = {
        "defaults/main.yml": 'marker_name: before\nmarker_path: "/tmp/kiln-marker-{{ marker_name }}"\n',
        "tasks/main.yml": """
- name: the marker's name is known only now
  set_fact: {marker_name: after}
- name: the marker
  copy: {dest: "{{ marker_path }}", content: "{{ marker_name }}\\n"}
""",
        "verify.yml": """
- name: marker {{ marker_name }}
  file: "{{ marker_path }}"
  contains: ["{{ marker_name }}"]
""",
    }
    events, stderr = kiln_run(box, tmp_path, files, verify=True)
    assert summary_of(events)["ok_run"], steps_of(events)
    checks = [e for e in events if e["event"] == "check"]
    assert [(c["name"], c["status"]) for c in checks] == [("marker after", "passed")], checks
    assert "Traceback" not in stderr, stderr


# --- the same variables through ansible-core's own templar (no machine: the templating alone) ----------
LAZY_VARIABLES = {
    "a": "{{ b.port + 1 }}",
    "b": {"port": "{{ c }}", "hosts": ["{{ d }}", "x"]},
    "c": 80,
    "d": "{{ 'h' ~ c }}",
    "undefined_inside": "{{ nope }}",
    "uses_default": "{{ undefined_inside | default('fallback') }}",
    "text": "port {{ a }} on {{ b.hosts | join(',') }}",
}
LAZY_EXPRESSIONS = [
    "{{ a }}",
    "{{ b }}",
    "{{ text }}",
    "{{ undefined_inside is defined }}",
    "{{ uses_default }}",
    "{{ b.hosts[0] }}-{{ d }}",
]


@pytest.mark.parametrize("expression", LAZY_EXPRESSIONS)
def test_lazy_variables_render_as_ansibles_templar_does(expression: str) -> None:
    ansible_template = pytest.importorskip("ansible.template")
    from ansible.parsing.dataloader import DataLoader

    from kiln.agent.templating import Scope, render

    def trusted(value):
        if isinstance(value, dict):
            return {k: trusted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [trusted(v) for v in value]
        return ansible_template.trust_as_template(value) if isinstance(value, str) else value

    templar = ansible_template.Templar(loader=DataLoader(), variables=trusted(LAZY_VARIABLES))
    expected = templar.template(ansible_template.trust_as_template(expression))
    assert render(expression, Scope([(LAZY_VARIABLES, True)])) == expected


@pytest.mark.parametrize(
    ("variables", "expression"),
    [({"x": "{{ y }}", "y": "{{ x }}"}, "{{ x }}"), ({"u": "{{ nope }}"}, "{{ u }}")],
    ids=["cycle", "undefined"],
)
def test_what_ansibles_templar_refuses_kiln_refuses(variables: dict, expression: str) -> None:
    ansible_template = pytest.importorskip("ansible.template")
    from ansible.errors import AnsibleError
    from ansible.parsing.dataloader import DataLoader

    from kiln.agent.templating import Scope, TemplateError, render

    trusted = {k: ansible_template.trust_as_template(v) for k, v in variables.items()}
    with pytest.raises(AnsibleError):
        ansible_template.Templar(loader=DataLoader(), variables=trusted).template(
            ansible_template.trust_as_template(expression)
        )
    with pytest.raises(TemplateError):
        render(expression, Scope([(variables, True)]))


@pytest.mark.slow
def test_a_python_error_inside_a_variables_template_fails_the_step_naming_it(box: AgentBox, tmp_path: Path) -> None:
    files = {
        "defaults/main.yml": """
next_port: "{{ base_port + 1 }}"
base_port: "{{ ansible_os_family }}"
""",
        "tasks/main.yml": """
- name: uses it
  copy: {dest: /tmp/python-error.txt, content: "{{ next_port }}"}
""",
    }
    events, stderr = kiln_run(box, tmp_path, files)
    (step,) = steps_of(events)
    assert step["status"] == "failed", step
    assert "variable 'next_port' (" in step["msg"] and "TypeError" in step["msg"], step
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_a_bakes_image_checks_read_what_the_apply_registered(engine, tmp_path: Path) -> None:
    """The test stage's fresh machine never ran the steps: it gets what the apply set from the build machine."""
    from tests.playbooks import invoke, left_behind, make_playbooks

    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": """
- name: the app's name
  command: echo kilnapp
  register: app_name
  changed_when: false
- name: the app's user
  set_fact: {app_user: "{{ app_name.stdout }}"}
- name: the app's config
  copy: {dest: "/etc/{{ app_user }}.conf", content: "user={{ app_user }}\\n"}
""",
            "verify.yml": """
- file: "/etc/{{ app_user }}.conf"
  contains: ["user={{ app_name.stdout }}"]
""",
        },
        role="bakedvars",  # its own image repository: other tests' bakes of "tiny" expect theirs empty
    )
    proc = invoke(tmp_path, "bake", "--role", "bakedvars", playbooks=playbooks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not left_behind(engine, proc.stderr)
