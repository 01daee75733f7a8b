"""The compile cache (converge's and the bake's): read back while the role is unchanged, never holding secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kiln.controller.stepfiles.compile_cache import CompileCache, compile_cached
from tests.playbooks import REPO, make_playbooks

SECRET = "Zq-cache-s3cret-41"

NO_LOG_ROLE = {
    "steps.yml": (
        "- name: credentials\n"
        '  copy: {content: "password={{ db_password }}\\n", dest: /etc/kiln-app.conf, mode: "0600"}\n'
        "  no_log: true\n"
    )
}
PLAIN_ROLE = {"steps.yml": '- name: marker\n  copy: {content: "x\\n", dest: /etc/kiln-marker, mode: "0644"}\n'}


def settled(root: Path) -> None:
    """Every file older than the cache's settling window (a file written just now is not trusted whole)."""
    past = time.time() - 10
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), (past, past))


def compile_twice(tmp_path: Path, role: str, files: dict, overrides: dict) -> tuple[bool, bool, Path]:
    playbooks = make_playbooks(tmp_path, files, role=role)
    settled(playbooks)
    cache = CompileCache(tmp_path / "builds" / "cache" / "compile")
    hits = []
    for _ in range(2):
        _, compiled, hit = compile_cached(
            cache, playbooks, role, "local", overrides, None, None, False, False, summarize=lambda config: None
        )
        hits.append(hit)
    return hits[0], hits[1], cache.directory


def test_a_role_with_secrets_is_never_written_to_the_cache(tmp_path):
    first, second, directory = compile_twice(tmp_path, "secrets", NO_LOG_ROLE, {"db_password": SECRET})
    assert not first and not second, "a role using no_log values is compiled every time"
    for path in directory.rglob("*") if directory.exists() else []:
        assert SECRET.encode() not in path.read_bytes(), f"{path} holds the secret"


def test_an_unchanged_role_is_read_back_and_a_changed_one_compiled_again(tmp_path):
    first, second, directory = compile_twice(tmp_path, "plain", PLAIN_ROLE, {})
    assert (first, second) == (False, True)
    steps = tmp_path / "playbooks" / "roles" / "plain" / "steps.yml"
    steps.write_text(PLAIN_ROLE["steps.yml"].replace("x\\n", "y\\n"))
    settled(tmp_path / "playbooks")
    cache = CompileCache(directory)
    _, compiled, hit = compile_cached(
        cache, tmp_path / "playbooks", "plain", "local", {}, None, None, False, False, summarize=lambda config: None
    )
    assert not hit and compiled.steps[0]["args"]["content"] == "y\n", "a changed step file is compiled again"


def test_the_compile_names_the_agent_s_modules_and_checks_as_discover_does():
    """The compile imports a module or a check when a step names it; by name, the same ones as the agent's own
    discover() (a file without a leading underscore that has a SCHEMA), the same module objects."""
    from kiln.agent.checks import discover as discover_checks
    from kiln.agent.modules import discover as discover_modules
    from kiln.controller.stepfiles.compile import agent_checks_by_name, agent_modules_by_name

    assert dict(agent_modules_by_name()) == discover_modules()
    assert dict(agent_checks_by_name()) == discover_checks()
    assert "apt" in agent_modules_by_name() and "_results" not in agent_modules_by_name()
    assert "no_such_module" not in agent_modules_by_name()


def test_a_cold_compile_of_web_loads_only_what_the_role_uses():
    """A fresh interpreter compiling web (a bake's start-up) imports the agent modules and checks its steps and
    checks name, no other; no cryptography (only a !vault value needs it), no urllib.request (only running an http
    check does)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kiln.controller.config import load_config\n"
        "from kiln.controller.stepfiles.compile import compile_role\n"
        "playbooks = Path(sys.argv[1])\n"
        "compile_role(playbooks, 'web', 'local', load_config(playbooks / 'kiln.yaml'))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('kiln.agent.modules.', 'kiln.agent.checks.')))))\n"
        "print('cryptography' in sys.modules, 'urllib.request' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "playbooks")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded, heavy = proc.stdout.splitlines()
    modules = {"copy", "file", "package", "service", "template"}
    checks = {"command", "http", "package", "port", "service"}
    expected = {f"kiln.agent.modules.{m}" for m in modules} | {f"kiln.agent.checks.{c}" for c in checks}
    assert set(loaded.split()) == expected
    assert heavy == "False False", "cryptography, urllib.request: loaded by a compile that uses neither"
