"""The test stage: a fresh machine from the new image runs the checks before the image is published.

Locally a container from the committed image, in the sandbox an instance moto launches from the new AMI
(a local container of the AMI's image), both through the real command line. The role writes a file in
/run (a tmpfs: it never reaches the image), so its check passes on the build machine and fails on a
fresh one.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from kiln.controller.agent_build import agent_zipapp
from kiln.controller.bake import stages_for
from kiln.controller.config import load_config
from kiln.controller.context import BakeOptions
from kiln.controller.model import InvalidInput
from kiln.controller.remote import controller_compiled
from kiln.controller.sandbox import sandbox_client
from kiln.controller.stepfiles.compile import compile_role
from tests.aws_harness import AL2023
from tests.playbooks import build_ids, image_repo, invoke, kill9_bake, left_behind, make_playbooks

IN_RUN_STEPS = """\
- name: ready marker (in /run, a tmpfs)
  copy: {content: "ready\\n", dest: /run/kiln-ready}
- name: a file in /etc, kept in the image
  copy: {content: "kept\\n", dest: /etc/kiln-kept}
- name: scratch in /tmp (cleaning empties it)
  copy: {content: "scratch\\n", dest: /tmp/kiln-scratch}
"""
IN_RUN_CHECK = "- file: /run/kiln-ready\n  name: ready marker\n"
BUILD_ONLY_CHECK = IN_RUN_CHECK + "  on: build\n"
GOOD_CHECKS = """\
- file: /etc/kiln-kept
  contains: [kept]
- name: scratch gone from the image
  file: {path: /tmp/kiln-scratch, exists: false}
  on: image
- name: scratch there on the build machine
  file: /tmp/kiln-scratch
  on: build
"""
KEPT_CHECK = "- file: /etc/kiln-kept\n  contains: [kept]\n"
FRESH = "on a fresh machine from the image"


def events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def checks_by_machine(output: str) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for event in events(output):
        if event.get("event") == "check":
            found.setdefault(event["machine"], []).append((event["check"], event["status"]))
    return found


def stages_run(output: str) -> list[str]:
    return [e["stage"] for e in events(output) if e.get("event") == "stage"]


def latest_id(engine, role: str) -> str:
    ref = f"{image_repo(role)}:latest"
    return engine.image_id(ref) if engine.image_exists(ref) else ""


def bake_local(tmp_path: Path, *flags: str):
    return invoke(tmp_path, "bake", "--role", "fresh", *flags, env={"KILN_JSON": "1"})


# --- input: the check's on: key, build.test_image ----------------------------------------------
def compiled_checks(playbooks: Path, role: str) -> list[dict]:
    return compile_role(playbooks, role, "local", load_config(playbooks / "kiln.yaml")).checks


def test_on_says_where_a_check_runs(tmp_path):
    verify = "- file: /a\n  on: build\n- file: /b\n  on: image\n- file: /c\n- file: /d\n  on: both\n"
    playbooks = make_playbooks(tmp_path, {"steps.yml": "", "verify.yml": verify}, role="where")
    checks = compiled_checks(playbooks, "where")
    assert [c.get("on", "both") for c in checks] == ["build", "image", "both", "both"]
    assert [c["args"] for c in checks] == [{"path": p} for p in ("/a", "/b", "/c", "/d")], "on is not an attribute"


@pytest.mark.parametrize(
    "value, message",
    [
        ("imag", "on must be one of both, build, image, got 'imag' (did you mean 'image'?)"),
        ("[build]", "got ['build']"),
    ],
)
def test_a_bad_on_is_invalid_input_at_its_value(tmp_path, value, message):
    verify = f"- file: /etc/hostname\n  on: {value}\n"
    playbooks = make_playbooks(tmp_path, {"steps.yml": "", "verify.yml": verify}, role="badon")
    with pytest.raises(InvalidInput) as info:
        compiled_checks(playbooks, "badon")
    (found,) = info.value.diagnostics
    assert found.file.endswith("roles/badon/verify.yml") and (found.line, found.column) == (2, 7)
    assert message in found.message


def test_build_test_image_is_a_boolean_defaulting_on(tmp_path):
    path = tmp_path / "kiln.yaml"
    assert load_config(path).test_image is True
    path.write_text("build:\n  test_image: false\n")
    assert load_config(path).test_image is False
    path.write_text("build:\n  test_image: 0\n")
    with pytest.raises(InvalidInput) as info:
        load_config(path)
    (found,) = info.value.diagnostics
    assert (found.line, found.column) == (2, 15) and "build.test_image must be true or false, got 0" in found.message


def test_the_test_stage_sits_between_snapshot_and_publish_unless_turned_off():
    names = [s.name for s in stages_for(BakeOptions(), 3)]
    assert names[names.index("snapshot") + 1 : names.index("publish")] == ["test image"]
    assert "test image" not in [s.name for s in stages_for(BakeOptions(test_image=False), 3)]


# --- local -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_check_only_the_build_machine_passes_fails_the_bake_and_removes_the_image(engine, tmp_path):
    """on: build lets the /run check pass; the same check run on the fresh machine too fails the bake:
    exit 1, the check named as failed on the fresh machine, no image, no container, latest unmoved."""
    make_playbooks(tmp_path, {"steps.yml": IN_RUN_STEPS, "verify.yml": BUILD_ONLY_CHECK}, role="fresh")
    good = bake_local(tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "test image" in stages_run(good.stderr)
    latest = latest_id(engine, "fresh")
    assert latest, "the on: build bake published"
    images_before = {row["Id"] for row in engine.images(image_repo("fresh"))}

    (tmp_path / "playbooks" / "roles" / "fresh" / "verify.yml").write_text(IN_RUN_CHECK)
    bad = bake_local(tmp_path)
    assert bad.returncode == 1, bad.stderr[-3000:]
    failure = next(e for e in events(bad.stderr) if e.get("event") == "bake failed")
    assert failure["stage"] == "test image"
    assert "ready marker" in failure["error"] and FRESH in failure["error"], failure
    assert ("ready marker", "passed") in checks_by_machine(bad.stderr)["build"]
    assert ("ready marker", "failed") in checks_by_machine(bad.stderr)["image"]
    assert not left_behind(engine, bad.stderr), "the build or the test container was left behind"
    assert {row["Id"] for row in engine.images(image_repo("fresh"))} == images_before, "the image was not removed"
    assert latest_id(engine, "fresh") == latest, "latest moved"
    assert not list((tmp_path / "state" / "versions" / "fresh").iterdir()), "the build record was not released"


@pytest.mark.slow
def test_no_test_skips_the_stage(engine, tmp_path):
    make_playbooks(tmp_path, {"steps.yml": IN_RUN_STEPS, "verify.yml": IN_RUN_CHECK}, role="fresh")
    proc = bake_local(tmp_path, "--no-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test image" not in stages_run(proc.stderr)
    assert "image" not in checks_by_machine(proc.stderr)
    assert not left_behind(engine, proc.stderr)


@pytest.mark.slow
def test_build_test_image_false_in_kiln_yaml_skips_the_stage(engine, tmp_path):
    make_playbooks(
        tmp_path,
        {"steps.yml": IN_RUN_STEPS, "verify.yml": IN_RUN_CHECK},
        role="fresh",
        kiln_yaml="build:\n  test_image: false\n",
    )
    proc = bake_local(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test image" not in stages_run(proc.stderr)


@pytest.mark.slow
def test_a_good_role_passes_its_checks_on_the_fresh_machine(engine, tmp_path):
    """The fresh machine really ran the checks: on: image ones there only, on: build ones on the build
    machine only (each would fail on the other), and it is gone afterwards."""
    make_playbooks(tmp_path, {"steps.yml": IN_RUN_STEPS, "verify.yml": GOOD_CHECKS}, role="fresh")
    proc = bake_local(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = checks_by_machine(proc.stderr)
    assert ran["build"] == [("file /etc/kiln-kept", "passed"), ("scratch there on the build machine", "passed")]
    assert ran["image"] == [("file /etc/kiln-kept", "passed"), ("scratch gone from the image", "passed")]
    machine = next(e for e in events(proc.stderr) if e.get("event") == "test machine")
    build_id = build_ids(proc.stderr)[0]
    assert machine["instance"] == f"kiln-test-fresh-{build_id}"
    assert not engine.container_exists(machine["instance"]), "the test machine was not removed"
    # its python is the build machine's, which runs the controller's byte code: the agent's source stays behind
    tested = next(e for e in events(proc.stderr) if e.get("event") == "image tested")
    assert tested["round_trips"] == 1, tested
    assert tested["bytes_sent"] < len(zlib.compress(controller_compiled(), 1)) + 50_000, tested
    assert latest_id(engine, "fresh")
    version = next(e["version"] for e in events(proc.stderr) if e.get("event") == "version")
    recorded = json.loads((tmp_path / "builds" / "images.json").read_text())["fresh"][version]["local"]["x86_64"]
    assert engine.image_id(f"{image_repo('fresh')}:{version}").startswith(recorded.removeprefix("sha256:")[:12])


#: a verify run of one ``file`` check (the agent as it runs on a box: the zipapp), then the check kinds it loaded
ONE_KIND_RUN = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from agent.verify import run_checks
check = {"check": "file", "args": {"path": "/", "exists": True}, "name": "root", "source": "v:1", "role": "r"}
assert run_checks([check], {}, lambda event: None, {})
print(json.dumps(sorted(name for name in sys.modules if name.startswith("agent.checks."))))
"""


def test_a_verify_run_loads_only_the_check_kinds_it_uses(tmp_path):
    """Both machines start the agent for their checks: a run imports the kinds its checks name, not all nine."""
    import subprocess
    import sys

    zipapp = tmp_path / "agent.pyz"
    zipapp.write_bytes(agent_zipapp())
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", ONE_KIND_RUN, str(zipapp)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == ["agent.checks.file"]


# --- the sandbox -----------------------------------------------------------------------------
SANDBOX_ROLE = f"description: the test stage in the sandbox\nbase:\n  aws: {{ssm_parameter: {AL2023}}}\n"
SANDBOX_KILN_YAML = "providers:\n  aws:\n    regions: [us-east-1]\nretention:\n  keep: 3\n"


def bake_sandbox(work: Path, url: str, role: str, *flags: str):
    return invoke(
        work,
        "bake",
        "--role",
        role,
        "--provider",
        "aws",
        "--sandbox",
        *flags,
        env={"KILN_JSON": "1", "AWS_ENDPOINT_URL": url},
        timeout=600,
    )


def amis_of(url: str, role: str) -> list[str]:
    ec2 = sandbox_client("ec2", "us-east-1", url)
    rows = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:kiln:role", "Values": [role]}])["Images"]
    return sorted(i["ImageId"] for i in rows)


def sandbox_latest(url: str, role: str) -> str:
    ssm = sandbox_client("ssm", "us-east-1", url)
    found = ssm.get_parameters(Names=[f"/kiln/{role}/latest"])["Parameters"]
    return found[0]["Value"] if found else ""


def temporaries_of(url: str, build_id: str) -> dict[str, list[str]]:
    ec2 = sandbox_client("ec2", "us-east-1", url)
    by_build = [{"Name": "tag:kiln:build-id", "Values": [build_id]}]
    live = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    return {
        "instances": [
            i["InstanceId"]
            for r in ec2.describe_instances(Filters=by_build + live)["Reservations"]
            for i in r["Instances"]
        ],
        "key pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=by_build)["KeyPairs"]],
        "groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=by_build)["SecurityGroups"]],
    }


@pytest.mark.slow
def test_sandbox_fresh_instance_from_the_new_ami_fails_the_bake_and_the_ami_goes(sandbox_env, engine, tmp_path):
    url = sandbox_env
    make_playbooks(
        tmp_path,
        {"role.yml": SANDBOX_ROLE, "steps.yml": IN_RUN_STEPS, "verify.yml": BUILD_ONLY_CHECK + KEPT_CHECK},
        role="freshaws",
        kiln_yaml=SANDBOX_KILN_YAML,
    )
    good = bake_sandbox(tmp_path, url, "freshaws")
    assert good.returncode == 0, good.stderr[-4000:]
    latest, amis = sandbox_latest(url, "freshaws"), amis_of(url, "freshaws")
    assert latest and latest in amis
    machine = next(e for e in events(good.stderr) if e.get("event") == "test machine")
    assert machine["instance"].startswith("i-") and machine["image"] == f"kiln-freshaws-{good_version(good)}"
    assert checks_by_machine(good.stderr)["image"] == [("file /etc/kiln-kept", "passed")], "on: build ran there"
    pinned = [e["instance"] for e in events(good.stderr) if e.get("event") == "host key fingerprints from the console"]
    assert machine["instance"] in pinned and len(pinned) == 2, "the test instance's host key was not pinned"

    (tmp_path / "playbooks" / "roles" / "freshaws" / "verify.yml").write_text(IN_RUN_CHECK)
    bad = bake_sandbox(tmp_path, url, "freshaws")
    assert bad.returncode == 1, bad.stderr[-4000:]
    failure = next(e for e in events(bad.stderr) if e.get("event") == "bake failed")
    assert failure["stage"] == "test image" and FRESH in failure["error"] and "ready marker" in failure["error"]
    assert ("ready marker", "failed") in checks_by_machine(bad.stderr)["image"]
    build_id = build_ids(bad.stderr)[-1]
    assert amis_of(url, "freshaws") == amis, "the new AMI was not removed"
    assert sandbox_latest(url, "freshaws") == latest, "latest moved"
    assert not any(temporaries_of(url, build_id).values()), temporaries_of(url, build_id)
    assert not engine.containers(f"kiln.build-id={build_id}"), "an instance container was left behind"
    ec2 = sandbox_client("ec2", "us-east-1", url)
    snapshots = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:kiln:build-id", "Values": [build_id]}]
    )["Snapshots"]
    assert not snapshots, "the AMI's snapshots were not deleted"


def good_version(proc) -> str:
    return next(e["version"] for e in events(proc.stderr) if e.get("event") == "version")


# --- kill -9 while the test machine runs: sweep removes it with the rest of the build ------------
def kill9_at_test_machine(work: Path, argv: list[str], env: dict) -> dict[str, str]:
    return kill9_bake(work, argv, env, lambda event: event.get("event") == "test machine")


@pytest.mark.slow
def test_kill9_while_the_local_test_machine_runs_then_sweep_removes_it_and_the_image(engine, tmp_path):
    from tests.test_trust_local import leftovers

    make_playbooks(tmp_path, {"steps.yml": IN_RUN_STEPS, "verify.yml": KEPT_CHECK}, role="freshkill")
    env = {**os.environ, "KILN_JSON": "1", "CI": "", "KILN_STATE_DIR": str(tmp_path / "state")}
    seen = kill9_at_test_machine(tmp_path, ["--role", "freshkill"], env)
    left = leftovers(engine, tmp_path, "freshkill", seen["build_id"], seen["version"])
    assert f"container {seen['instance']}" in left and any(x.startswith("image") for x in left), left

    swept = invoke(tmp_path, "sweep", "--apply")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert f"container {seen['instance']} of build {seen['build_id']}" in swept.stdout, swept.stdout
    assert leftovers(engine, tmp_path, "freshkill", seen["build_id"], seen["version"]) == [], swept.stdout


@pytest.mark.slow
def test_kill9_while_the_sandbox_test_instance_runs_then_sweep_removes_everything(sandbox_env, engine, tmp_path):
    from tests.test_aws_sandbox import leftovers, nothing_left
    from tests.test_trust_aws import KILL_YAML, kill_env, sweep_after_deadline

    make_playbooks(
        tmp_path,
        {"role.yml": SANDBOX_ROLE, "steps.yml": IN_RUN_STEPS, "verify.yml": KEPT_CHECK},
        role="freshk9",
        kiln_yaml=KILL_YAML,
    )
    env = kill_env(tmp_path, AWS_ENDPOINT_URL=sandbox_env)
    seen = kill9_at_test_machine(tmp_path, ["--role", "freshk9", "--provider", "aws", "--sandbox"], env)
    found = leftovers(sandbox_env, engine, seen["build_id"], "freshk9", seen["version"])
    assert seen["instance"] in found["instances us-east-1"], found
    assert len(found["key pairs us-east-1"]) == 2 and found["images us-east-1"], found

    swept, _ = sweep_after_deadline(tmp_path, env)
    assert swept.returncode == 0, swept.stdout + swept.stderr[-3000:]
    found = leftovers(sandbox_env, engine, seen["build_id"], "freshk9", seen["version"])
    assert nothing_left(found), f"sweep left {found}\n{swept.stdout}"
