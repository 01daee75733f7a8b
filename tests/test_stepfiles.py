"""Step files: loading, validation (the malformed corpus), compiling, fuzzing. Pure and fast: no containers."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.controller.config import Config, load_config
from kiln.controller.model import InvalidInput
from kiln.controller.schema_export import file_schema, json_schema, reference_markdown
from kiln.controller.stepfiles.compile import (
    bundle_json,
    compile_role,
    list_roles,
    parse_var_overrides,
    resolve_variables,
    validate_roles,
)
from kiln.controller.stepfiles.loader import load_text
from kiln.controller.stepfiles.validate import CONTROL_KEYS

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"
PLAYBOOKS = ROOT / "playbooks"

ROLE_YML = "description: corpus role\ndefaults:\n  port: 80\n  packages: [nginx]\n"
HANDLERS_YML = "- name: reload nginx\n  command: nginx -s reload\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_role(root: Path, name: str, files: dict[str, str]) -> Path:
    role = root / "roles" / name
    role.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        write(role / rel, text)
    return role


def config_for(root: Path) -> Config:
    return Config(path=root / "kiln.yaml")


def compile_errors(root: Path, role: str = "t", **kwargs) -> list:
    with pytest.raises(InvalidInput) as info:
        compile_role(root, role, "local", config_for(root), **kwargs)
    return info.value.diagnostics


def corpus_playbooks(tmp: Path, entry: Path) -> Path:
    """A playbooks dir with role ``t`` (defaults port, packages; handler 'reload nginx'; files/ok.txt,
    templates/ok.j2) and an empty role ``base``, then the corpus entry laid over role ``t``."""
    make_role(tmp, "base", {"role.yml": "description: base\n", "steps.yml": "[]\n"})
    role = make_role(
        tmp,
        "t",
        {
            "role.yml": ROLE_YML,
            "handlers.yml": HANDLERS_YML,
            "files/ok.txt": "ok\n",
            "templates/ok.j2": "{{ port }}\n",
            "steps.yml": "[]\n",
        },
    )
    if entry.is_dir():
        for path in entry.rglob("*"):
            if path.is_file() and path.name != "expect.txt":
                target = role / path.relative_to(entry)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    else:
        shutil.copy(entry, role / "steps.yml")
    return tmp


def corpus_expectations(entry: Path) -> list[tuple[str, int, int, str]]:
    if entry.is_dir():
        lines = (entry / "expect.txt").read_text().splitlines()
    else:
        lines = [line[len("# expect:") :] for line in entry.read_text().splitlines() if line.startswith("# expect:")]
    out = []
    for line in lines:
        if not line.strip():
            continue
        if entry.is_dir():
            where, _, message = line.strip().partition(": ")
            file, row, col = where.rsplit(":", 2)
        else:
            where, _, message = line.strip().partition(": ")
            row, col = where.split(":")
            file = "steps.yml"
        out.append((file, int(row), int(col), message))
    return out


ENTRIES = sorted(CORPUS.iterdir())


def test_corpus_is_big_enough():
    assert len(ENTRIES) >= 40


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_corpus(entry: Path, tmp_path: Path):
    root = corpus_playbooks(tmp_path, entry)
    expected = corpus_expectations(entry)
    assert expected, f"{entry.name} declares no expectation"
    found = compile_errors(root)
    rendered = "\n".join(d.render() for d in found)
    for file, line, column, message in expected:
        matches = [
            d
            for d in found
            if d.file.replace("\\", "/").endswith("/t/" + file)
            and (d.line, d.column) == (line, column)
            and message in d.message
        ]
        assert matches, f"expected {file}:{line}:{column}: {message}\ngot:\n{rendered}"
        # the caret line quotes the offending source line
        assert matches[0].source_line.strip()
        assert "^" in matches[0].render()
    assert len(found) == len(expected), f"unexpected extra diagnostics:\n{rendered}"


def test_all_errors_of_a_file_are_reported_together(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": ROLE_YML,
            "handlers.yml": HANDLERS_YML,
            "steps.yml": """\
- file: {pth: /srv}
- comand: echo hi
- command: echo hi
  whenn: true
- file: {path: /srv, mode: 644}
- file: {path: /srv, owner: yes}
- command: "echo {{ nope }}"
- command: echo
  notify: reload ngnix
- template: {src: missing.j2, dest: /x}
- command: date
  idempotent: false
- file: {path: /a}
  command: ls
""",
        },
    )
    found = compile_errors(tmp_path)
    lines = sorted({d.line for d in found})
    assert lines == [1, 2, 4, 5, 6, 7, 9, 10, 12, 14], "\n".join(d.render() for d in found)
    text = InvalidInput(found).render()
    assert "nothing was launched" in text
    assert f"{len(found)} error(s)" in text


def test_problems_in_several_files_and_roles_are_reported_together(tmp_path: Path):
    make_role(tmp_path, "lib", {"role.yml": "defaults: {x: 1}\n", "steps.yml": "- comand: echo\n"})
    make_role(
        tmp_path,
        "t",
        {"role.yml": "depends: [lib]\nfoo: 1\n", "steps.yml": "- file: {path: x}\n", "verify.yml": "- htp: x\n"},
    )
    files = {Path(d.file).parent.name + "/" + Path(d.file).name for d in compile_errors(tmp_path)}
    assert files == {"lib/steps.yml", "t/role.yml", "t/steps.yml", "t/verify.yml"}


# --- the loader --------------------------------------------------------------------------------
def test_loader_positions_and_styles():
    doc = load_text('- name: x\n  file: {path: /a, mode: "0644", owner: yes}\n  when: a\n', "s.yml")
    assert doc.data == [{"name": "x", "file": {"path": "/a", "mode": "0644", "owner": "yes"}, "when": "a"}]
    assert doc.key_pos((0, "file")) == (2, 3)
    assert doc.value_pos((0, "file", "mode")) == (2, 26)
    assert doc.style((0, "file", "mode")) == '"'
    assert doc.style((0, "file", "owner")) == "plain"
    assert doc.value_pos((0, "nope", "deeper")) == doc.value_pos((0,))


def test_loader_plain_values():
    doc = load_text("a: 2020-01-01\nb: 0o644\nc: 1.5\nd: !!str 5\ne: ~\nf: &x [1]\ng: *x\n", "v.yml")
    assert doc.data == {"a": "2020-01-01", "b": 420, "c": 1.5, "d": "5", "e": None, "f": [1], "g": [1]}
    json.dumps(doc.data)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x [*x]\n",
        "- &a {b: *a}\n",
        "[" * 5000,
        "\x00",
        "a: 1\n---\nb: 2\n",
        "a: b: c\n",
        "? [a, b]\n: 1\n",
        "{a: 1, a: 2}\n",
        "%YAML 1.1\n---\na: yes\n",
    ],
)
def test_loader_hostile_input(text: str):
    try:
        load_text(text, "hostile.yml")
    except InvalidInput as exc:
        assert exc.diagnostics and exc.diagnostics[0].line >= 1


YAMLISH = st.lists(
    st.sampled_from(
        list("-:{}[],&*!|>'\"#%@`?~ \n\t.aAzZ0189_=") + ["yes", "no", "{{", "}}", "\n- ", ": ", "  ", "\n  "]
    ),
    max_size=80,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(YAMLISH, st.text(max_size=200)))
def test_fuzz_loader_never_tracebacks(text: str):
    try:
        doc = load_text(text, "fuzz.yml")
    except InvalidInput as exc:
        assert all(d.line >= 1 and d.column >= 1 for d in exc.diagnostics)
        return
    json.dumps(doc.data)  # plain data only


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "yes",
            "no",
            "on",
            "/srv",
            "0644",
            "{{ port }}",
            "{{ nope }}",
            "item",
            "{%",
            "reload nginx",
            "ok.txt",
            "ok.j2",
            "x == 1",
            "echo hi",
            "directory",
        ]
    ),
    st.text(max_size=12),
)
KEYS = st.sampled_from(
    list(CONTROL_KEYS)
    + [
        "file",
        "command",
        "shell",
        "copy",
        "template",
        "path",
        "cmd",
        "src",
        "dest",
        "mode",
        "state",
        "content",
        "loop_control",
        "with_items",
        "frobnicate",
        "x",
    ]
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
STEPS = st.one_of(VALUES, st.lists(st.dictionaries(KEYS, VALUES, max_size=5), max_size=5))


def _yaml_dump(value) -> str:
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(value, out)
    return out.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, handlers=STEPS, verify=VALUES)
def test_fuzz_compile_never_tracebacks(steps, handlers, verify):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_role(
            root,
            "t",
            {
                "role.yml": ROLE_YML,
                "steps.yml": _yaml_dump(steps),
                "handlers.yml": _yaml_dump(handlers),
                "verify.yml": _yaml_dump(verify),
                "files/ok.txt": "ok",
                "templates/ok.j2": "{{ port }}",
            },
        )
        try:
            compiled = compile_role(root, "t", "local", config_for(root))
        except InvalidInput as exc:
            assert all(d.line >= 1 and d.column >= 1 and d.message for d in exc.diagnostics)
            return
        json.dumps(bundle_json(compiled, {"kiln": {"role": "t", "version": "1", "build_id": "b"}}))


def test_with_items_over_a_templated_mapping_is_an_error_with_its_position(tmp_path):
    """Found by the fuzz test in CI: a mapping under with_items whose values are templates raised a TypeError."""
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": ROLE_YML,
            "steps.yml": "- file: {path: /tmp/x, state: directory}\n  with_items: {name: '{{ port }}'}\n",
        },
    )
    errors = compile_errors(tmp_path)
    assert errors and all(d.line >= 1 and d.column >= 1 for d in errors), errors
    assert any("with_items" in d.message or "loop" in d.message for d in errors), [d.message for d in errors]


# --- compiling ---------------------------------------------------------------------------------
def test_web_role_compiles():
    compiled = compile_role(PLAYBOOKS, "web", "local", load_config(PLAYBOOKS / "kiln.yaml"))
    assert compiled.chain == ["base", "web"]
    assert compiled.base["local"] == "localhost/kiln-base/debian:bookworm"
    assert "ssm_parameter" in compiled.base["aws"]
    assert [s["index"] for s in compiled.steps] == list(range(1, len(compiled.steps) + 1))
    assert {s["role"] for s in compiled.steps} == {"base", "web"}
    template = next(s for s in compiled.steps if s["module"] == "template")
    assert template["args"]["src"].startswith("web/")
    assert "templates/web/site.conf.j2" in compiled.files
    assert {h["name"] for h in compiled.handlers} == {"reload sshd", "reload nginx"}
    assert compiled.variables["web_port"] == 80 and compiled.variables["timezone"] == "Etc/UTC"
    kinds = [c["check"] for c in compiled.checks]
    assert {"http", "port", "service", "package", "command"} <= set(kinds)
    port = next(c for c in compiled.checks if c["check"] == "port")
    assert port["args"]["port"] == 80 and port["name"] == "port 80"
    assert all(
        step["source"].startswith("playbooks/roles/") or "/playbooks/roles/" in step["source"]
        for step in compiled.steps
    )
    bundle = bundle_json(compiled, {"kiln": {"role": "web", "version": "20240101.1", "build_id": "b1"}})
    assert set(bundle) == {"role", "vars", "var_sources", "role_vars", "steps", "handlers", "check_mode", "diff"}
    assert bundle["vars"]["kiln"]["version"] == "20240101.1"
    json.dumps(bundle)


def test_all_shipped_roles_validate():
    assert validate_roles(PLAYBOOKS, None, load_config(PLAYBOOKS / "kiln.yaml")) == []
    assert {"base", "web"} <= set(list_roles(PLAYBOOKS))


def test_step_shape(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": ROLE_YML,
            "handlers.yml": HANDLERS_YML,
            "files/motd": "hi\n",
            "steps.yml": """\
- file: {path: /srv, state: directory}
- name: Loop
  command: "echo {{ pkg }}"
  loop: "{{ packages }}"
  loop_control: {loop_var: pkg}
  register: echoed
  changed_when: false
  notify: reload nginx
  retries: 2
  delay: 1
- block:
    - copy: {src: motd, dest: /etc/motd, mode: "0644"}
  rescue:
    - command: "echo {{ kiln_failed_step.name }} {{ echoed.results | length }}"
  always:
    - flush_handlers: true
  when: port == 80
- command: date
  idempotent: false  # the clock moves
- command: date
  idempotent: false
  idempotent_reason: prints the date
- shell: echo
  ignore_errors: true
""",
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    first, loop, block, date1, date2, shell = compiled.steps
    assert first["name"] == "file /srv" and first["args"] == {"path": "/srv", "state": "directory"}
    assert first["source"].endswith("roles/t/steps.yml:1") and first["role"] == "t"
    assert loop["loop"] == "{{ packages }}" and loop["loop_var"] == "pkg" and loop["register"] == "echoed"
    assert loop["notify"] == ["reload nginx"] and loop["changed_when"] is False
    assert loop["retries"] == 2 and loop["delay"] == 1
    assert block["module"] == "block" and "when" not in block  # each step inside checks it, as in Ansible
    assert block["block"][0]["when"] == block["rescue"][0]["when"] == "port == 80"
    assert [s["index"] for s in (first, loop, block)] == [1, 2, 3]
    assert block["block"][0]["index"] == 4 and block["block"][0]["args"]["src"] == "t/motd"
    assert block["rescue"][0]["index"] == 5
    assert block["always"][0] == {
        "index": 6,
        "name": "flush handlers",
        "module": "flush_handlers",
        "args": {},
        "source": block["always"][0]["source"],
        "role": "t",
        "tags": ["always"],
    }
    assert date1["idempotent"] is False and date1["idempotent_reason"] == "the clock moves"
    assert date2["idempotent_reason"] == "prints the date"
    assert shell["ignore_errors"] is True
    assert compiled.handlers[0]["index"] == 10
    assert "files/t/motd" in compiled.files


def test_defined_and_default_guard_names(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "steps.yml": """\
- command: "echo {{ maybe | default('x') }}"
  when: other is defined and third.x is not defined
"""
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert compiled.steps[0]["when"] == "other is defined and third.x is not defined"
    # the same names unguarded are undefined: the guard is what made them fine
    make_role(tmp_path, "t", {"steps.yml": '- command: "echo {{ maybe }}"\n  when: other\n'})
    messages = [d.message for d in compile_errors(tmp_path)]
    assert any("maybe" in m for m in messages) and any("other" in m for m in messages), messages


def test_registered_names_from_dependencies_are_known(tmp_path: Path):
    make_role(tmp_path, "lib", {"steps.yml": "- command: uname\n  register: kernel\n"})
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": "depends: [lib]\n",
            "steps.yml": "- command: echo\n  when: kernel.rc == 0 and facts.arch == 'x86_64'\n",
        },
    )
    assert compile_role(tmp_path, "t", "local", config_for(tmp_path)).chain == ["lib", "t"]


# --- dependencies --------------------------------------------------------------------------
def test_diamond_dependencies_run_once_in_order(tmp_path: Path):
    make_role(tmp_path, "d", {"steps.yml": "- command: echo d\n", "role.yml": "base: {local: img/d}\n"})
    make_role(tmp_path, "b", {"role.yml": "depends: [d]\n", "steps.yml": "- command: echo b\n"})
    make_role(tmp_path, "c", {"role.yml": "depends: [d]\nbase: {local: img/c}\n", "steps.yml": "- command: echo c\n"})
    make_role(tmp_path, "a", {"role.yml": "depends: [b, c]\n", "steps.yml": "- command: echo a\n"})
    compiled = compile_role(tmp_path, "a", "local", config_for(tmp_path))
    assert compiled.chain == ["d", "b", "c", "a"]
    assert [s["args"]["cmd"] for s in compiled.steps] == ["echo d", "echo b", "echo c", "echo a"]
    assert compiled.base == {"local": "img/c"}  # inherited: the last dependency in chain order that sets it


def test_own_base_beats_dependencies(tmp_path: Path):
    make_role(tmp_path, "d", {"role.yml": "base: {local: img/d, aws: {ssm_parameter: /p}}\n"})
    make_role(tmp_path, "a", {"role.yml": "depends: [d]\nbase: {local: img/a}\n"})
    assert compile_role(tmp_path, "a", "local", config_for(tmp_path)).base == {
        "local": "img/a",
        "aws": {"ssm_parameter": "/p"},
    }


def test_dependency_cycle_names_the_chain(tmp_path: Path):
    make_role(tmp_path, "a", {"role.yml": "depends: [b]\n"})
    make_role(tmp_path, "b", {"role.yml": "depends: [c]\n"})
    make_role(tmp_path, "c", {"role.yml": "depends: [a]\n"})
    found = compile_errors(tmp_path, "a")
    assert len(found) == 1
    assert "dependency cycle: a -> b -> c -> a" in found[0].message
    assert found[0].file.endswith("c/role.yml") and (found[0].line, found[0].column) == (1, 11)


def test_self_dependency(tmp_path: Path):
    make_role(tmp_path, "a", {"role.yml": "depends: [a]\n"})
    assert "dependency cycle: a -> a" in compile_errors(tmp_path, "a")[0].message


def test_unknown_role(tmp_path: Path):
    make_role(tmp_path, "web", {"steps.yml": "[]\n"})
    found = compile_errors(tmp_path, "wbe")
    assert "no role 'wbe'" in found[0].message and "did you mean 'web'" in found[0].message


# --- variables -----------------------------------------------------------------------------
def test_variable_precedence(tmp_path: Path):
    make_role(
        tmp_path,
        "lib",
        {
            "role.yml": "defaults: {a: lib-default, b: lib-default, c: lib-default, "
            "d: lib-default, e: lib-default}\nvars: {b: lib-vars}\n"
        },
    )
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": "depends: [lib]\ndefaults: {a: t-default, b: t-default, c: t-default}\n"
            "vars: {c: t-vars, d: t-vars}\n"
        },
    )
    write(tmp_path / "kiln.yaml", "vars: {d: config, e: config, f: config}\n")
    config = load_config(tmp_path / "kiln.yaml")
    compiled = compile_role(tmp_path, "t", "local", config, overrides=parse_var_overrides(["e=cli", "g=x=y"]))
    assert compiled.variables == {
        "a": "t-default",
        "b": "lib-vars",
        "c": "t-vars",
        "d": "config",
        "e": "cli",
        "f": "config",
        "g": "x=y",
    }


def test_parse_var_overrides_rejects_garbage():
    assert parse_var_overrides(["a=1", "b="]) == {"a": "1", "b": ""}
    with pytest.raises(InvalidInput) as info:
        parse_var_overrides(["novalue", "9x=1", "facts=1"])
    assert len(info.value.diagnostics) == 3


def test_overrides_satisfy_undefined_names_and_change_the_hash(tmp_path: Path):
    make_role(tmp_path, "t", {"steps.yml": '- command: "echo {{ greeting }}"\n'})
    assert "undefined variable 'greeting'" in compile_errors(tmp_path)[0].message
    one = compile_role(tmp_path, "t", "local", config_for(tmp_path), overrides={"greeting": "hi"})
    two = compile_role(tmp_path, "t", "local", config_for(tmp_path), overrides={"greeting": "hi"})
    three = compile_role(tmp_path, "t", "local", config_for(tmp_path), overrides={"greeting": "ho"})
    aws = compile_role(tmp_path, "t", "aws", config_for(tmp_path), overrides={"greeting": "hi"})
    assert one.content_hash == two.content_hash
    assert len({one.content_hash, three.content_hash, aws.content_hash}) == 3
    write(tmp_path / "roles/t/files/new.txt", "x")
    four = compile_role(tmp_path, "t", "local", config_for(tmp_path), overrides={"greeting": "hi"})
    assert four.content_hash != one.content_hash


def test_templated_variables_resolve_in_the_bundle(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": "defaults:\n  root: /srv/{{ kiln.role }}\n  html: '{{ root }}/html'\n"
            "  arch_dir: '/opt/{{ facts.arch }}'\n",
            "steps.yml": "- file: {path: '{{ html }}', state: directory}\n",
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    bundle = bundle_json(compiled, {"kiln": {"role": "t", "version": "1", "build_id": "b"}})
    # the bundle carries them as written: the agent renders each when it is read (Ansible's lazy templating)
    assert bundle["vars"]["html"] == "{{ root }}/html"
    assert resolve_variables(bundle["vars"])["html"] == "/srv/t/html"
    assert resolve_variables(bundle["vars"])["arch_dir"] == "/opt/{{ facts.arch }}"  # facts: only the box knows
    # a cycle cannot be resolved here: it ends (no endless rendering) and stays as written
    assert resolve_variables({"a": "{{ b }}", "b": "{{ a }}"}) == {"a": "{{ b }}", "b": "{{ a }}"}


def test_undefined_names_in_variables_are_reported(tmp_path: Path):
    make_role(tmp_path, "t", {"role.yml": "defaults:\n  html: '{{ rooot }}/html'\n  root: /srv\n"})
    found = compile_errors(tmp_path)
    assert (found[0].line, found[0].column) == (2, 9) and "did you mean 'root'" in found[0].message


# --- tags, no_log, check/diff ----------------------------------------------------------------
TAGGED = """\
- command: echo plain
- command: echo web
  tags: [web]
- command: echo always
  tags: always
- command: echo never
  tags: [never, debug]
- block:
    - command: echo in-block
    - command: echo in-block-config
      tags: config
  tags: web
- block:
    - command: echo other
  tags: other
"""


def _cmds(steps):
    out = []
    for step in steps:
        if step["module"] == "block":
            out += _cmds(step["block"])
        else:
            out.append(step["args"]["cmd"])
    return out


def test_tags(tmp_path: Path):
    make_role(tmp_path, "t", {"steps.yml": TAGGED})

    def run(**kwargs):
        return _cmds(compile_role(tmp_path, "t", "local", config_for(tmp_path), **kwargs).steps)

    assert run() == ["echo plain", "echo web", "echo always", "echo in-block", "echo in-block-config", "echo other"]
    assert run(tags=["web"]) == ["echo web", "echo always", "echo in-block", "echo in-block-config"]
    assert run(tags=["config"]) == ["echo always", "echo in-block-config"]
    assert run(tags=["debug"]) == ["echo always", "echo never"]
    assert run(skip_tags=["web"]) == ["echo plain", "echo always", "echo other"]
    assert run(tags=["web"], skip_tags=["config", "always"]) == ["echo web", "echo in-block"]
    block = next(s for s in compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps if s["module"] == "block")
    assert block["block"][1]["tags"] == ["web", "config"]
    assert block["block"][0]["index"] == 6  # indexes are stable whatever the selection


def test_tags_change_the_hash(tmp_path: Path):
    make_role(tmp_path, "t", {"steps.yml": TAGGED})
    plain = compile_role(tmp_path, "t", "local", config_for(tmp_path)).content_hash
    assert compile_role(tmp_path, "t", "local", config_for(tmp_path), tags=["web"]).content_hash != plain


def test_no_log_values_and_check_diff_flags(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": "defaults:\n  secret: hunter2\n  creds: {user: bob, token: abc123}\n"
            "  shown: visible\n  keys: [k1]\n",
            "steps.yml": "- copy: {content: '{{ secret }} {{ creds.token }}', dest: /etc/s}\n"
            "  no_log: true\n"
            "- block:\n    - command: 'echo {{ shown }}'\n  no_log: true\n"
            "- command: 'echo {{ item }}'\n  loop: '{{ keys }}'\n  no_log: true\n",
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path), check_mode=True, diff=True)
    assert compiled.no_log_values == ["abc123", "bob", "hunter2", "k1", "visible"]
    assert compiled.steps[0]["no_log"] is True and compiled.steps[1]["block"][0]["no_log"] is True
    bundle = bundle_json(compiled, {})
    assert bundle["check_mode"] is True and bundle["diff"] is True
    assert bundle_json(compiled, {}, check_mode=False)["check_mode"] is False


def test_no_log_hides_the_variables_a_secret_is_made_of(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": "defaults:\n  db_password: hunter2secret\n"
            "  db_url: 'postgres://app:{{ db_password }}@db'\n  other: plain\n",
            "steps.yml": "- copy: {content: '{{ db_url }}', dest: /etc/db}\n  no_log: true\n",
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert compiled.no_log_values == ["hunter2secret", "postgres://app:hunter2secret@db"]


def test_template_files_know_their_steps_loop_var(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": ROLE_YML,
            "templates/site.j2": "{{ site.name }} {{ port }}\n",
            "templates/unused.j2": "{{ anything_goes }}\n",
            "steps.yml": "- template: {src: site.j2, dest: '/etc/{{ site.name }}'}\n"
            "  loop: [{name: a}]\n  loop_var: site\n",
        },
    )
    compile_role(tmp_path, "t", "local", config_for(tmp_path))
    # the loop var is known to the template only under its own name
    write(tmp_path / "roles/t/templates/site.j2", "{{ item.name }} {{ port }}\n")
    messages = [d.message for d in compile_errors(tmp_path)]
    assert any("item" in m for m in messages), messages


def test_src_may_be_absolute_or_templated(tmp_path: Path):
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": ROLE_YML,
            "files/a.txt": "a",
            "steps.yml": "- copy: {src: /etc/hostname, dest: /tmp/h}\n"
            "- copy: {src: '{{ item }}', dest: /tmp/}\n  loop: [a.txt]\n",
        },
    )
    steps = compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps
    assert steps[0]["args"]["src"] == "/etc/hostname"
    assert steps[1]["args"]["src"] == "t/{{ item }}"


def test_empty_files_are_fine(tmp_path: Path):
    make_role(tmp_path, "t", {"role.yml": "", "steps.yml": "", "handlers.yml": "# nothing\n", "verify.yml": ""})
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert compiled.steps == [] and compiled.handlers == [] and compiled.checks == []


def test_notify_may_name_a_dependency_handler(tmp_path: Path):
    make_role(tmp_path, "lib", {"handlers.yml": HANDLERS_YML})
    make_role(
        tmp_path, "t", {"role.yml": "depends: [lib]\n", "steps.yml": "- command: echo\n  notify: [reload nginx]\n"}
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert compiled.handlers[0]["role"] == "lib"


def test_a_handler_name_in_two_roles_runs_the_one_loaded_last(tmp_path: Path):
    """As in Ansible (compared with ansible-playbook by kiln_scope in test_ansible_layout.py)."""
    make_role(tmp_path, "lib", {"handlers.yml": HANDLERS_YML})
    make_role(tmp_path, "t", {"role.yml": "depends: [lib]\n", "handlers.yml": HANDLERS_YML})
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert [(h["name"], h["role"]) for h in compiled.handlers if h["name"] == "reload nginx"] == [("reload nginx", "t")]


def test_duplicate_handler_in_one_role(tmp_path: Path):
    make_role(tmp_path, "t", {"handlers.yml": HANDLERS_YML + HANDLERS_YML})
    found = compile_errors(tmp_path)
    assert "duplicate handler 'reload nginx' (first defined at" in found[0].message
    assert "t/handlers.yml:1" in found[0].message


def test_validate_roles_reports_every_role(tmp_path: Path):
    make_role(tmp_path, "good", {"steps.yml": "- command: echo\n"})
    make_role(tmp_path, "bad1", {"steps.yml": "- comand: echo\n"})
    make_role(tmp_path, "bad2", {"role.yml": "depends: [bad1]\n", "steps.yml": "- file: {}\n"})
    found = validate_roles(tmp_path, None, config_for(tmp_path))
    assert sorted(Path(d.file).parent.name for d in found) == ["bad1", "bad2"]  # bad1's problem once
    assert validate_roles(tmp_path, ["good"], config_for(tmp_path)) == []


# --- schema export -------------------------------------------------------------------------
def test_docs_step_files_md_is_current():
    doc = ROOT / "docs" / "step-files.md"
    assert doc.exists() and doc.read_text() == reference_markdown(), (
        "docs/step-files.md is stale: run `python -m kiln.controller.schema_export`"
    )


def test_reference_lists_every_module_and_check():
    from kiln.agent.checks import discover as checks
    from kiln.agent.modules import discover as modules

    text = reference_markdown()
    for name in list(modules()) + list(checks()):
        assert f"### `{name}`" in text


def test_json_schema_is_valid_and_accepts_the_shipped_roles():
    jsonschema = pytest.importorskip("jsonschema")
    from kiln.controller.stepfiles.loader import load_yaml

    jsonschema.Draft202012Validator.check_schema(json_schema())
    for kind in ("steps", "handlers", "verify"):
        validator = jsonschema.Draft202012Validator(file_schema(kind))
        for path in sorted(PLAYBOOKS.glob(f"roles/*/{kind}.yml")):
            errors = [e.message for e in validator.iter_errors(load_yaml(path).data)]
            assert not errors, f"{path}: {errors}"
    steps = jsonschema.Draft202012Validator(file_schema("steps"))
    assert not steps.is_valid([{"file": {"path": "/a"}, "command": "ls"}])  # two modules
    assert not steps.is_valid([{"file": {"path": "/a"}, "whenn": "x"}])
    assert steps.is_valid([{"block": [{"command": "ls"}], "rescue": [{"flush_handlers": True}]}])


# --- Ansible's idioms from Galaxy roles (each as ansible-core 2.19 has it) --------------------------------------
def _tree(steps: list, path: tuple = ()) -> dict:
    """Each step by name (nested ones too), for what the compile gave it."""
    found = {}
    for step in steps:
        found[step["name"]] = step
        for part in ("block", "rescue", "always"):
            found.update(_tree(step.get(part, [])))
    return found


def test_a_blocks_notify_is_each_inner_steps_unless_it_has_its_own(tmp_path: Path):
    """Ansible's Block is Notifiable and a task inherits the attribute (its own wins); import_tasks and
    import_role hand it to their tasks, include_tasks and include_role refuse it (checked with ansible-playbook)."""
    make_role(
        tmp_path,
        "t",
        {
            "handlers.yml": "- {name: h block, command: 'true'}\n- {name: h own, command: 'true'}\n",
            "tasks/more.yml": "- {name: imported, command: 'true'}\n",
            "steps.yml": """\
- name: a block
  notify: h block
  block:
    - {name: inherits, command: "true"}
    - {name: own wins, command: "true", notify: h own}
    - name: nested
      block:
        - {name: nested inherits, command: "true"}
  rescue:
    - {name: rescue inherits, command: "true"}
- import_tasks: more.yml
  notify: h block
""",
        },
    )
    steps = _tree(compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps)
    for name in ("inherits", "nested inherits", "rescue inherits", "imported"):
        assert steps[name]["notify"] == ["h block"], name
    assert steps["own wins"]["notify"] == ["h own"]
    make_role(tmp_path, "t", {"steps.yml": "- include_tasks: more.yml\n  notify: h block\n"})
    (found,) = compile_errors(tmp_path)
    assert (found.line, found.column) == (2, 3) and "'notify' cannot be used with include_tasks" in found.message
    make_role(tmp_path, "t", {"steps.yml": "- block: [{command: 'true'}]\n  notify: h nowhere\n"})
    (found,) = compile_errors(tmp_path)
    assert (found.line, found.column) == (2, 11) and "notify names no handler 'h nowhere'" in found.message


def test_a_tasks_own_vars_are_seen_by_its_arguments_loop_and_when(tmp_path: Path):
    """Ansible templates a task's when, loop and arguments with its vars; include_vars' file too, and
    lookup('first_found', params) searches each of params.files under each of params.paths."""
    make_role(
        tmp_path,
        "t",
        {
            "vars/Debian.yml": "os_word: debian\n",
            "vars/main.yml": "os_word: other\n",
            "tasks/main.yml": """\
- name: Load OS-specific vars.
  include_vars: "{{ lookup('first_found', params) }}"
  vars:
    params:
      files:
        - '{{ansible_facts.distribution}}.yml'
        - '{{ ansible_facts.os_family }}.yml'
        - main.yml
      paths:
        - 'vars'
- name: loop and when see the task's vars
  debug: {msg: "{{ x }} {{ item }}"}
  loop: "{{ things }}"
  when: flag
  vars: {things: [1, 2], flag: true, x: "{{ os_word }}"}
""",
        },
    )
    load, shown = compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps
    assert load["vars"]["params"]["paths"] == ["vars"]
    chosen = load["args"]["file"]  # the first of them in vars/, chosen on the box with its facts
    assert "ansible_facts.distribution" in chosen and "['Debian.yml', 'main.yml']" in chosen, chosen
    assert shown["loop"] == "{{ things }}" and shown["when"] == "flag"
    make_role(
        tmp_path,
        "t",
        {
            "tasks/main.yml": "- include_vars: \"{{ lookup('first_found', p) }}\"\n  vars: {p: {files: [x.yml], paths: [vars]}}\n"
        },
    )
    (found,) = compile_errors(tmp_path)
    assert (found.line, found.column) == (2, 22) and "'x.yml' not found in the role's vars/" in found.message


def test_a_commands_key_value_words_keep_jinja_and_quotes_whole(tmp_path: Path):
    """geerlingguy.git's build step: Ansible's splitter keeps ``{{ }}`` together; chdir is an argument."""
    make_role(
        tmp_path,
        "t",
        {
            "defaults/main.yml": "path: /usr\nws: /root\n",
            "tasks/main.yml": """\
- name: Build.
  command: >
    make prefix={{ path }} {{ item }}
    chdir={{ ws }}/x
  with_items: [all, install]
- name: Quoted.
  shell: echo "a  b={{ path }}" creates='/etc/x y'
""",
        },
    )
    build, quoted = compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps
    assert build["args"] == {"cmd": "make prefix={{ path }} {{ item }}", "chdir": "{{ ws }}/x"}
    assert quoted["args"] == {"cmd": 'echo "a  b={{ path }}"', "creates": "/etc/x y"}
    make_role(tmp_path, "t", {"tasks/main.yml": "- command: make prefix={{ path\n"})
    messages = [d.message for d in compile_errors(tmp_path)]
    assert any(m.startswith("cannot split the key=value arguments: a quote or a Jinja block") for m in messages)


WORDS = st.lists(
    st.sampled_from(["a", "=", '"', "'", " ", "  ", "\n", "{{", "}}", "{%", "%}", "{#", "#}", "\\", "chdir=", "k="]),
    max_size=14,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=WORDS, free_form=st.booleans())
def test_key_value_splitting_is_ansibles(text: str, free_form: bool):
    """The same words, keys, values and free form as ansible-core's parse_kv, or an error where it has one."""
    from ansible.errors import AnsibleParserError
    from ansible.parsing.splitter import parse_kv as ansible_parse_kv

    from kiln.controller.stepfiles.ansible import COMMAND_KV
    from kiln.controller.stepfiles.splitter import SplitError, parse_kv

    try:
        expected = {str(k): str(v) for k, v in ansible_parse_kv(text, check_raw=free_form).items()}
    except AnsibleParserError:
        expected = "error"
    try:
        found = parse_kv(text, COMMAND_KV if free_form else None)
    except SplitError:
        found = "error"
    assert found == expected


def test_a_templated_no_log_is_decided_where_the_controller_knows_its_names(tmp_path: Path):
    """geerlingguy.apache's ``no_log: "{{ apache_ssl_no_log }}"``: Ansible templates no_log. kiln decides it when
    compiling from what the step sees; one reading the box's values stays a template, which the box redacts."""
    make_role(
        tmp_path,
        "t",
        {
            "defaults/main.yml": "secret_mode: true\nopen_mode: false\nhidden_word: hidden-2\nshown_word: shown-1\n",
            "tasks/main.yml": """\
- {name: hidden, command: "echo {{ hidden_word }}", no_log: "{{ secret_mode }}"}
- {name: shown, command: "echo {{ shown_word }}", no_log: "{{ open_mode }}", register: probe}
- name: a block
  no_log: "{{ open_mode or secret_mode }}"
  block:
    - {name: inherits, command: "true"}
- {name: on the box, command: "true", no_log: "{{ probe.rc == 0 }}"}
""",
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    steps = _tree(compiled.steps)
    assert steps["hidden"]["no_log"] is True and steps["shown"]["no_log"] is False
    assert compiled.no_log_values == ["hidden-2"]  # what the step it hides reads, redacted in every log line
    assert steps["inherits"]["no_log"] is True
    assert steps["on the box"]["no_log"] == "{{ probe.rc == 0 }}"
    make_role(tmp_path, "t", {"tasks/main.yml": '- {command: "true", no_log: "{{ secret_mod }}"}\n'})
    (found,) = compile_errors(tmp_path)
    assert (found.line, found.column) == (1, 29) and "undefined variable 'secret_mod'" in found.message


def test_meta_reset_connection_is_a_step_saying_there_is_nothing_to_reset(tmp_path: Path):
    """geerlingguy.docker resets the connection so the login user's new docker group applies; kiln's steps run as
    root in one agent process and become_user reads groups afresh (runuser): the run says so, nothing else."""
    make_role(
        tmp_path,
        "t",
        {"tasks/main.yml": "- name: Reset ssh connection.\n  meta: reset_connection\n  when: facts.arch != 's390x'\n"},
    )
    (step,) = compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps
    assert step["name"] == "Reset ssh connection." and step["module"] == "debug"
    assert (
        step["args"]["msg"].startswith("reset_connection: nothing to reset") and step["when"] == "facts.arch != 's390x'"
    )


def test_a_when_on_definedness_leaves_the_arguments_it_guards_to_the_run(tmp_path: Path):
    """Ansible renders a task's arguments only when its when holds: ``x is defined`` guards x there;
    ``x is not defined`` of a name only a vars/ file gives (per platform, geerlingguy.git)
    makes the task that platform's fallback, whose arguments the box judges. A default is no such name. Its loop is
    guarded too: Ansible's executor keeps a loop's undefined-name error until the when is known, and skips."""
    make_role(
        tmp_path,
        "t",
        {
            "vars/Debian.yml": "git_deps: [gcc]\n",
            "defaults/main.yml": "git_path: /usr\n",
            "tasks/main.yml": """\
- include_vars: "{{ ansible_facts.os_family }}.yml"
- name: guarded
  debug: {msg: "{{ maybe_thing.name }}"}
  when: [maybe_thing.name is defined, git_path != '']
- name: fallback
  set_fact:
    git_deps: "{{ __git_deps_nowhere | list }}"
  when: git_deps is not defined
""",
        },
    )
    steps = _tree(compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps)
    assert steps["fallback"]["args"]["facts"] == {"git_deps": "{{ __git_deps_nowhere | list }}"}
    make_role(
        tmp_path,
        "t",
        {
            "tasks/main.yml": """\
- debug: {msg: "{{ item }}"}
  loop: "{{ maybe_list }}"
  when: maybe_list is defined
- set_fact: {git_path: "{{ __nowhere }}"}
  when: git_path is not defined
- debug: {msg: "{{ maybe_or }}"}
  when: maybe_or is defined or git_path == ''
"""
        },
    )
    found = sorted((d.line, d.message) for d in compile_errors(tmp_path))
    assert [line for line, _ in found] == [4, 6], found
    assert all("undefined variable" in message for _, message in found), found


def test_a_definedness_guard_covers_its_loop_an_include_and_a_blocks_steps(tmp_path: Path):
    """Ansible's executor keeps a loop's undefined-name error until the when is evaluated, and skips the task when it
    is false (robertdebock.users: ``loop: "{{ users_groups }}"`` under ``when: users_groups is defined``); an
    include's or a block's ``x is defined`` guards the steps inside. A name no guard covers is still reported."""
    make_role(
        tmp_path,
        "t",
        {
            "tasks/each.yml": "- debug: {msg: '{{ group.name }} {{ maybe_groups | length }}'}\n",
            "tasks/main.yml": """\
- assert: {that: [item.name is defined]}
  loop: "{{ maybe_groups }}"
  loop_control: {label: "{{ item.name }}"}
  when: [maybe_groups is defined]
- include_tasks: {file: each.yml}
  loop: "{{ maybe_groups }}"
  loop_control: {loop_var: group}
  when: maybe_groups is defined
- block:
    - debug: {msg: "{{ maybe_block.x }}"}
  when: maybe_block is defined
- debug: {msg: "{{ item }}"}
  loop: "{{ not_guarded }}"
  when: maybe_groups is defined
""",
        },
    )
    found = [(d.line, d.message) for d in compile_errors(tmp_path)]
    assert found == [(13, "undefined variable 'not_guarded'")], found


def test_a_role_variable_may_read_a_loop_variable_bound_where_it_is_used(tmp_path: Path):
    """Ansible's variables are lazy: vars/main.yml's ``cmd: "ssh-keygen -f {{ user.name }}"`` is rendered inside
    the task whose loop_control binds ``user`` (robertdebock.users); a name no loop binds is a typo still."""
    make_role(
        tmp_path,
        "t",
        {
            "vars/main.yml": "keygen: ssh-keygen -f /k/{{ user.name }}\ntypo: '{{ usr.name }}'\n",
            "tasks/main.yml": """\
- debug: {msg: "{{ keygen }}"}
  loop: [{name: a}]
  loop_control: {loop_var: user}
""",
        },
    )
    found = [(d.file.rsplit("/", 1)[-1], d.line, d.message) for d in compile_errors(tmp_path)]
    assert [(f, line, m.split(" (")[0]) for f, line, m in found] == [("main.yml", 2, "undefined variable 'usr'")]


def test_loop_control_without_a_loop_and_run_once_are_accepted(tmp_path: Path):
    """Ansible reads no loop_control setting without a loop (robertdebock.users' group.yml), and run_once on a
    task, block or import changes nothing with one host (node_exporter, users); kiln's own loop_var still needs a
    loop, and run_once's value is still checked."""
    make_role(
        tmp_path,
        "t",
        {
            "tasks/other.yml": "- debug: {msg: hi}\n",
            "tasks/main.yml": """\
- debug: {msg: "{{ 'x' }}"}
  loop_control: {label: "{{ group.name }}"}
  run_once: true
- import_tasks: {file: other.yml}
  run_once: "{{ 1 == 1 }}"
- block:
    - debug: {msg: hi}
  run_once: true
""",
        },
    )
    steps = compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps
    assert "loop_control" not in steps[0] and "run_once" not in json.dumps(steps), steps
    make_role(
        tmp_path,
        "t",
        {
            "tasks/main.yml": """\
- debug: {msg: hi}
  loop_var: x
- debug: {msg: hi}
  run_once: maybe
- debug: {msg: hi}
  loop_control: {lable: x}
"""
        },
    )
    found = sorted((d.line, d.message.split(":")[0]) for d in compile_errors(tmp_path))
    assert [line for line, _ in found] == [2, 4, 6], found


def _loop_items(step: dict, variables: dict) -> list:
    from kiln.agent.templating import render

    return [list(pair) if isinstance(pair, (list, tuple)) else pair for pair in render(step["loop"], variables)]


def test_with_subelements_and_with_flattened_give_ansibles_items(tmp_path: Path):
    """ansible-core's subelements lookup (the first of each pair without the key, skipped elements left out,
    skip_missing) and community.general's flattened (every depth), run on the box's templating (geerlingguy.php,
    dev-sec os_hardening); their terms' names are checked as a loop's."""
    make_role(
        tmp_path,
        "t",
        {
            "defaults/main.yml": """\
php_sets:
  - {name: a, files: [x, w]}
  - {name: b}
  - {name: c, files: [z], skipped: true}
more: [[3, [4]], 5]
""",
            "tasks/main.yml": """\
- name: subs
  debug: {msg: "{{ item.0.name }} {{ item.1 }}"}
  with_subelements:
    - "{{ php_sets }}"
    - files
    - skip_missing: true
- name: flat
  debug: {msg: "{{ item }}"}
  with_community.general.flattened:
    - [1, [2]]
    - "{{ more }}"
- name: flat2
  debug: {msg: "{{ item }}"}
  with_flattened: "{{ more }}"
""",
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    steps, variables = _tree(compiled.steps), compiled.variables
    assert _loop_items(steps["subs"], variables) == [[{"name": "a"}, "x"], [{"name": "a"}, "w"]]
    assert _loop_items(steps["flat"], variables) == [1, 2, 3, 4, 5]
    assert _loop_items(steps["flat2"], variables) == [3, 4, 5]
    make_role(
        tmp_path,
        "t",
        {"tasks/main.yml": "- debug: {msg: '{{ item }}'}\n  with_subelements: ['{{ nothing }}', files]\n"},
    )
    assert [(d.line, d.message) for d in compile_errors(tmp_path)] == [(2, "undefined variable 'nothing'")]


def test_with_first_found_finds_vars_relative_to_the_role_and_skip_skips(tmp_path: Path):
    """Ansible's search path for a role's include_vars tries <role>/vars/<name>, then <role>/<name>: 'vars/X.yml'
    is the role's vars/X.yml (geerlingguy.mysql); ``skip: true`` makes no file found a skipped task, not an
    error, checked on the box with its facts."""
    from kiln.agent.templating import evaluate, render

    make_role(
        tmp_path,
        "t",
        {
            "vars/Debian.yml": "db_packages: [mariadb-server]\n",
            "vars/Debian-12.yml": "db_port: 3306\n",
            "tasks/main.yml": """\
- name: os vars
  include_vars: "{{ item }}"
  with_first_found:
    - files:
        - "vars/{{ ansible_facts.os_family }}-{{ ansible_facts.distribution_major_version }}.yml"
        - "vars/{{ ansible_facts.os_family }}.yml"
      skip: true
- name: none there
  include_vars: "{{ item }}"
  with_first_found:
    files: ["vars/{{ ansible_facts.distribution }}-only.yml"]
    skip: true
""",
        },
    )
    steps = _tree(compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps)
    for facts, chosen in (
        ({"os_family": "Debian", "distribution_major_version": "12"}, "Debian-12.yml"),
        ({"os_family": "Debian", "distribution_major_version": "11"}, "Debian.yml"),
    ):
        box = {"ansible_facts": facts}
        assert render(steps["os vars"]["args"]["file"], box) == chosen
        assert evaluate(steps["os vars"]["when"], box) is True
    redhat = {"ansible_facts": {"os_family": "RedHat", "distribution_major_version": "9"}}
    assert evaluate(steps["os vars"]["when"], redhat) is False
    assert evaluate(steps["none there"]["when"], {"ansible_facts": {"distribution": "Debian"}}) is False
    make_role(
        tmp_path,
        "t",
        {
            "tasks/main.yml": "- include_vars: '{{ item }}'\n  with_first_found: ['vars/{{ ansible_facts.os }}-no.yml']\n"
        },
    )
    assert [d.line for d in compile_errors(tmp_path)] == [2]


def test_defaults_and_vars_main_may_be_directories_loaded_as_ansible_loads_them(tmp_path: Path):
    """Ansible's DataLoader.find_vars_files: a ``main/`` directory wins over main.yml; its files (YAML, JSON or no
    extension, in subdirectories too, each directory sorted; hidden and ``~`` files left out) are merged in that
    order, a later one winning (nginxinc.nginx's defaults/main/*.yml). A problem names the file it is in."""
    make_role(
        tmp_path,
        "t",
        {
            "defaults/main.yml": "port: 1\n",
            "defaults/main/a.yml": "port: 80\n",
            "defaults/main/a/deeper.yml": "name: deeper\n",
            "defaults/main/a-b.yml": "name: a-b\nlate: '{{ port }}'\n",
            "defaults/main/.hidden.yml": "name: hidden\n",
            "defaults/main/b.yml~": "name: backup\n",
            "vars/main/x.json": '{"fixed": 2}\n',
            "tasks/main.yml": "- debug: {msg: '{{ port }} {{ name }} {{ late }} {{ fixed }}'}\n",
        },
    )
    variables = compile_role(tmp_path, "t", "local", config_for(tmp_path)).variables
    assert (variables["port"], variables["name"], variables["fixed"]) == (80, "a-b", 2)
    make_role(tmp_path, "t", {"defaults/main/c.yml": "other: '{{ nowhere }}'\n"})
    found = [(d.file.rsplit("/", 2)[-2:], d.line) for d in compile_errors(tmp_path)]
    assert found == [(["main", "c.yml"], 1)], found


def test_include_tasks_under_role_path_and_a_candidate_that_would_include_itself(tmp_path: Path):
    """``include_tasks: "{{ role_path }}/tasks/x/y.yml"`` is the role's tasks/x/y.yml; a templated name's candidate
    that is the including file itself is no choice (nginxinc.nginx's opensource/install-oss.yml includes
    opensource/install-<os family>.yml); a file that is not there is still reported."""
    make_role(
        tmp_path,
        "t",
        {
            "tasks/main.yml": """\
- include_tasks: "{{ role_path }}/tasks/os/install-oss.yml"
- import_tasks: "{{role_path}}/tasks/os/plain.yml"
""",
            "tasks/os/install-oss.yml": (
                "- include_tasks: \"{{ role_path }}/tasks/os/install-{{ ansible_facts['os_family'] | lower }}.yml\"\n"
            ),
            "tasks/os/install-debian.yml": "- name: on debian\n  debug: {msg: debian}\n",
            "tasks/os/plain.yml": "- name: plain\n  debug: {msg: plain}\n",
        },
    )
    steps = _tree(compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps)
    assert {"on debian", "plain"} <= set(steps), sorted(steps)
    chosen = [s["block"] for s in steps.values() if s["name"] == "include_tasks os/install-debian.yml"]
    assert len(chosen) == 1 and "include_tasks os/install-oss.yml" not in json.dumps(chosen), chosen
    make_role(tmp_path, "t", {"tasks/main.yml": "- include_tasks: '{{ role_path }}/tasks/nope.yml'\n"})
    assert ["'nope.yml' not found" in d.message for d in compile_errors(tmp_path)] == [True]


def test_a_template_that_sets_a_name_in_a_branch_before_reading_it(tmp_path: Path):
    """``{% set name, options = (c.items() | list)[0] %}`` inside an if (node_exporter's unit template):
    jinja2.meta names them undeclared (the other branch falls back to the context); they are the template's own.
    A name read before its set, or after the for loop that bound it, is still reported."""
    make_role(
        tmp_path,
        "t",
        {
            "defaults/main.yml": "collectors: [cpu, {textfile: {directory: /x}}]\n",
            "templates/unit.j2": """\
{% for c in collectors %}
{% if c is not mapping %}--collector.{{ c }}
{% else %}{% set name, options = (c.items() | list)[0] %}--collector.{{ name }}
{% for k, v in options | dictsort %}--collector.{{ name }}.{{ k }}={{ v }}{% endfor %}
{% endif %}{% endfor %}
""",
            "tasks/main.yml": "- template: {src: unit.j2, dest: /etc/unit}\n",
        },
    )
    compile_role(tmp_path, "t", "local", config_for(tmp_path))
    make_role(
        tmp_path,
        "t",
        {"templates/unit.j2": "{{ early }}{% set early = 1 %}{% for c in collectors %}{% endfor %}{{ c }}\n"},
    )
    found = sorted(d.message.split(" (")[0] for d in compile_errors(tmp_path))
    assert found == ["undefined variable 'c'", "undefined variable 'early'"], found


def test_the_boxs_first_found_takes_ansibles_mapping_terms(tmp_path: Path):
    """agent/templating.py's lookup('first_found') as ansible-core's: a mapping's files (split on , and ;) under
    each of its paths (split on , : and ;), paths first; ``paths: [vars]`` reaches the role's vars/ (Ansible's
    search path holds the role's directory); ``skip`` gives no file instead of an error; a name list in order."""
    from kiln.agent.templating import TemplateError, render

    bundle = tmp_path / "bundle"
    write(bundle / "vars" / "t" / "Debian.yml", "x: 1\n")
    write(bundle / "files" / "t" / "other" / "Debian.yml", "y: 2\n")
    write(bundle / "templates" / "t" / "default.j2", "z\n")
    scope = {
        "__kiln_bundle_dirs": {"files": str(bundle / "files"), "templates": str(bundle / "templates")},
        "role_name": "t",
        "params": {"files": ["Debian-12.yml", "Debian.yml"], "paths": ["vars"]},
        "joined": {"files": "nope.yml;Debian.yml", "paths": "missing:other"},
        "none_there": {"files": ["nope.yml"], "paths": ["vars"], "skip": True},
    }
    assert render("{{ lookup('first_found', params) }}", scope) == str(bundle / "vars" / "t" / "Debian.yml")
    assert render("{{ lookup('first_found', joined) }}", scope) == str(bundle / "files" / "t" / "other" / "Debian.yml")
    assert render("{{ query('first_found', none_there) }}", scope) == []
    assert render("{{ lookup('first_found', ['nope.j2', 'default.j2']) }}", scope).endswith("templates/t/default.j2")
    with pytest.raises(TemplateError, match="none of vars/nope.yml"):
        render("{{ lookup('first_found', {'files': ['nope.yml'], 'paths': ['vars']}) }}", scope)


def _run_on_this_machine(compiled, tmp_path: Path) -> list[dict]:
    """The compiled bundle run by the real agent runner here (its set_fact and debug steps touch nothing)."""
    from kiln.agent.api import Context
    from kiln.agent.runner import Runner

    events: list[dict] = []
    Runner(bundle_json(compiled, {}), Context(), events.append, state_dir=str(tmp_path)).run()
    return [e for e in events if e["event"] == "step"]


def test_a_no_log_template_left_to_the_box_is_rendered_when_the_step_runs(tmp_path: Path):
    """A no_log reading what a step sets (set_fact) is left to the box; the runner renders it with the step's
    variables before the step runs, as Ansible templates it: 'false' shows the step's output, true hides it, a value
    that is no boolean fails the step (Ansible's strict boolean). Before, any such string hid the output."""
    make_role(
        tmp_path,
        "t",
        {
            "defaults/main.yml": "secret: s3cr3t-value\n",
            "tasks/main.yml": """\
- set_fact: {quiet: false, loud: "yes", odd: maybe}
- name: shown
  debug: {msg: "{{ secret }}"}
  no_log: "{{ quiet }}"
- name: hidden
  debug: {msg: "{{ secret }}"}
  no_log: "{{ loud }}"
- name: undecidable
  debug: {msg: "{{ secret }}"}
  no_log: "{{ odd }}"
""",
        },
    )
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert [s.get("no_log") for s in compiled.steps[1:]] == ["{{ quiet }}", "{{ loud }}", "{{ odd }}"]
    steps = {s["name"]: s for s in _run_on_this_machine(compiled, tmp_path)}
    assert steps["shown"]["status"] == "ok" and steps["shown"]["msg"] == "s3cr3t-value", steps["shown"]
    assert steps["hidden"]["msg"] == "<redacted: no_log>", steps["hidden"]
    assert steps["undecidable"]["status"] == "failed", steps["undecidable"]
    assert steps["undecidable"]["msg"] == "no_log: the value 'maybe' is not a valid boolean"


def test_a_loop_over_an_undefined_name_is_skipped_by_its_definedness_when_on_the_box(tmp_path: Path):
    """Ansible's executor keeps a loop's undefined-name error until the when is decided (without the item) and
    skips the task when it is false: the agent's runner does the same for a step and for an include's loop
    (robertdebock.users); a registered result says skipped. Before, the loop's error failed the run."""
    make_role(
        tmp_path,
        "t",
        {
            "tasks/each.yml": "- name: each\n  debug: {msg: '{{ group }}'}\n",
            "tasks/main.yml": """\
- name: guarded
  debug: {msg: "{{ item }}"}
  loop: "{{ maybe_groups }}"
  when: maybe_groups is defined
  register: guarded_result
- name: guarded include
  include_tasks: each.yml
  loop: "{{ maybe_groups }}"
  loop_control: {loop_var: group}
  when: maybe_groups is defined
- name: after
  debug: {msg: "{{ guarded_result.skipped }}"}
""",
        },
    )
    steps = _run_on_this_machine(compile_role(tmp_path, "t", "local", config_for(tmp_path)), tmp_path)
    assert [(s["name"], s["status"]) for s in steps] == [
        ("guarded", "skipped"),
        ("guarded include", "skipped"),
        ("after", "ok"),
    ], steps
    assert steps[-1]["msg"] is True or steps[-1]["msg"] == "True", steps[-1]


def test_unarchive_copy_false_names_a_file_on_the_box(tmp_path):
    """unarchive's older spelling of remote_src (copy: false / no) keeps src as written, as the box's path; without
    it a relative src is the role's file (found by geerlingguy.git: 'role//root/git.tar.gz' was not found)."""
    tasks = (
        '- unarchive: {src: "{{ workspace }}/git.tar.gz", dest: /opt, copy: false}\n'
        "- unarchive: src={{ workspace }}/other.tgz dest=/opt copy=no\n"
        "- unarchive: {src: app.tgz, dest: /opt}\n"
    )
    make_role(tmp_path, "t", {"tasks/main.yml": tasks, "defaults/main.yml": "workspace: /root\n", "files/app.tgz": ""})
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert [step["args"]["src"] for step in compiled.steps] == [
        "{{ workspace }}/git.tar.gz",
        "{{ workspace }}/other.tgz",
        "t/app.tgz",
    ]


def test_selinux_and_unsafe_writes_arguments_are_left_out_on_debian(tmp_path):
    """file, copy, template, lineinfile and blockinfile take Ansible's SELinux arguments and unsafe_writes as replace
    does: Debian runs without SELinux labels and kiln always writes through a temporary file (geerlingguy.mysql's
    `file: {setype: mysqld_log_t}` passed validate, then the box refused setype as unknown)."""
    common = "setype: mysqld_log_t, seuser: system_u, unsafe_writes: true"
    tasks = (
        f"- file: {{path: /var/log/x, state: touch, {common}}}\n"
        f"- copy: {{content: x, dest: /etc/x, {common}}}\n"
        f"- template: {{src: t.j2, dest: /etc/t, {common}}}\n"
        f"- lineinfile: {{path: /etc/x, line: z, {common}}}\n"
        f"- blockinfile: {{path: /etc/x, block: z, {common}}}\n"
    )
    make_role(tmp_path, "t", {"tasks/main.yml": tasks, "templates/t.j2": "t\n"})
    compiled = compile_role(tmp_path, "t", "local", config_for(tmp_path))
    assert all(not {"setype", "seuser", "unsafe_writes"} & set(step["args"]) for step in compiled.steps), compiled.steps


def test_a_templated_mode_of_an_ansible_role_is_read_as_ansible_reads_a_number(tmp_path):
    """Only an Ansible-layout step whose mode is a template is marked: the box reads a number it renders as the
    bits (geerlingguy.redis: 02770 in YAML 1.1 is 1528); kiln's own steps.yml keeps refusing numbers."""
    make_role(
        tmp_path,
        "t",
        {
            "tasks/main.yml": '- file: {path: /x, state: directory, mode: "{{ m }}"}\n'
            "- file: {path: /y, state: directory, mode: 0755}\n",
            "defaults/main.yml": "m: 02770\n",
        },
    )
    ansible_steps = compile_role(tmp_path, "t", "local", config_for(tmp_path)).steps
    assert [s.get("int_mode_is_bits", False) for s in ansible_steps] == [True, False]
    assert ansible_steps[1]["args"]["mode"] == "0755"
    make_role(
        tmp_path,
        "k",
        {
            "role.yml": "description: k\ndefaults:\n  m: '0640'\n",
            "steps.yml": '- file: {path: /x, state: directory, mode: "{{ m }}"}\n',
        },
    )
    assert "int_mode_is_bits" not in compile_role(tmp_path, "k", "local", config_for(tmp_path)).steps[0]
