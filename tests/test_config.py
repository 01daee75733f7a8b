"""playbooks/kiln.yaml: defaults, values, and every problem at its file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.controller.config import DEFAULT_KEEP, Config, load_config
from kiln.controller.model import InvalidInput

ROOT = Path(__file__).resolve().parent.parent


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "kiln.yaml"
    path.write_text(text)
    return load_config(path)


def errors(tmp_path: Path, text: str) -> list:
    with pytest.raises(InvalidInput) as info:
        load(tmp_path, text)
    return info.value.diagnostics


def test_missing_file_is_the_default_config(tmp_path: Path):
    config = load_config(tmp_path / "kiln.yaml")
    assert config.vars == {} and config.retention == DEFAULT_KEEP == 5
    assert config.providers == {"local": {}, "aws": {}}
    diag = config.diagnostic(("providers", "aws"), "x")
    assert (diag.line, diag.column) == (1, 1)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_the_default_config(tmp_path: Path, text: str):
    config = load(tmp_path, text)
    assert config.retention == 5 and config.vars == {}


def test_shipped_config():
    config = load_config(ROOT / "playbooks" / "kiln.yaml")
    assert config.providers["local"] == {"engine": "auto", "runtime": "auto"}
    assert config.providers["aws"]["regions"] == ["us-east-1", "eu-west-1"]
    assert config.retention == 5
    assert config.vars == {}
    diag = config.diagnostic(("providers", "aws", "regions", 1), "x")
    assert "eu-west-1" in (ROOT / "playbooks/kiln.yaml").read_text().splitlines()[diag.line - 1][diag.column - 1 :]


def test_values_and_positions(tmp_path: Path):
    config = load(
        tmp_path,
        "providers:\n  aws:\n    regions: [us-east-1]\n    instance_type: t3.small\n"
        "retention: {keep: 3}\nvars:\n  greeting: hi\n",
    )
    assert config.providers["aws"] == {"regions": ["us-east-1"], "instance_type": "t3.small"}
    assert config.providers["local"] == {}
    assert config.retention == 3 and config.vars == {"greeting": "hi"}
    diag = config.diagnostic(("providers", "aws", "instance_type"), "no such instance type")
    assert (diag.line, diag.column) == (4, 20) and diag.file.endswith("kiln.yaml")
    assert "t3.small" in diag.render()
    assert config.provider("aws")["regions"] == ["us-east-1"]


def test_retention_as_a_number(tmp_path: Path):
    assert load(tmp_path, "retention: 2\n").retention == 2


def test_null_provider_section_is_empty(tmp_path: Path):
    assert load(tmp_path, "providers:\n  local:\n").providers["local"] == {}


def test_every_problem_at_once(tmp_path: Path):
    found = errors(
        tmp_path,
        """\
provider:
  local: {}
providers:
  lokal: {}
  aws: [us-east-1]
retention:
  keep: 0
  max: 3
vars:
  bad-name: 1
  facts: 2
""",
    )
    got = [(d.line, d.column, d.message) for d in found]
    assert len(got) == 7, got
    assert (1, 1, "unknown setting 'provider' (did you mean 'providers'?)") in got
    assert (4, 3, "unknown provider 'lokal' (did you mean 'local'?)") in got
    assert any(line == 5 and col == 8 and "providers.aws must be a mapping" in m for line, col, m in got)
    assert any(line == 7 and col == 9 and "retention.keep must be a whole number >= 1" in m for line, col, m in got)
    assert any(line == 8 and col == 3 and "unknown retention setting 'max'" in m for line, col, m in got)
    assert any(line == 10 and col == 3 and "not an identifier" in m for line, col, m in got)
    assert any(line == 11 and col == 3 and "'facts' is reserved" in m for line, col, m in got)


@pytest.mark.parametrize(
    "text, where, message",
    [
        ("providers: [local]\n", (1, 12), "providers must be a mapping"),
        ("- a\n- b\n", (1, 1), "kiln.yaml must be a mapping"),
        ("retention: {keep: five}\n", (1, 19), "retention.keep must be a whole number"),
        ("retention: true\n", (1, 12), "retention must be a mapping"),
        ("vars: [a]\n", (1, 7), "vars must be a mapping"),
        ("providers:\n  aws: {regions: [us-east-1}\n", (2, 28), "YAML syntax error"),
        ("vars: {a: 1, a: 2}\n", (1, 14), "duplicate key 'a'"),
        ("build: {ssh_timeot: 30}\n", (1, 9), "unknown build setting 'ssh_timeot' (did you mean 'ssh_timeout'?)"),
        ("build: {deadline_hours: -1}\n", (1, 25), "build.deadline_hours must be a positive number"),
        ("build: {ssh_timeout: soon}\n", (1, 22), "build.ssh_timeout must be a positive number, got a string"),
    ],
)
def test_single_problems(tmp_path: Path, text: str, where: tuple[int, int], message: str):
    found = errors(tmp_path, text)
    assert len(found) == 1, [d.render() for d in found]
    assert (found[0].line, found[0].column) == where and message in found[0].message, found[0].render()


def test_build_settings_reach_the_bake(tmp_path: Path):
    """build.ssh_timeout and build.deadline_hours: the SSH wait and when temporaries expire."""
    import datetime as dt

    from kiln.controller.bake import with_build_settings
    from kiln.controller.context import BakeContext, BakeOptions

    config = load(tmp_path, "build:\n  ssh_timeout: 45\n  deadline_hours: 1.5\n")
    assert (config.ssh_timeout, config.deadline_hours) == (45.0, 1.5)
    options = with_build_settings(BakeOptions(), config)
    assert options.ssh_timeout == 45.0
    ctx = BakeContext(role="r", compiled=None, provider=None, options=options, build_id="b")
    assert ctx.expires - ctx.started == dt.timedelta(hours=1.5)
    assert load(tmp_path, "vars: {}\n").deadline_hours == 3.0


def test_kiln_yaml_declares_the_providers_the_registry_names():
    """A provider is registered once (controller/providers/__init__.py); kiln.yaml's schema follows."""
    from kiln.controller.config import CONFIG_SCHEMA, PROVIDERS
    from kiln.controller.providers import REGISTRY

    sections = CONFIG_SCHEMA["args"]["providers"]["args"]
    assert PROVIDERS == tuple(REGISTRY) == tuple(sections)
    for name, registration in REGISTRY.items():
        assert sections[name] is registration.settings_section(), name
