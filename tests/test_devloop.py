"""The developer loop on a kept local instance: converge, change, converge, verify, destroy."""

from __future__ import annotations

import json
import re

import pytest

from tests.playbooks import invoke, make_playbooks

pytestmark = pytest.mark.slow

STEPS = """\
- name: first file
  copy: {content: "one\\n", dest: /etc/kiln-dev-1}
- name: second file
  copy: {content: "two\\n", dest: /etc/kiln-dev-2}
"""


def statuses(stderr: str) -> dict[str, str]:
    """step name -> status, from JSON log lines."""
    out = {}
    for line in stderr.splitlines():
        if line.startswith("{") and '"event": "step"' in line:
            e = json.loads(line)
            out[e["step"]] = e["status"]
    return out


def test_converge_applies_only_the_difference(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path, {"steps.yml": STEPS, "verify.yml": '- file: /etc/kiln-dev-2\n  contains: ["two"]\n'}, role="devloop"
    )
    env = {"KILN_JSON": "1"}
    try:
        first = invoke(tmp_path, "converge", "--role", "devloop", env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        assert statuses(first.stderr) == {"first file": "changed", "second file": "changed"}
        state = json.loads((tmp_path / "builds/dev/devloop.json").read_text())
        container = state["instance"]["id"]
        assert engine.container_exists(container)

        (playbooks / "roles/devloop/steps.yml").write_text(STEPS.replace("two", "TWO"))
        second = invoke(tmp_path, "converge", "--role", "devloop", env=env)
        assert second.returncode == 0, second.stderr[-2000:]
        assert statuses(second.stderr) == {"first file": "ok", "second file": "changed"}
        assert json.loads((tmp_path / "builds/dev/devloop.json").read_text())["instance"]["id"] == container
        assert engine.exec(container, "cat", "/etc/kiln-dev-2").strip() == "TWO"

        failing = invoke(tmp_path, "verify", "--role", "devloop", env=env)
        assert failing.returncode == 1 and "two" in failing.stderr
        (playbooks / "roles/devloop/verify.yml").write_text('- file: /etc/kiln-dev-2\n  contains: ["TWO"]\n')
        assert invoke(tmp_path, "verify", "--role", "devloop", env=env).returncode == 0
    finally:
        gone = invoke(tmp_path, "destroy", "--role", "devloop")
    assert gone.returncode == 0 and re.search(r"removed kiln-build-devloop-", gone.stdout), gone.stdout
    assert not engine.containers("kiln.role=devloop")
    assert not (tmp_path / "builds/dev/devloop.json").exists()
