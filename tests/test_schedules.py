"""The shipped schedules call the real nightly task, and parse."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
from ruamel.yaml import YAML

from tests.playbooks import REPO

EXAMPLES = REPO / "examples"


def nightly_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    return argv[argv.index(next(a for a in argv if a.endswith("invoke"))):]


def assert_calls_real_task(command: str) -> None:
    argv = nightly_argv(command)
    assert argv[1] == "nightly", argv
    proc = subprocess.run([str(REPO / ".venv/bin/invoke"), "-r", str(REPO), "--help", "nightly"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert flag in proc.stdout, f"{flag} is not an option of `invoke nightly`"


def test_systemd_unit_calls_nightly():
    unit = (EXAMPLES / "systemd/kiln-nightly.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    assert_calls_real_task(exec_start)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    for name in ("kiln-nightly.service", "kiln-nightly.timer"):
        text = (EXAMPLES / "systemd" / name).read_text().replace("/opt/kiln/.venv/bin/invoke", "/bin/true")
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "kiln-nightly.timer"),
                           str(tmp_path / "kiln-nightly.service")], capture_output=True, text=True)
    problems = [line for line in proc.stderr.splitlines() if "kiln-nightly" in line]
    assert not problems, proc.stderr


def test_cron_line_calls_nightly():
    line = next(x for x in (EXAMPLES / "cron").read_text().splitlines() if x and not x.startswith("#"))
    fields = line.split(None, 6)
    assert len(fields) == 7, "cron.d line: 5 time fields, user, command"
    command = fields[6].split("&&", 1)[1].split(">>")[0]
    assert_calls_real_task(command.replace("KILN_JSON=1", ""))


def test_workflow_parses_and_runs_nightly():
    workflow = YAML(typ="safe").load((EXAMPLES / "github/nightly.yml").read_text())
    assert workflow["on"]["schedule"][0]["cron"].count(" ") == 4
    runs = [s["run"] for s in workflow["jobs"]["nightly"]["steps"] if "run" in s]
    nightly = next(r for r in runs if " nightly" in r)
    assert_calls_real_task(nightly)
