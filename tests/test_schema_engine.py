"""One schema engine: the validator and the exported JSON Schema give the same verdict.

The JSON Schemas (step files, kiln.yaml) are judged by the ``jsonschema`` package, an
implementation kiln does not own; the validator's verdict is kiln's own ``invoke validate``
path (compile_role, load_config) on the same YAML text.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from agent.schema import Code, validate
from controller.config import CONFIG_SCHEMA, load_config
from controller.context import BakeOptions
from controller.model import InvalidInput
from controller.nightly import nightly
from controller.schema_export import CONFIG_DOC_PATH, config_markdown, config_schema, file_schema
from controller.stepfiles.compile import compile_role, list_roles
from controller.stepfiles.loader import load_text

ROOT = Path(__file__).resolve().parent.parent
ROLE_YML = "defaults:\n  n: 3\n"

STEPS = [
    ("delay: 0.5", "- command: echo\n  retries: 2\n  delay: 0.5\n"),
    ("delay: 1", "- command: echo\n  delay: 1\n"),
    ('delay: "1"', '- command: echo\n  delay: "1"\n'),
    ("delay: -1", "- command: echo\n  delay: -1\n"),
    ("delay templated", "- command: echo\n  delay: '{{ n }}'\n"),
    ('retries: "3"', '- command: echo\n  retries: "3"\n'),
    ("retries: 3", "- command: echo\n  retries: 3\n"),
    ("retries: 1.5", "- command: echo\n  retries: 1.5\n"),
    ("retries templated", "- command: echo\n  retries: '{{ n }}'\n"),
    ('ignore_errors: "yes"', '- command: echo\n  ignore_errors: "yes"\n'),
    ("ignore_errors: yes", "- command: echo\n  ignore_errors: yes\n"),
    ("ignore_errors: true", "- command: echo\n  ignore_errors: true\n"),
    ("no_log: 1", "- command: echo\n  no_log: 1\n"),
    ("timeout: 2.5", "- command: echo\n  timeout: 2.5\n"),
    ("timeout: 0", "- command: echo\n  timeout: 0\n"),
    ("timeout templated", "- command: echo\n  timeout: '{{ n }}'\n"),
    ("register: item", "- command: echo\n  register: item\n"),
    ("register: two words", "- command: echo\n  register: two words\n"),
    ("register: out", "- command: echo\n  register: out\n"),
    ('name: ""', '- command: echo\n  name: ""\n'),
    ("name: 5", "- command: echo\n  name: 5\n"),
    ("tags: [web, 1]", "- command: echo\n  tags: [web, 1]\n"),
    ("tags: {a: 1}", "- command: echo\n  tags: {a: 1}\n"),
    ("loop_control ok", "- command: echo {{ pkg }}\n  loop: [a]\n  loop_control: {loop_var: pkg}\n"),
    ("loop_control label", "- command: echo\n  loop: [a]\n  loop_control: {label: x}\n"),
    ("block with retries", "- block:\n    - command: echo\n  retries: 2\n"),
    ("block ok", "- block:\n    - command: echo\n  ignore_errors: true\n"),
    ("rescue: null", "- block:\n    - command: echo\n  rescue:\n"),
    ("flush_handlers: false", "- flush_handlers: false\n"),
    ("module alias for a required argument", "- file: {dest: /srv, state: directory}\n"),
    ("argument and its alias", "- file: {path: /srv, dest: /srv, state: directory}\n"),
    ("module bool as yes", "- file: {path: /srv, state: directory, recurse: yes}\n"),
    ("module unknown argument", "- file: {pth: /srv}\n"),
]
CONFIGS = [
    ("engnie: docker", "providers:\n  local:\n    engnie: docker\n"),
    ("engine: docker", "providers:\n  local:\n    engine: docker\n"),
    ("engine: 5", "providers:\n  local:\n    engine: 5\n"),
    ("local: null", "providers:\n  local:\n"),
    ("lokal", "providers:\n  lokal: {}\n"),
    ("aws: a list", "providers:\n  aws: [us-east-1]\n"),
    ("retention: 2", "retention: 2\n"),
    ("retention: true", "retention: true\n"),
    ("retention keep 0", "retention: {keep: 0}\n"),
    ("retention keep five", "retention: {keep: five}\n"),
    ("step_timeout: 0.5", "build: {step_timeout: 0.5}\n"),
    ("step_timeout: 0", "build: {step_timeout: 0}\n"),
    ("misses: 1.5", "build: {ssh_keepalive_misses: 1.5}\n"),
    ('test_image: "yes"', 'build: {test_image: "yes"}\n'),
    ("vars bad name", "vars: {bad-name: 1}\n"),
    ("vars facts", "vars: {facts: 1}\n"),
    ("vars ok", "vars: {greeting: hi, list: [1, 2]}\n"),
    ("empty", ""),
]


def _schema_verdict(schema: dict, text: str) -> bool:
    data = load_text(text, "case.yml").data
    return jsonschema.Draft202012Validator(schema).is_valid(data)


def _step_verdict(tmp_path: Path, text: str) -> bool:
    role = tmp_path / "roles" / "t"
    role.mkdir(parents=True)
    (role / "role.yml").write_text(ROLE_YML)
    (role / "steps.yml").write_text(text)
    try:
        compile_role(tmp_path, "t", "local", load_config(tmp_path / "kiln.yaml"))
    except InvalidInput:
        return False
    return True


def _config_verdict(tmp_path: Path, text: str) -> bool:
    (tmp_path / "kiln.yaml").write_text(text)
    try:
        load_config(tmp_path / "kiln.yaml")
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize("label, text", STEPS, ids=[c[0] for c in STEPS])
def test_the_validator_and_the_step_schema_agree(tmp_path: Path, label: str, text: str):
    assert _step_verdict(tmp_path, text) == _schema_verdict(file_schema("steps"), text), label


@pytest.mark.parametrize("label, text", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_the_validator_and_the_kiln_yaml_schema_agree(tmp_path: Path, label: str, text: str):
    assert _config_verdict(tmp_path, text) == _schema_verdict(config_schema(), text), label


def test_the_drifting_values_are_judged_one_way(tmp_path: Path):
    verdicts = {label: _step_verdict(tmp_path / label.replace(" ", "_"), text) for label, text in STEPS}
    assert verdicts["delay: 0.5"] is True
    assert verdicts['retries: "3"'] is False and verdicts['ignore_errors: "yes"'] is False


def test_a_misspelt_local_setting_is_refused_at_its_place(tmp_path: Path):
    path = tmp_path / "kiln.yaml"
    path.write_text("providers:\n  local:\n    engine: podman\n    engnie: docker\n")
    with pytest.raises(InvalidInput) as info:
        load_config(path)
    (found,) = info.value.diagnostics
    assert found.file.endswith("kiln.yaml") and (found.line, found.column) == (4, 5)
    assert found.message == "unknown providers.local setting 'engnie' (did you mean 'engine'?)"
    assert f"{found.file}:4:5: error:" in found.render()


def test_a_yaml11_boolean_keyword_says_what_to_write(tmp_path: Path):
    role = tmp_path / "roles" / "t"
    role.mkdir(parents=True)
    (role / "steps.yml").write_text("- command: echo\n  ignore_errors: yes\n")
    with pytest.raises(InvalidInput) as info:
        compile_role(tmp_path, "t", "local", load_config(tmp_path / "kiln.yaml"))
    (found,) = info.value.diagnostics
    assert (found.line, found.column) == (2, 18) and "write true" in found.message


def test_errors_carry_codes_and_nested_paths():
    _, errors = validate(CONFIG_SCHEMA, {"providers": {"local": {"engnie": "docker"}}, "retention": {"keep": 0}})
    by_code = {e.code: e for e in errors}
    assert by_code[Code.UNKNOWN_KEY].path == ("providers", "local", "engnie")
    assert by_code[Code.UNKNOWN_KEY].suggestion == "engine" and by_code[Code.UNKNOWN_KEY].at_key
    assert by_code[Code.BAD_VALUE].path == ("retention", "keep")
    _, errors = validate(
        {
            "args": {"a": {"type": "str"}, "b": {"type": "str"}},
            "mutually_exclusive": [["a", "b"]],
            "required_one_of": [["a", "b"]],
        },
        {"a": "x", "b": "y"},
    )
    assert [e.code for e in errors] == [Code.EXCLUSIVE] and errors[0].names == ("a", "b")


def test_the_kiln_yaml_reference_is_current():
    assert CONFIG_DOC_PATH.exists() and CONFIG_DOC_PATH.read_text() == config_markdown(), (
        "docs/kiln-yaml.md is stale: run `python -m controller.schema_export`"
    )
    for name in ("providers.local.engine", "providers.local.image_prefix", "build.step_timeout", "retention.keep"):
        assert f"| `{name}` |" in CONFIG_DOC_PATH.read_text()


def test_invoke_schema_config_writes_the_kiln_yaml_schema(tmp_path: Path):
    out = tmp_path / "kiln.schema.json"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "schema", "--config", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(out.read_text()) == config_schema()


def test_a_role_without_role_yml_is_one_nightly_bakes(tmp_path: Path, capsys):
    """validate and nightly see the same roles: an invalid role without role.yml stops the nightly (exit 2)."""
    role = tmp_path / "roles" / "plain"
    role.mkdir(parents=True)
    (role / "steps.yml").write_text("- comand: echo\n")
    assert list_roles(tmp_path) == ["plain"]
    code = nightly(None, "local", options=BakeOptions(playbooks_dir=tmp_path, builds_dir=tmp_path / "builds"))
    assert code == 2
    assert "roles/plain/steps.yml:1:3" in capsys.readouterr().out


def test_a_missing_roles_dir_is_invalid_input(tmp_path: Path, capsys):
    with pytest.raises(InvalidInput) as info:
        list_roles(tmp_path)
    assert "no roles directory" in info.value.diagnostics[0].message
    code = nightly(None, "local", options=BakeOptions(playbooks_dir=tmp_path, builds_dir=tmp_path / "builds"))
    assert code == 2 and "no roles directory" in capsys.readouterr().out
