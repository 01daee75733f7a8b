"""The shipped schedules call the real nightly task, and parse."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
from ruamel.yaml import YAML

from kiln.controller.nightly import Shard, parse_shard
from tests.playbooks import REPO

EXAMPLES = REPO / "examples"


def nightly_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    return argv[argv.index(next(a for a in argv if a.endswith("invoke"))) :]


def assert_calls_real_task(command: str, task: str = "nightly") -> list[str]:
    argv = nightly_argv(command)
    assert argv[1] == task, argv
    proc = subprocess.run(
        [str(REPO / ".venv/bin/invoke"), "-r", str(REPO), "--help", task], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for flag in (a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", proc.stdout), f"{flag} is not an option of `invoke {task}`"
    return argv


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_systemd_unit_calls_nightly():
    unit = (EXAMPLES / "systemd/kiln-nightly.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    assert_calls_real_task(exec_start)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    for name in ("kiln-nightly.service", "kiln-nightly.timer"):
        text = (EXAMPLES / "systemd" / name).read_text().replace("/opt/kiln/.venv/bin/invoke", "/bin/true")
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "kiln-nightly.timer"), str(tmp_path / "kiln-nightly.service")],
        capture_output=True,
        text=True,
    )
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


def test_github_matrix_runs_one_shard_per_job_then_merges_the_reports():
    workflow = YAML(typ="safe").load((EXAMPLES / "github/nightly-matrix.yml").read_text())
    assert workflow["on"]["schedule"][0]["cron"].count(" ") == 4
    job = workflow["jobs"]["nightly"]
    shards = job["strategy"]["matrix"]["shard"]
    assert job["strategy"]["fail-fast"] is False, "one failing shard must not cancel the others"
    command = next(s["run"] for s in job["steps"] if " nightly " in s.get("run", ""))
    seen = []
    for shard in shards:  # what GitHub expands for each job of the matrix
        expanded = (
            command.replace("${{ matrix.shard }}", str(shard))
            .replace("${{ strategy.job-total }}", str(len(shards)))
            .replace("${{ github.run_id }}", "4242")
        )
        argv = assert_calls_real_task(expanded)
        seen.append(parse_shard(flag_value(argv, "--shard")))
        assert flag_value(argv, "--run-id") == "4242" and flag_value(argv, "--provider") == "aws"
    assert seen == [Shard(k, len(shards)) for k in range(1, len(shards) + 1)], "every shard once"
    upload = next(s for s in job["steps"] if "upload-artifact" in s.get("uses", ""))
    assert "${{ matrix.shard }}" in upload["with"]["name"], "one artifact per shard (names must differ)"

    report = workflow["jobs"]["report"]
    assert report["needs"] == "nightly" and report["if"] == "always()"
    download = next(s for s in report["steps"] if "download-artifact" in s.get("uses", ""))
    merge = next(s["run"] for s in report["steps"] if "nightly-report" in s.get("run", ""))
    argv = assert_calls_real_task(merge.replace("${{ github.run_id }}", "4242"), task="nightly-report")
    assert flag_value(argv, "--dir") == download["with"]["path"] and flag_value(argv, "--run-id") == "4242"


def test_kubernetes_cronjob_is_an_indexed_job_of_n_shards():
    cronjob = YAML(typ="safe").load((EXAMPLES / "kubernetes/kiln-nightly-cronjob.yaml").read_text())
    assert (cronjob["apiVersion"], cronjob["kind"]) == ("batch/v1", "CronJob")
    assert cronjob["spec"]["schedule"].count(" ") == 4 and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    count = job["parallelism"]
    assert job["completions"] == count > 1 and job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # what a podFailurePolicy requires
    container = pod["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    command = script.split(";", 1)[0]
    shards = []
    for index in range(count):  # the real shell expands what each pod runs
        proc = subprocess.run(
            ["/bin/sh", "-c", f'set -- {command}; printf "%s\\n" "$@"'],
            capture_output=True,
            text=True,
            env={"JOB_COMPLETION_INDEX": str(index), "RUN_ID": "kiln-nightly-29"},
        )
        assert proc.returncode == 0, proc.stderr
        argv = proc.stdout.splitlines()
        assert_calls_real_task(shlex.join(argv))
        shards.append(parse_shard(flag_value(argv, "--shard")))
        assert flag_value(argv, "--run-id") == "kiln-nightly-29"
        assert flag_value(argv, "--runner") == f"shard-{index + 1}"
    assert shards == [Shard(k, count) for k in range(1, count + 1)], "every shard once, N = parallelism"
    env = {e["name"]: e for e in container["env"]}
    assert "batch.kubernetes.io/job-name" in env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert script.rstrip().endswith("exit $code"), "the pod's status is the nightly's"
