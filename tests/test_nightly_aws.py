"""Nightly rebuilds on the AWS provider in the sandbox: the local tests' skip/rebake logic and the
per-role lock (an SSM parameter), over one moto server that outlives several
`invoke nightly --provider aws --sandbox` runs (AWS_ENDPOINT_URL), with containers as instances.

The roles' base is an SSM parameter this test owns, pointing to an AMI it registers in moto: a
new image behind the parameter is a new base release.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from kiln.controller.config import load_config
from kiln.controller.context import BakeOptions
from kiln.controller.nightly import Nightly
from kiln.controller.providers.aws import make_aws_provider
from kiln.controller.sandbox import container_name, sandbox_client
from tests.aws_harness import AL2023, ApiCalls
from tests.playbooks import invoke

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("sandbox_env")]

REGION = "us-east-1"
BASE_PARAMETER = "/kiln-test/nightly-base"
KILN_YAML = f"providers:\n  aws:\n    regions: [{REGION}]\nretention:\n  keep: 5\n"
BASE = f"base:\n  aws: {{ssm_parameter: {BASE_PARAMETER}}}\n"


def write_roles(root: Path, roles: dict[str, tuple[str, str]]) -> Path:
    playbooks = root / "playbooks"
    for name, (role_yml, steps) in roles.items():
        d = playbooks / "roles" / name
        d.mkdir(parents=True)
        (d / "role.yml").write_text(role_yml)
        (d / "steps.yml").write_text(steps)
    (playbooks / "kiln.yaml").write_text(KILN_YAML)
    return playbooks


def three_roles(root: Path) -> Path:
    """common <- app, and an independent solo, as in tests/test_nightly.py, on the test's base AMI."""
    return write_roles(
        root,
        {
            "common": (
                "description: shared\n" + BASE,
                '- name: common marker\n  copy: {content: "common 1\\n", dest: /etc/kiln-common}\n',
            ),
            "app": (
                "description: app\ndepends: [common]\n",
                '- name: app marker\n  copy: {content: "app 1\\n", dest: /etc/kiln-app}\n',
            ),
            "solo": (
                "description: solo\n" + BASE,
                '- name: solo marker\n  copy: {content: "solo 1\\n", dest: /etc/kiln-solo}\n',
            ),
        },
    )


def release_base(url: str, name: str) -> str:
    """A 'new base release': an AMI registered from AL2023's snapshot, put behind the test's parameter."""
    ec2, ssm = sandbox_client("ec2", REGION, url), sandbox_client("ssm", REGION, url)
    al2023 = ec2.describe_images(ImageIds=[ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]])["Images"][0]
    root = al2023["BlockDeviceMappings"][0]
    image_id = ec2.register_image(
        Name=name,
        RootDeviceName=root["DeviceName"],
        VirtualizationType="hvm",
        Architecture="x86_64",
        BlockDeviceMappings=[
            {"DeviceName": root["DeviceName"], "Ebs": {"SnapshotId": root["Ebs"]["SnapshotId"], "VolumeSize": 8}}
        ],
    )["ImageId"]
    ssm.put_parameter(Name=BASE_PARAMETER, Value=image_id, Type="String", DataType="aws:ec2:image", Overwrite=True)
    return image_id


def instances(url: str) -> dict[str, str]:
    """Every instance moto ever launched (terminated ones stay listed): id -> state."""
    rows = sandbox_client("ec2", REGION, url).describe_instances()["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in rows for i in r["Instances"]}


def amis(url: str, role: str) -> dict[str, str]:
    """version -> AMI id of ``role``'s images."""
    rows = sandbox_client("ec2", REGION, url).describe_images(
        Owners=["self"], Filters=[{"Name": "tag:kiln:role", "Values": [role]}]
    )["Images"]
    return {next(t["Value"] for t in i["Tags"] if t["Key"] == "kiln:version"): i["ImageId"] for i in rows}


def nightly(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return invoke(cwd, "nightly", "--provider", "aws", "--sandbox", "--concurrency", "3", *extra, timeout=600)


def reports(builds: Path) -> list[dict]:
    """Every nightly report, oldest first (by start time: 'nightly-<second>-2' sorts before 'nightly-<second>')."""
    return sorted((json.loads(p.read_text()) for p in builds.glob("nightly-*.json")), key=lambda r: r["started"])


def latest_report(builds: Path) -> dict[str, dict]:
    return {r["role"]: r for r in reports(builds)[-1]["roles"]}


def results(builds: Path) -> dict[str, str]:
    return {role: r["result"] for role, r in latest_report(builds).items()}


def assert_nothing_running(url: str, engine, before: dict[str, str]) -> None:
    ours = {i: s for i, s in instances(url).items() if i not in before}
    live = {i: s for i, s in ours.items() if s != "terminated"}
    assert not live, f"instances left running: {live}"
    left = [i for i in ours if engine.container_exists(container_name(i))]
    assert not left, f"containers left behind for {left}"


def test_skip_unchanged_rebake_changed_and_dependents_rebake_all_on_new_base(engine, tmp_path):
    url = os.environ["AWS_ENDPOINT_URL"]  # set by sandbox_env
    before = instances(url)  # the server may have served other tests
    release_base(url, "kiln-test-base-r1")
    playbooks = three_roles(tmp_path)
    builds = tmp_path / "builds"

    first = nightly(tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    assert results(builds) == {"common": "baked", "app": "baked", "solo": "baked"}
    launched = instances(url)
    assert len(launched) == len(before) + 3

    # nothing changed: every role skipped, nothing launched
    second = nightly(tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert results(builds) == {"common": "skipped-unchanged", "app": "skipped-unchanged", "solo": "skipped-unchanged"}
    assert instances(url) == launched, "a no-change nightly launched an instance"

    # ... and in a few API calls: the same nightly in this process, every call counted
    prov = make_aws_provider({"regions": [REGION]}, sandbox=True, state_dir=builds)
    calls = ApiCalls().install(prov.session)
    options = BakeOptions(builds_dir=builds, playbooks_dir=playbooks)
    run = Nightly(
        prov,
        load_config(playbooks / "kiln.yaml"),
        options,
        ["app", "common", "solo"],
        concurrency=3,
        provider_name="aws",
    )
    assert {r.result for r in run.run()} == {"skipped-unchanged"}
    # per role: take the lock, its AMIs and latest, the base parameter and AMI, release the lock (2 calls)
    assert len(calls.calls) <= 3 * 7, sorted(calls.calls)
    assert not calls.actions & {"ec2:RunInstances", "ec2:ImportKeyPair", "ec2:CreateSecurityGroup"}

    # touching common's content rebakes common and app (which includes it), not solo
    steps = playbooks / "roles/common/steps.yml"
    steps.write_text(steps.read_text().replace("common 1", "common 2"))
    third = nightly(tmp_path)
    assert third.returncode == 0, third.stderr[-4000:]
    report = latest_report(builds)
    assert {r: v["result"] for r, v in report.items()} == {
        "common": "baked",
        "app": "baked",
        "solo": "skipped-unchanged",
    }
    assert report["app"]["old_version"] and report["app"]["new_version"] != report["app"]["old_version"]
    assert "inputs changed" in report["common"]["reason"]
    assert len(instances(url)) == len(before) + 5

    # a new image behind the base parameter rebakes everything, on the new base
    new_base = release_base(url, "kiln-test-base-r2")
    fourth = nightly(tmp_path)
    assert fourth.returncode == 0, fourth.stderr[-4000:]
    report = latest_report(builds)
    assert {v["result"] for v in report.values()} == {"baked"}
    ec2 = sandbox_client("ec2", REGION, url)
    for role in ("common", "app", "solo"):
        image = amis(url, role)[report[role]["new_version"]]
        tags = {t["Key"]: t["Value"] for t in ec2.describe_images(ImageIds=[image])["Images"][0]["Tags"]}
        assert tags["kiln:base-image"] == new_base, role
        latest = sandbox_client("ssm", REGION, url).get_parameter(Name=f"/kiln/{role}/latest")["Parameter"]
        assert latest["Value"] == image
    assert {role: len(amis(url, role)) for role in ("common", "app", "solo")} == {"common": 3, "app": 3, "solo": 2}
    md = max(builds.glob("nightly-*.md"), key=lambda p: p.stat().st_mtime).read_text()
    assert "| common | baked |" in md and "(aws)" in md
    assert_nothing_running(url, engine, before)


def test_the_ssm_lock_makes_a_second_nightly_skip_or_wait(engine, tmp_path):
    url = os.environ["AWS_ENDPOINT_URL"]  # set by sandbox_env
    release_base(url, "kiln-test-base-lock")
    write_roles(
        tmp_path,
        {
            "locky": (
                "description: locked\n" + BASE,
                '- name: marker\n  copy: {content: "1\\n", dest: /etc/kiln-locky}\n',
            )
        },
    )
    builds = tmp_path / "builds"
    ssm = sandbox_client("ssm", REGION, url)
    lock = "/kiln/locky/lock"
    before = instances(url)

    # another scheduler holds the role's lock (not expired): --on-locked skip reports it, launches nothing
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat(timespec="seconds")
    ssm.put_parameter(Name=lock, Type="String", Value=json.dumps({"owner": "other-scheduler", "expires": expires}))
    held = nightly(tmp_path, "--on-locked", "skip")
    assert held.returncode == 0, held.stderr[-4000:]
    assert results(builds) == {"locky": "locked"}
    assert instances(url) == before
    assert json.loads(ssm.get_parameter(Name=lock)["Parameter"]["Value"])["owner"] == "other-scheduler"
    ssm.delete_parameter(Name=lock)

    # two nightlies at once, both waiting on a held lock: the role is baked once, one version exists
    done: dict[str, subprocess.CompletedProcess] = {}
    threads = [
        threading.Thread(target=lambda k=k: done.__setitem__(k, nightly(tmp_path, "--on-locked", "wait")))
        for k in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.returncode == 0 for p in done.values()), [p.stderr[-3000:] for p in done.values()]
    both = [r for rep in reports(builds)[-2:] for r in rep["roles"]]
    assert sorted(r["result"] for r in both) == ["baked", "skipped-unchanged"], both
    assert len(amis(url, "locky")) == 1 and len(instances(url)) == len(before) + 1
    waited = next(r for r in both if r["result"] == "skipped-unchanged")
    assert waited["duration"] >= 2, "the second scheduler waited for the lock, then found the role fresh"
    assert lock not in [p["Name"] for p in ssm.describe_parameters()["Parameters"]], "the lock was released"
    assert_nothing_running(url, engine, before)
