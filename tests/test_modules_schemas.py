"""Fast checks of every module's and check's declarative SCHEMA, and of Python 3.9 support.

No container needed: the schemas are plain data, and the agent zipapp is run with a
Python 3.9 interpreter when one is installed (the oldest Python the agent supports).
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess

import pytest
from ruamel.yaml import YAML

from kiln.agent import checks as checks_pkg
from kiln.agent import modules as modules_pkg
from kiln.agent import schema as argschema

MODULES = modules_pkg.discover()
CHECKS = checks_pkg.discover()
SPEC_KEYS = {"type", "required", "default", "choices", "aliases", "description", "elements", "relative", "strict_list"}


def _all() -> list[tuple[str, str, object]]:
    return [("module", n, m) for n, m in MODULES.items()] + [("check", n, m) for n, m in CHECKS.items()]


@pytest.mark.parametrize("kind, name, mod", _all(), ids=[f"{k}-{n}" for k, n, _ in _all()])
def test_schema_is_well_formed(kind, name, mod):
    schema = mod.SCHEMA
    assert schema["description"] and schema["example"]
    args = schema["args"]
    for arg, spec in args.items():
        assert set(spec) <= SPEC_KEYS, (arg, set(spec) - SPEC_KEYS)
        assert spec.get("type", "str") in argschema.TYPES, arg
        assert spec.get("description"), f"{name}.{arg} has no description"
        if "default" in spec and "choices" in spec:
            assert spec["default"] in spec["choices"], arg
        if "default" in spec:
            _, errors = argschema.validate({"args": {arg: spec}}, {arg: spec["default"]})
            assert not errors, (arg, errors)
    named = {a for group in schema.get("mutually_exclusive", []) + schema.get("required_one_of", []) for a in group}
    named |= {k for k, _, needed in schema.get("required_if", [])} | {
        n for _, _, needed in schema.get("required_if", []) for n in needed
    }
    assert named <= set(args), named - set(args)
    if kind == "module":
        assert schema["check_mode"] in ("full", "none")
        assert isinstance(schema["diff"], bool)
        assert callable(mod.check) and callable(mod.apply)
    else:
        assert schema["free_form"] in args
        assert callable(mod.probe)
    argschema.json_schema(schema)


@pytest.mark.parametrize("kind, name, mod", _all(), ids=[f"{k}-{n}" for k, n, _ in _all()])
def test_example_validates(kind, name, mod):
    items = YAML(typ="safe").load(io.StringIO(mod.SCHEMA["example"]))
    found = [item[name] for item in items if name in item]
    assert found, f"the example does not use {name}"
    for args in found:
        _, errors = argschema.validate(mod.SCHEMA, args)
        assert not errors, errors


def _python39() -> str | None:
    found = shutil.which("python3.9")
    candidates = [found] if found else []
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for path in candidates:
        if path and subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            return path
    return None


@pytest.fixture
def python39_agent(tmp_path):
    """A Python 3.9 interpreter and the agent zipapp at tmp_path/agent.pyz (the test skips without 3.9)."""
    python = _python39()
    if python is None:
        pytest.skip("no python3.9 here")
    from kiln.controller.agent_build import agent_zipapp

    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(agent_zipapp())
    return python, pyz


def test_agent_runs_on_python39(python39_agent):
    python, pyz = python39_agent
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import agent.modules, agent.checks, agent.runner, agent.verify, agent.facts\n"
        "mods, chks = agent.modules.discover(), agent.checks.discover()\n"
        "print(len(mods), len(chks))\n"
    )
    done = subprocess.run([python, "-c", code, str(pyz)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(MODULES)), str(len(CHECKS))]
    facts = subprocess.run([python, str(pyz), "facts"], capture_output=True, text=True)
    assert facts.returncode == 0 and '"event": "facts"' in facts.stdout, facts.stderr


def test_file_modules_apply_on_python39(python39_agent, tmp_path):
    """The file-editing modules run end to end under Python 3.9 (on this host, inside tmp_path)."""
    import io as _io
    import json
    import tarfile

    python, pyz = python39_agent
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    (bundle / "files" / "r").mkdir(parents=True)
    (bundle / "templates" / "r").mkdir(parents=True)
    out.mkdir()
    (bundle / "files" / "r" / "a.txt").write_text("a\n")
    (bundle / "templates" / "r" / "t.j2").write_text("x={{ x }} os={{ facts.os_family }}\n")
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("d/f")
        info.size = 2
        tar.addfile(info, _io.BytesIO(b"f\n"))
    (bundle / "files" / "r" / "t.tgz").write_bytes(buf.getvalue())
    steps = [
        {"module": "copy", "args": {"src": "r/a.txt", "dest": f"{out}/a.txt", "mode": "0600"}},
        {"module": "copy", "args": {"content": "c\n", "dest": f"{out}/c.txt"}},
        {"module": "template", "args": {"src": "r/t.j2", "dest": f"{out}/t"}},
        {"module": "line_in_file", "args": {"path": f"{out}/l.txt", "line": "b", "create": True}},
        {"module": "line_in_file", "args": {"path": f"{out}/l.txt", "line": "a", "insertbefore": "BOF"}},
        {"module": "block_in_file", "args": {"path": f"{out}/b.txt", "block": "k=v", "create": True}},
        {"module": "unarchive", "args": {"src": "r/t.tgz", "dest": str(out)}},
        {
            "module": "sysctl",
            "args": {"name": "net.ipv4.ip_forward", "value": "1", "reload": False, "sysctl_file": f"{out}/sysctl.conf"},
        },
    ]
    for i, step in enumerate(steps, 1):
        step.update(index=i, name=f"step {i}")
    (bundle / "bundle.json").write_text(json.dumps({"steps": steps, "handlers": [], "vars": {"x": 1}}))

    def run() -> list[str]:
        done = subprocess.run([python, str(pyz), "apply", str(bundle)], capture_output=True, text=True)
        events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        steps_seen = [e for e in events if e["event"] == "step"]
        assert done.returncode == 0, (done.stderr, steps_seen)
        return [e["status"] for e in steps_seen]

    assert run() == ["changed"] * len(steps)
    assert run() == ["ok"] * len(steps)
    assert (out / "l.txt").read_text() == "a\nb\n"
    assert (out / "t").read_text().startswith("x=1 os=")
    assert (out / "d" / "f").read_text() == "f\n"
