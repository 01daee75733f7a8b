"""Whole AWS bakes in the sandbox: a moto server on 127.0.0.1, real containers as the instances.

The bakes run in this process (throttling, retention) or through the real command line (`invoke bake
--provider aws --sandbox`, signalled at every stage boundary and in the middle of launch and publish)
against one moto server this module starts, so what a bake leaves behind can be inspected after it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kiln.controller.bake import bake, stages_for
from kiln.controller.context import BakeOptions
from kiln.controller.providers.aws import make_aws_provider
from kiln.controller.sandbox import INSTANCE, local_images, sandbox_client
from tests.aws_harness import AL2023, ApiCalls, HeldRequests, Throttle, not_in_policy
from tests.playbooks import REPO, invoke, make_playbooks

pytestmark = pytest.mark.slow

REGIONS = ["us-east-1", "eu-west-1"]
ORG = "arn:aws:organizations::123456789012:organization/o-abcdefghij"
KILN_YAML = f"""\
providers:
  aws:
    regions: [us-east-1, eu-west-1]
    share: {{accounts: ["111122223333"], org_arns: ["{ORG}"]}}
retention:
  keep: 3
"""
TINY = {
    "role.yml": f"description: a tiny role for AWS tests\nbase:\n  aws: {{ssm_parameter: {AL2023}}}\n",
    "steps.yml": '- name: marker\n  copy: {content: "hello\\n", dest: /etc/kiln-marker}\n',
    "verify.yml": '- file: /etc/kiln-marker\n  contains: ["hello"]\n',
}
STAGES = [s.name for s in stages_for(BakeOptions(), 3)]


def clients(url: str, service: str) -> dict:
    return {region: sandbox_client(service, region, url) for region in REGIONS}


def leftovers(url: str, engine, build_id: str, role: str, version: str) -> dict[str, list]:
    """Everything of the bake that still exists: it must all be empty after a failed bake."""
    found: dict[str, list] = {}
    by_build = [{"Name": "tag:kiln:build-id", "Values": [build_id]}]
    for region, ec2 in clients(url, "ec2").items():
        rows = ec2.describe_instances(
            Filters=by_build
            + [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
        )
        found[f"instances {region}"] = [i["InstanceId"] for r in rows["Reservations"] for i in r["Instances"]]
        found[f"key pairs {region}"] = [k["KeyName"] for k in ec2.describe_key_pairs(Filters=by_build)["KeyPairs"]]
        found[f"groups {region}"] = [
            g["GroupId"] for g in ec2.describe_security_groups(Filters=by_build)["SecurityGroups"]
        ]
        found[f"volumes {region}"] = [
            v["VolumeId"]
            for v in ec2.describe_volumes(Filters=by_build + [{"Name": "status", "Values": ["available", "creating"]}])[
                "Volumes"
            ]
        ]
        found[f"images {region}"] = [
            i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=by_build)["Images"]
        ]
    for region, ssm in clients(url, "ssm").items():
        names = [
            p["Name"]
            for p in ssm.describe_parameters(
                ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"/kiln/{role}/"]}]
            )["Parameters"]
        ]
        found[f"parameters {region}"] = [n for n in names if n.endswith("/latest") or n.endswith(f"/{version}")]
    found["containers"] = [c["Names"] for c in engine.containers(f"kiln.build-id={build_id}")]
    return found


def sandbox_containers(url: str, engine, build_id: str) -> list:
    """The sandbox's containers of the build's instances (terminated ones too): other bakes on this machine
    (another test run) have their own."""
    by_build = [{"Name": "tag:kiln:build-id", "Values": [build_id]}]
    instances = {
        i["InstanceId"]
        for ec2 in clients(url, "ec2").values()
        for r in ec2.describe_instances(Filters=by_build)["Reservations"]
        for i in r["Instances"]
    }
    assert instances, f"moto knows no instance of build {build_id}"
    return [c["Names"] for c in engine.containers(INSTANCE) if (c.get("Labels") or {}).get(INSTANCE) in instances]


def nothing_left(found: dict[str, list]) -> bool:
    return not any(found.values())


def options(tmp_path: Path, playbooks: Path) -> BakeOptions:
    return BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks)


def sandbox_provider(tmp_path: Path, **settings):
    raw = {"regions": REGIONS, "share": {"accounts": ["111122223333"], "org_arns": [ORG]}}
    raw.update(settings)
    return make_aws_provider(raw, sandbox=True, state_dir=tmp_path / "builds")


# --- the whole bake through the command line -------------------------------------------------
def test_web_baked_in_the_sandbox_is_in_both_regions_shared_and_latest(sandbox_env, engine, tmp_path):
    url = sandbox_env
    playbooks = tmp_path / "pb"
    playbooks.mkdir()
    (playbooks / "kiln.yaml").write_text(KILN_YAML)
    (playbooks / "roles").symlink_to(REPO / "playbooks" / "roles")
    work = tmp_path / "work"
    work.mkdir()
    proc = invoke(
        work,
        "bake",
        "--role",
        "web",
        "--provider",
        "aws",
        "--sandbox",
        playbooks=playbooks,
        env={"KILN_JSON": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    entries = [e for e in json.loads((work / "builds" / "manifest.json").read_text()) if e["role"] == "web"]
    assert sorted(e["region"] for e in entries) == sorted(REGIONS)
    version, build_id = entries[0]["version"], entries[0]["build_id"]
    ec2s, ssms = clients(url, "ec2"), clients(url, "ssm")
    for entry in entries:
        region = entry["region"]
        image = ec2s[region].describe_images(ImageIds=[entry["image_id"]])["Images"][0]
        assert image["Name"] == f"kiln-web-{version}" and image["State"] == "available"
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert tags["kiln:role"] == "web" and tags["kiln:version"] == version
        assert tags["kiln:build-id"] == build_id and tags["kiln:inputs-hash"] == entry["inputs_hash"]
        assert tags["kiln:base-image"] == entry["base"]["id"] and tags["kiln:kiln-version"]
        perms = ec2s[region].describe_image_attribute(ImageId=image["ImageId"], Attribute="launchPermission")[
            "LaunchPermissions"
        ]
        assert {"UserId": "111122223333"} in perms and {"OrganizationArn": ORG} in perms
        latest = ssms[region].get_parameter(Name="/kiln/web/latest")["Parameter"]
        assert latest["Value"] == image["ImageId"] and latest["DataType"] == "aws:ec2:image"
    assert nothing_left(
        {
            k: v
            for k, v in leftovers(url, engine, build_id, "web", version).items()
            if not k.startswith(("images", "parameters"))
        }
    )
    assert not sandbox_containers(url, engine, build_id), "a sandbox container was left behind"
    assert "host key fingerprints from the console" in proc.stderr, "the host key was not pinned"

    listing = invoke(work, "images", "--role", "web", "--provider", "aws", "--sandbox")
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert version in listing.stdout and "latest" in listing.stdout


# --- interrupts ------------------------------------------------------------------------------
#: stages a signal may reach only after the bake is whole (the last one ends in milliseconds)
MAY_FINISH = {"record"}
#: stages that end in well under a second against moto: the relay holds their first AWS request
#: (a copy request; the first request after the publish mutex is let go), so the signal lands
#: while the stage is provably still running
HELD_FROM = {
    "publish": (lambda operation, body: operation == "CopyImage", True),
    "retire old versions": (lambda operation, body: operation == "DeleteParameter" and b"/publishing" in body, False),
}


def signalled_bake(
    url: str, tmp_path: Path, role: str, signum: int, moment, relay: HeldRequests | None = None
) -> tuple[int, dict, str]:
    """The real ``invoke bake --provider aws --sandbox`` against the shared moto server, sent ``signum`` as
    soon as a JSON log line for which ``moment(event)`` holds appears (``moment`` None: as soon as ``relay``
    holds a request): (exit status, build id and version it logged, everything it said). Through ``relay``,
    if given, whose held requests go on once signalled."""
    playbooks = make_playbooks(tmp_path, TINY, role=role, kiln_yaml=KILN_YAML)
    work = tmp_path / "work"
    work.mkdir()
    (work / "playbooks").symlink_to(playbooks)
    env = dict(os.environ, KILN_JSON="1", AWS_ENDPOINT_URL=relay.url if relay else url)
    command = [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", role, "--provider", "aws"]
    proc = subprocess.Popen(
        [*command, "--sandbox"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = {"build_id": "", "version": "", "signalled": False}
    lines = []

    def signal_once_held() -> None:
        if relay.holding.wait(300):
            proc.send_signal(signum)
            seen["signalled"] = True
            time.sleep(0.5)  # the signal is taken while the request is still on its way
        relay.release()

    if moment is None:
        threading.Thread(target=signal_once_held, daemon=True).start()
        moment = lambda event: False  # noqa: E731 - the thread signals
    for line in proc.stderr:
        lines.append(line)
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        seen["build_id"] = event.get("build_id", seen["build_id"])
        if event.get("event") == "version":
            seen["version"] = event["version"]
        if moment(event) and not seen["signalled"]:
            proc.send_signal(signum)
            seen["signalled"] = True
            if relay:
                relay.release()
            break
    out, rest = proc.communicate(timeout=300)
    return proc.returncode, seen, "".join(lines) + rest + out


def assert_whole_or_nothing(url: str, engine, code: int, seen: dict, role: str, output: str) -> None:
    """Interrupted (exit 1): nothing of the bake is left and ``latest`` never moved. Finished (exit 0):
    the version is whole, one AMI in every region, ``latest`` names it, no temporaries or reservation left."""
    assert seen["signalled"], f"the moment never came:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    found = leftovers(url, engine, seen["build_id"], role, seen["version"] or "none")
    if code != 0:
        assert code == 1 and "interrupted" in output, output[-3000:]
        assert nothing_left(found), f"left {found}"
        return
    temporaries = {k: v for k, v in found.items() if not k.startswith(("images", "parameters"))}
    assert nothing_left(temporaries), f"a whole bake left {temporaries}"
    for region, ssm in clients(url, "ssm").items():
        [image] = found[f"images {region}"]
        assert found[f"parameters {region}"] == [f"/kiln/{role}/latest"], "the version reservation is gone"
        assert ssm.get_parameter(Name=f"/kiln/{role}/latest")["Parameter"]["Value"] == image


@pytest.mark.parametrize("index, stage", list(enumerate(STAGES)))
def test_a_signal_at_any_stage_boundary_leaves_nothing(sandbox_env, engine, tmp_path, index, stage):
    """SIGINT and SIGTERM by turns, each as a stage begins (its log line): nothing left, or (only at the last
    stage, which may end before the signal lands) a whole version."""
    signum = signal.SIGTERM if index % 2 else signal.SIGINT  # publish (11) gets SIGTERM, as a scheduler sends
    role = f"int{index}"

    def at_stage(event: dict) -> bool:
        return event.get("event") == "stage" and event.get("stage") == stage

    relay = HeldRequests(sandbox_env, *HELD_FROM[stage]) if stage in HELD_FROM else None
    try:
        code, seen, output = signalled_bake(sandbox_env, tmp_path, role, signum, at_stage, relay)
    finally:
        if relay:
            relay.close()
    if code == 0:
        assert stage in MAY_FINISH, f"signal {signal.Signals(signum).name} at '{stage}' did not interrupt the bake"
    assert_whole_or_nothing(sandbox_env, engine, code, seen, role, output)


@pytest.mark.parametrize(
    "moment, signum",
    [("sandbox: instance booted as a container", signal.SIGINT), ("copy started", signal.SIGTERM)],
)
def test_a_signal_in_the_middle_of_launch_or_publish_leaves_nothing(sandbox_env, engine, tmp_path, moment, signum):
    """Mid-stage: the instance booting (launch has not returned it yet), a copy just requested in another
    region (publish waits for it)."""
    role = "mid" + moment.split()[0].rstrip(":")[:5]
    code, seen, output = signalled_bake(sandbox_env, tmp_path, role, signum, lambda e: e.get("event") == moment)
    assert code == 1, f"a signal at '{moment}' did not interrupt the bake:\n{output[-3000:]}"
    assert_whole_or_nothing(sandbox_env, engine, code, seen, role, output)


def test_a_copy_requested_as_the_signal_lands_is_found_and_removed(sandbox_env, engine, tmp_path):
    """SIGTERM while a CopyImage request is on its way: the copy it makes after the signal is waited for
    (bounded) and removed with the rest, not left unknown to the undo."""
    relay = HeldRequests(sandbox_env, lambda operation, body: operation == "CopyImage")
    try:
        code, seen, output = signalled_bake(sandbox_env, tmp_path, "inflight", signal.SIGTERM, None, relay)
    finally:
        relay.close()
    assert code == 1, f"a signal during a copy request did not interrupt the bake:\n{output[-3000:]}"
    assert "copy started" in output, "the held copy request never made its copy"
    assert_whole_or_nothing(sandbox_env, engine, code, seen, "inflight", output)


# --- throttling, retention, least privilege, sweep ------------------------------------------
def test_second_bake_under_throttling_retires_the_first_and_stays_in_the_policy(sandbox_env, engine, tmp_path):
    playbooks = make_playbooks(tmp_path, TINY, role="twice", kiln_yaml=KILN_YAML)
    first = bake("twice", "aws", options(tmp_path, playbooks), provider=sandbox_provider(tmp_path, retention=1))
    assert first.exit_code == 0, first.error

    prov = sandbox_provider(tmp_path, retention=1)
    throttle = Throttle(every=3).install(prov.session)
    calls = ApiCalls().install(prov.session)
    second = bake("twice", "aws", options(tmp_path, playbooks), provider=prov)
    assert second.exit_code == 0, second.error
    assert throttle.throttled >= 10, "RequestLimitExceeded was injected"
    assert {(i.region, i.version) for i in second.ctx.retired} == {(r, first.ctx.version) for r in REGIONS}
    images = prov.images("twice")
    assert {(i.region, i.version, i.latest) for i in images} == {(r, second.ctx.version, True) for r in REGIONS}
    assert not engine.image_exists(f"{local_images()}:{first.ctx.image.id}"), "retired AMI's local image removed"

    missing = not_in_policy(calls.actions)
    assert not missing, f"the bake called actions docs/iam-policy.json lacks: {sorted(missing)}"


def test_sweep_in_the_sandbox_removes_an_expired_instance_and_its_container(sandbox_env, engine, tmp_path):
    from tests.aws_harness import context

    prov = sandbox_provider(tmp_path)
    # a build whose three-hour deadline passed five minutes ago
    ctx = context(prov, tmp_path, "swept", started=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3, minutes=5))
    ctx.base = prov.resolve_base({"ssm_parameter": AL2023})
    ctx.instance = prov.launch(ctx.machine_spec())  # and the controller "dies" here
    assert engine.containers(f"kiln.build-id={ctx.build_id}")
    listed = [line for line in prov.sweep(apply=False) if ctx.build_id in line]
    assert {line.split()[0] for line in listed} == {"instance", "key", "security"}
    prov.sweep(apply=True)
    assert not engine.containers(f"kiln.build-id={ctx.build_id}")
    assert nothing_left(leftovers(sandbox_env, engine, ctx.build_id, "swept", "none"))


# --- what cloud-init does on a real instance ------------------------------------------------
@pytest.mark.slow
def test_a_sandbox_instance_refuses_root_and_takes_its_default_user_as_cloud_init_does(sandbox_env, engine):
    """root's key only says to log in as ec2-user (cloud-init's disable_root); ec2-user logs in, with sudo."""
    import paramiko

    from kiln.controller.sandbox import Sandbox, SandboxDataPlane
    from kiln.controller.ssh import KeyPair

    key = KeyPair.generate()
    ec2 = sandbox_client("ec2", "us-east-1", sandbox_env)
    name = f"rootless-{os.getpid()}"
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=key.public_openssh.encode())
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=ami, KeyName=name, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    plane = SandboxDataPlane(Sandbox(sandbox_env), engine)
    try:
        plane.launched("us-east-1", [instance])
        host, port = plane.address("us-east-1", instance)

        def run(user: str, command: str) -> tuple[int, str]:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a throwaway container of this test
            for _ in range(100):  # sshd starts with systemd
                try:
                    client.connect(host, port, user, pkey=key.paramiko_key(), timeout=5, look_for_keys=False)
                    break
                except (paramiko.SSHException, OSError):
                    time.sleep(0.2)
            else:
                raise AssertionError("sshd of the sandbox instance never answered")
            try:
                _, out, _ = client.exec_command(command, timeout=30)
                return out.channel.recv_exit_status(), out.read().decode()
            finally:
                client.close()

        status, said = run("root", "id -u")
        assert status == 142 and 'Please login as the user "ec2-user"' in said, (status, said)
        assert run("ec2-user", "sudo -n id -u") == (0, "0\n")
    finally:
        plane.terminated("us-east-1", [instance])
        ec2.terminate_instances(InstanceIds=[instance])
        ec2.delete_key_pair(KeyName=name)
