"""The AWS provider stage by stage against moto in-process (fast): settings, base image, launch,
host keys, snapshot, publish, retire, sweep, versions, locks, and the IAM policy it needs."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import threading

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from kiln.controller.model import InvalidInput
from kiln.controller.ownership import BuildClaim
from kiln.controller.providers.aws import ImageWaitTimeout, make_aws_provider
from kiln.controller.providers.aws.cloud_init import cloud_config_parts, console_block, console_fingerprints, user_data
from kiln.controller.providers.aws.instance import AwsInstance
from kiln.controller.providers.aws.tags import tags_of
from kiln.controller.providers.base import ProviderError
from kiln.controller.ssh import KeyPair
from kiln.controller.stages.snapshot import Publish, Snapshot
from tests.aws_harness import (
    AL2023,
    ApiCalls,
    Throttle,
    context,
    fail_call,
    not_in_policy,
    provider,
    session,
)


@pytest.fixture(scope="module")
def aws():
    """One moto for the module (loading its AMIs takes a second per region); tests use their own roles."""
    with mock_aws():
        yield


@pytest.fixture(autouse=True)
def _no_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("MOTO_ENABLE_AMI_VALIDATION", "true")


@functools.cache
def ec2(region="us-east-1"):
    return session(region).client("ec2")


def a_claim() -> BuildClaim:
    return BuildClaim.for_build("test-build", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))


@functools.cache
def ssm(region="us-east-1"):
    return session(region).client("ssm")


def launched(prov, tmp_path, role, **kw):
    ctx = context(prov, tmp_path, role, **kw)
    ctx.base = prov.resolve_base(ctx.compiled.base["aws"])
    ctx.version = prov.allocate_version(role, BuildClaim.for_build(ctx.build_id, ctx.expires))
    ctx.instance = prov.launch(ctx.machine_spec())
    return ctx


def instance_of(instance_id, region="us-east-1"):
    return ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


# --- settings: refused before anything is launched -------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"share": {"public": True}}, "allow_public: true"),
        ({"share": {"accounts": ["all"]}}, "allow_public: true"),
        ({"virtualization_type": "paravirtual"}, "HVM images only"),
        ({"ssh": {"address": "public_ipp"}}, "did you mean 'public_ip'"),
        ({"instance_typs": ["t3.small"]}, "did you mean 'instance_types'"),
        ({"share": {"accounts": ["123"]}}, "12-digit account id"),
        ({"share": {"org_arns": ["o-123"]}}, "organization ARN"),
        ({"ssh": {"cidrs": ["0.0.0.0/0"]}}, "whole internet"),
        ({"ssh": {"cidrs": ["10.0.0.300/32"]}}, "not a CIDR"),
        ({"regions": []}, "at least one region"),
        ({"kms_keys": {"us-east-1": "alias/k"}}, "no volume is encrypted"),
        ({"root_volume": {"encrypted": True}, "share": {"accounts": ["111122223333"]}}, "cannot be shared"),
        ({"extra_volumes": [{"device": "/dev/sdf"}]}, "size is required"),
        ({"retries": {"mode": "legacy"}}, "standard or adaptive"),
        ({"tags": {"kiln:role": "x"}}, "reserved"),
    ],
)
def test_bad_settings_are_invalid_input(settings, message):
    with pytest.raises(InvalidInput) as exc:
        make_aws_provider(settings, session=session())
    assert message in exc.value.render()


def test_public_sharing_with_the_explicit_flag_is_accepted():
    prov = make_aws_provider({"share": {"public": True, "allow_public": True}}, session=session())
    assert {"Group": "all"} in prov.settings.share.launch_permissions()


# --- small pieces ------------------------------------------------------------------------------
def test_console_fingerprints_table():
    key = KeyPair.generate()
    cases = {
        "cloud-init block with ec2: prefixes": (console_block([key.public_openssh], "ip-10-0-0-1"), {key.fingerprint}),
        "kernel timestamps and CRLF": (
            "[   10.1] ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
            "[   10.1] ec2: 256 SHA256:abcDEF/+xyz root@h (ED25519)\r\n"
            "[   10.1] ec2: -----END SSH HOST KEY FINGERPRINTS-----\r\n",
            {"SHA256:abcDEF/+xyz"},
        ),
        "md5 fingerprints are ignored": (
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
            "2048 aa:bb:cc root@h (RSA)\n-----END SSH HOST KEY FINGERPRINTS-----\n",
            set(),
        ),
        "the last boot wins": (
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n256 SHA256:old root@h (ED25519)\n"
            "-----END SSH HOST KEY FINGERPRINTS-----\nreboot\n"
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n256 SHA256:new root@h (ED25519)\n"
            "-----END SSH HOST KEY FINGERPRINTS-----\n",
            {"SHA256:new"},
        ),
        "an unterminated block is not trusted": (
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n256 SHA256:cut root@h (ED25519)\n",
            set(),
        ),
        "nothing printed": ("Linux version 6.1\nlogin:", set()),
    }
    for name, (console, expected) in cases.items():
        assert console_fingerprints(console) == expected, name


def test_user_data_schedules_the_deadline_and_keeps_the_users_part():
    plain = user_data(1_900_000_000)
    assert plain.startswith("#cloud-config") and "(1900000000 - $(date +%s)) / 60" in plain
    mixed = user_data(1_900_000_300, "#!/bin/sh\necho hi\n")
    assert "multipart" in mixed and "1900000300" in cloud_config_parts(mixed)[0]


def test_deadline_is_absolute_so_a_reboot_does_not_move_it():
    """Run the bootcmd's shell arithmetic: minutes left from an absolute deadline, at least 1."""
    import re
    import subprocess
    import time

    for offset, expected in ((600, 10), (-50, 1)):
        command = re.search(r'\[sh, -c, "(.*)"\]', user_data(int(time.time()) + offset)).group(1)
        command = command.replace("shutdown -h", "echo")
        out = subprocess.run(
            ["sh", "-c", command.replace(">/dev/null 2>&1 || true", "")], capture_output=True, text=True
        ).stdout.strip()
        assert out in (f"+{expected}", f"+{expected - 1}"), (offset, out)


# --- base image --------------------------------------------------------------------------------
def test_base_from_ssm_parameter_pinned_and_filter(aws, tmp_path):
    prov = provider(tmp_path)
    by_param = prov.resolve_base({"ssm_parameter": AL2023})
    assert by_param.id == ssm().get_parameter(Name=AL2023)["Parameter"]["Value"]
    assert by_param.name.startswith("al2023-ami-")
    assert prov.resolve_base({"ami": by_param.id}).id == by_param.id
    assert prov.resolve_base(by_param.id).id == by_param.id
    newest = prov.resolve_base(
        {"filter": {"owners": ["amazon"], "name": "al2023-ami-2023.*-kernel-6.1-x86_64", "architecture": "x86_64"}}
    )
    candidates = ec2().describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["al2023-ami-2023.*-kernel-6.1-x86_64"]}]
    )["Images"]
    assert newest.id == max(candidates, key=lambda i: i["CreationDate"])["ImageId"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"ssm_parameter": "/aws/service/nope"}, "does not exist"),
        ({"ami": "ami-0123456789abcdef0"}, "not found"),
        ({"filter": {"owners": ["amazon"], "name": "no-such-image-*"}}, "no base image matches"),
        ({"filter": {"owners": ["amazon"], "name": "al2023-ami-*", "most_recent": False}}, "narrow the filter"),
        ({"filter": {"name": "al2023-*"}}, "needs owners"),
        ({"ami": "ami-1", "ssm_parameter": "/x"}, "exactly one of"),
        (None, "no AWS base image"),
    ],
)
def test_base_errors(aws, tmp_path, spec, message):
    with pytest.raises(ProviderError, match=message):
        provider(tmp_path).resolve_base(spec)


def test_paravirtual_base_is_refused(aws, tmp_path):
    pv = ec2().describe_images(Filters=[{"Name": "virtualization-type", "Values": ["paravirtual"]}])["Images"]
    with pytest.raises(ProviderError, match="HVM images only"):
        provider(tmp_path).resolve_base({"ami": pv[0]["ImageId"]})


# --- launch ------------------------------------------------------------------------------------
def test_launch_tags_keys_group_volumes_imds_and_deadline(aws, tmp_path):
    subnet = ec2().describe_subnets()["Subnets"][0]["SubnetId"]
    prov = provider(
        tmp_path,
        subnet_id=subnet,
        root_volume={"size": 12, "encrypted": True},
        extra_volumes=[{"device": "/dev/sdf", "size": 5}],
        ssh={"console_timeout": 0, "user": "admin"},
    )
    ctx = launched(prov, tmp_path, "launchy")
    inst = ctx.instance
    described = instance_of(inst.id)
    tags = tags_of(described)
    assert tags["kiln:temporary"] == "true" and tags["kiln:build-id"] == ctx.build_id
    assert tags["kiln:role"] == "launchy"
    assert dt.datetime.fromisoformat(tags["kiln:expires"]) == ctx.expires.replace(microsecond=0)
    assert described["MetadataOptions"]["HttpTokens"] == "required"
    assert described["SubnetId"] == subnet
    assert (inst.ssh_host, inst.ssh_user) == (described["PublicIpAddress"], "admin")
    data = base64.b64decode(
        ec2().describe_instance_attribute(InstanceId=inst.id, Attribute="userData")["UserData"]["Value"]
    ).decode()
    assert "shutdown -h +" in data
    shutdown = ec2().describe_instance_attribute(InstanceId=inst.id, Attribute="instanceInitiatedShutdownBehavior")
    assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    volumes = ec2().describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [inst.id]}])["Volumes"]
    assert {v["Size"] for v in volumes} == {12, 5}
    assert all(tags_of(v).get("kiln:temporary") == "true" for v in volumes)
    pair = ec2().describe_key_pairs(KeyNames=[f"kiln-build-{ctx.build_id}"], IncludePublicKey=True)["KeyPairs"][0]
    assert tags_of(pair)["kiln:build-id"] == ctx.build_id
    assert pair["PublicKey"].split()[1] == ctx.client_key.public_openssh.split()[1]
    group = ec2().describe_security_groups(GroupIds=[inst.security_group_id])["SecurityGroups"][0]
    assert tags_of(group)["kiln:temporary"] == "true"
    rule = group["IpPermissions"][0]
    assert (rule["FromPort"], rule["ToPort"], rule["IpRanges"][0]["CidrIp"]) == (22, 22, "203.0.113.7/32")
    assert prov.data_plane.calls[0] == ("launched", ("us-east-1", [inst.id]))

    prov.terminate(inst)
    assert instance_of(inst.id)["State"]["Name"] == "terminated"
    assert not ec2().describe_key_pairs(Filters=[{"Name": "key-name", "Values": [f"kiln-build-{ctx.build_id}"]}])[
        "KeyPairs"
    ]
    assert not ec2().describe_security_groups(Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])[
        "SecurityGroups"
    ]
    assert ("terminated", ("us-east-1", [inst.id])) in prov.data_plane.calls


def test_capacity_error_falls_back_to_the_next_type(aws, tmp_path):
    sess = session()
    seen = fail_call(
        sess, "RunInstances", "InsufficientInstanceCapacity", when=lambda p: p["InstanceType"] == "c7i.large"
    )
    prov = provider(tmp_path, sess, instance_types=["c7i.large", "t3.small"])
    ctx = launched(prov, tmp_path, "capacity")
    assert [p["InstanceType"] for p in seen] == ["c7i.large", "t3.small"]
    assert instance_of(ctx.instance.id)["InstanceType"] == "t3.small"
    prov.terminate(ctx.instance)


def test_no_capacity_anywhere_fails_and_leaves_nothing(aws, tmp_path):
    sess = session()
    fail_call(sess, "RunInstances", "InsufficientInstanceCapacity", times=5)
    prov = provider(tmp_path, sess, instance_types=["c7i.large", "m7i.large"])
    ctx = context(prov, tmp_path, "nocap")
    ctx.base = prov.resolve_base(ctx.compiled.base["aws"])
    with pytest.raises(ProviderError, match="no capacity .* c7i.large, m7i.large"):
        prov.launch(ctx.machine_spec())  # removes what it made itself: nothing is returned to remove
    leftovers = ec2().describe_key_pairs(Filters=[{"Name": "tag:kiln:build-id", "Values": [ctx.build_id]}])
    assert not leftovers["KeyPairs"]
    assert not ec2().describe_security_groups(Filters=[{"Name": "tag:kiln:build-id", "Values": [ctx.build_id]}])[
        "SecurityGroups"
    ]


def test_host_key_warn_or_refuse_when_the_console_prints_none(aws, tmp_path):
    prov = provider(tmp_path)
    ctx = launched(prov, tmp_path, "hostkeys")
    expectation = prov.host_key_expectation(ctx.instance)
    assert not expectation.fingerprints and "no SSH host key fingerprints" in expectation.unverified_reason
    refusing = provider(tmp_path, ssh={"console_timeout": 0, "host_key_policy": "refuse"})
    with pytest.raises(ProviderError, match="refusing to connect"):
        refusing.host_key_expectation(ctx.instance)
    prov.terminate(ctx.instance)


def test_host_key_fingerprints_from_the_console_are_pinned(aws, tmp_path):
    sess = session()
    key = KeyPair.generate()
    sess.events.register(
        "after-call.ec2.GetConsoleOutput",
        lambda parsed, **kw: parsed.update(Output=console_block([key.public_openssh], "ip-1")),
    )
    prov = provider(tmp_path, sess)
    ctx = launched(prov, tmp_path, "pinned")
    assert prov.host_key_expectation(ctx.instance).fingerprints == {key.fingerprint}
    prov.terminate(ctx.instance)


# --- snapshot, publish, retire -----------------------------------------------------------------
def baked(prov, tmp_path, role):
    ctx = launched(prov, tmp_path, role)
    ctx.inputs_hash = "f" * 32
    Snapshot().run(ctx)  # the stage: the provider stops the instance and makes the AMI, the stage holds it
    return ctx


def test_snapshot_tags_image_and_snapshots(aws, tmp_path):
    prov = provider(tmp_path)
    ctx = baked(prov, tmp_path, "snappy")
    assert instance_of(ctx.instance.id)["State"]["Name"] == "stopped"
    image = ec2().describe_images(ImageIds=[ctx.image.id])["Images"][0]
    assert image["Name"] == f"kiln-snappy-{ctx.version}"
    tags = tags_of(image)
    for key in (
        "kiln:role",
        "kiln:version",
        "kiln:build-id",
        "kiln:inputs-hash",
        "kiln:base-image",
        "kiln:git-commit",
        "kiln:kiln-version",
    ):
        assert tags[key], key
    snapshots = ctx.image.snapshots
    assert snapshots
    for snap in ec2().describe_snapshots(SnapshotIds=snapshots)["Snapshots"]:
        assert tags_of(snap)["kiln:version"] == ctx.version
    prov.discard(ctx.image)
    assert not ec2().describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [image["Name"]]}])["Images"]
    assert not ec2().describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snapshots}])["Snapshots"]
    prov.terminate(ctx.instance)


def test_waiter_timeout_keeps_the_pending_ami_for_the_next_run(aws, tmp_path):
    sess = session()
    pending = {"on": True}

    def still_pending(parsed, **kwargs):
        for image in parsed.get("Images", []):
            if pending["on"] and image.get("Name", "").startswith("kiln-slowpoke-"):
                image["State"] = "pending"

    sess.events.register("after-call.ec2.DescribeImages", still_pending)
    prov = provider(tmp_path, sess)
    ctx = launched(prov, tmp_path, "slowpoke")
    with pytest.raises(ImageWaitTimeout, match="still pending after 3 checks"):
        Snapshot().run(ctx)
    assert ctx.image is None, "a pending AMI is not deregistered now (its snapshots are still being made)"
    entry = json.loads((tmp_path / "builds" / "manifest.json").read_text())[-1]
    assert entry["status"] == "pending"
    prov.release_version("slowpoke", ctx.version)  # the allocate stage's undo, as the bake fails
    reservation = json.loads(ssm().get_parameter(Name=f"/kiln/slowpoke/versions/{ctx.version}")["Parameter"]["Value"])
    assert reservation["build_id"] == ctx.build_id and reservation["ended"], "kept as the proof, marked ended"
    assert reservation["pending"] == [["us-east-1", entry["image_id"]]]
    prov.terminate(ctx.instance)

    assert not [line for line in prov.sweep(apply=True) if "slowpoke" in line], "still pending: left for later"
    pending["on"] = False
    prov.allocate_version("slowpoke", a_claim())  # the next run settles it
    assert not ec2().describe_images(Owners=["self"], Filters=[{"Name": "tag:kiln:role", "Values": ["slowpoke"]}])[
        "Images"
    ]
    holders = [
        json.loads(p["Value"])["build_id"]
        for p in ssm().get_parameters_by_path(Path="/kiln/slowpoke/versions")["Parameters"]
    ]
    assert holders == ["test-build"], "the ended reservation is gone once its AMI is; only the new one is left"


def test_a_long_ami_wait_says_it_is_still_waiting(aws, tmp_path):
    from structlog.testing import capture_logs

    sess = session()
    left = {"pending": 4}

    def pending_a_while(parsed, **kwargs):
        for image in parsed.get("Images", []):
            if image.get("Name", "").startswith("kiln-patient-") and left["pending"] > 0:
                left["pending"] -= 1
                image["State"] = "pending"

    sess.events.register("after-call.ec2.DescribeImages", pending_a_while)
    prov = provider(tmp_path, sess, waiter={"delay": 30, "max_attempts": 10})
    ctx = launched(prov, tmp_path, "patient")
    with capture_logs() as logs:
        Snapshot().run(ctx)
    waits = [e for e in logs if e["event"] == "still waiting for the AMI"]
    assert waits and waits[0]["state"] == "pending" and waits[0]["seconds"] == 60, logs
    prov.discard(ctx.image)
    prov.terminate(ctx.instance)


def test_publish_copies_tags_shares_and_moves_latest_then_unpublish_restores(aws, tmp_path):
    org = "arn:aws:organizations::123456789012:organization/o-abcdefghij"
    prov = provider(tmp_path, share={"accounts": ["111122223333"], "org_arns": [org]})
    ssm("us-east-1").put_parameter(Name="/kiln/pub/latest", Value="ami-00000000000000001", Type="String")
    ctx = baked(prov, tmp_path, "pub")
    Publish().run(ctx)
    published = ctx.published
    assert [i.region for i in published] == ["us-east-1", "eu-west-1"]
    for image in published:
        client = ec2(image.region)
        described = client.describe_images(ImageIds=[image.id])["Images"][0]
        assert tags_of(described)["kiln:version"] == ctx.version, image.region
        perms = client.describe_image_attribute(ImageId=image.id, Attribute="launchPermission")["LaunchPermissions"]
        assert {"UserId": "111122223333"} in perms and {"OrganizationArn": org} in perms
        param = ssm(image.region).get_parameter(Name="/kiln/pub/latest")["Parameter"]
        assert param["Value"] == image.id and param["DataType"] == "aws:ec2:image"
    copy_snaps = published[1].snapshots
    assert tags_of(ec2("eu-west-1").describe_snapshots(SnapshotIds=copy_snaps)["Snapshots"][0])["kiln:role"] == "pub"
    assert not ssm().get_parameters_by_path(Path="/kiln/pub/versions")["Parameters"], "reservation released"

    Publish().undo(ctx)  # the bake failed after publish
    assert ssm("us-east-1").get_parameter(Name="/kiln/pub/latest")["Parameter"]["Value"] == "ami-00000000000000001"
    with pytest.raises(ClientError, match="ParameterNotFound"):
        ssm("eu-west-1").get_parameter(Name="/kiln/pub/latest")
    assert not ec2("eu-west-1").describe_images(
        Owners=["self"], Filters=[{"Name": "tag:kiln:role", "Values": ["pub"]}]
    )["Images"]
    prov.discard(ctx.image)
    prov.terminate(ctx.instance)


def register(region, role, versions):
    """AMIs tagged like kiln's, one per version, made from one throwaway instance."""
    client = ec2(region)
    base = ssm(region).get_parameter(Name=AL2023)["Parameter"]["Value"]
    instance = client.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ids = {}
    for version in versions:
        ids[version] = client.create_image(
            InstanceId=instance,
            Name=f"kiln-{role}-{version}",
            TagSpecifications=[
                {
                    "ResourceType": "image",
                    "Tags": [{"Key": "kiln:role", "Value": role}, {"Key": "kiln:version", "Value": version}],
                }
            ],
        )["ImageId"]
    client.terminate_instances(InstanceIds=[instance])
    return ids


def test_retire_keeps_n_per_region_and_never_latest(aws, tmp_path):
    prov = provider(tmp_path)
    ids = {
        region: register(region, "old", ["20250101.1", "20250102.1", "20250103.1", "20250104.1"])
        for region in ("us-east-1", "eu-west-1")
    }
    ssm("us-east-1").put_parameter(Name="/kiln/old/latest", Value=ids["us-east-1"]["20250101.1"], Type="String")
    listed = prov.images("old")
    assert [i.version for i in listed[:2]] == ["20250104.1", "20250104.1"]
    assert [i.region for i in listed[:2]] == ["us-east-1", "eu-west-1"]
    retired = prov.retire("old", keep=2)
    assert sorted((i.region, i.version) for i in retired) == [
        ("eu-west-1", "20250101.1"),
        ("eu-west-1", "20250102.1"),
        ("us-east-1", "20250102.1"),
    ]
    left = {(i.region, i.version) for i in prov.images("old")}
    assert ("us-east-1", "20250101.1") in left, "latest is never retired"
    assert {
        ("us-east-1", "20250104.1"),
        ("us-east-1", "20250103.1"),
        ("eu-west-1", "20250104.1"),
        ("eu-west-1", "20250103.1"),
    } <= left


def test_sweep_lists_then_removes_expired_temporaries_only(aws, tmp_path):
    prov = provider(tmp_path)
    # a build started four hours ago: its three-hour deadline passed an hour ago
    started = dt.datetime.now(dt.UTC) - dt.timedelta(hours=4)
    past = (started + dt.timedelta(hours=3)).isoformat(timespec="seconds")
    stale = launched(prov, tmp_path, "stale", build_id="20250101T000000-stale1", started=started)
    fresh_prov = provider(tmp_path)
    fresh = launched(fresh_prov, tmp_path, "fresh", build_id="20250101T000000-fresh1")
    ec2().create_volume(
        AvailabilityZone="us-east-1a",
        Size=1,
        TagSpecifications=[
            {
                "ResourceType": "volume",
                "Tags": [
                    {"Key": "kiln:temporary", "Value": "true"},
                    {"Key": "kiln:build-id", "Value": "20250101T000000-stale1"},
                    {"Key": "kiln:expires", "Value": past},
                ],
            }
        ],
    )

    def ours(lines):
        return [line for line in lines if "stale1" in line or "fresh1" in line]

    listed = ours(prov.sweep(apply=False))
    assert {line.split()[0] for line in listed} >= {"instance", "key", "security", "volume"}
    assert all("stale1" in line for line in listed)
    assert instance_of(stale.instance.id)["State"]["Name"] == "running", "dry run by default"
    removed = ours(prov.sweep(apply=True))
    assert removed == listed
    assert instance_of(stale.instance.id)["State"]["Name"] == "terminated"
    assert instance_of(fresh.instance.id)["State"]["Name"] == "running"
    assert not ours(prov.sweep(apply=False))
    fresh_prov.terminate(fresh.instance)


# --- versions and locks ------------------------------------------------------------------------
def test_versions_are_unique_under_concurrent_bakes(aws, tmp_path):
    prov = provider(tmp_path)
    register("us-east-1", "busy", [dt.datetime.now(dt.UTC).strftime("%Y%m%d") + ".4"])
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(prov.allocate_version("busy", a_claim()))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 6
    assert sorted(int(v.split(".")[1]) for v in got) == [5, 6, 7, 8, 9, 10]
    prov.release_version("busy", got[-1])
    assert prov.allocate_version("busy", a_claim()) not in set(got) - {got[-1]}


def test_lock_is_exclusive_and_expires(aws, tmp_path):
    prov = provider(tmp_path)
    assert prov.acquire_lock("locky", "a", wait=False)
    assert not prov.acquire_lock("locky", "b", wait=False)
    prov.release_lock("locky", "b")  # not b's: stays
    assert not prov.acquire_lock("locky", "b", wait=False)
    prov.release_lock("locky", "a")
    assert prov.acquire_lock("locky", "b", wait=False, ttl=-1)  # already expired
    assert prov.acquire_lock("locky", "c", wait=False)


# --- throttling and least privilege ------------------------------------------------------------
def test_whole_flow_under_throttling_uses_only_actions_in_the_iam_policy(aws, tmp_path):
    """A third of EC2 requests answered RequestLimitExceeded: botocore's retries carry the flow;
    every API action the provider calls must be in docs/iam-policy.json."""
    sess = session()
    throttle = Throttle(every=3).install(sess)
    calls = ApiCalls().install(sess)
    subnet = ec2().describe_subnets()["Subnets"][0]["SubnetId"]
    prov = provider(tmp_path, sess, subnet_id=subnet, share={"accounts": ["111122223333"]})
    import botocore.retries.standard as standard

    scale = standard.ExponentialBackoff._DEFAULT_BACKOFF_CONFIG
    saved = dict(scale)
    scale["throttling_base_scale"] = 0.01  # the retry path is real; only its sleeps are shortened
    try:
        assert prov.acquire_lock("flow", "me", wait=False)
        ctx = baked(prov, tmp_path, "flow")
        prov.host_key_expectation(ctx.instance)
        Publish().run(ctx)
        prov.images("flow")
        prov.retire("flow", keep=1)
        Publish().undo(ctx)
        prov.discard(ctx.image)
        prov.terminate(ctx.instance)
        prov.sweep(apply=True)
        prov.release_version("flow", ctx.version)
        prov.release_lock("flow", "me")
    finally:
        scale.update(saved)
    assert throttle.throttled >= 10
    missing = not_in_policy(calls.actions)
    assert not missing, f"actions called but not in docs/iam-policy.json: {sorted(missing)}"
    assert {"ec2:RunInstances", "ec2:CreateImage", "ec2:CopyImage", "ssm:PutParameter"} <= calls.actions


def test_a_retried_create_whose_answer_was_lost_is_not_an_error(aws, tmp_path):
    """Key pair and group names are the bake's own: a duplicate is our earlier request, executed."""
    prov = provider(tmp_path)
    ctx = context(prov, tmp_path, "retried")
    ctx.base = prov.resolve_base(ctx.compiled.base["aws"])
    name = f"kiln-build-{ctx.build_id}"
    ec2().import_key_pair(KeyName=name, PublicKeyMaterial=ctx.client_key.public_openssh.encode())
    group = ec2().create_security_group(GroupName=name, Description="lost answer")["GroupId"]
    ctx.instance = prov.launch(ctx.machine_spec())
    assert ctx.instance.security_group_id == group
    prov.terminate(ctx.instance)
    assert not ec2().describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]


def test_the_controllers_address_is_found_or_the_error_says_how_to_set_it():
    from kiln.controller.providers.aws.data_plane import CloudDataPlane

    plane = CloudDataPlane(checkip_url="http://127.0.0.1:9/")  # nothing listens on the discard port
    with pytest.raises(ProviderError, match="set providers.aws.ssh.cidrs"):
        plane.source_cidrs("public_ip")
    private = plane.source_cidrs("private_ip")  # the route's source address; no packet is sent
    assert len(private) == 1 and private[0].endswith("/32")


def test_host_key_waits_for_cloud_init_to_print_the_fingerprints(aws, tmp_path):
    sess = session()
    key = KeyPair.generate()
    reads = []

    def console(parsed, **kwargs):
        reads.append(1)
        if len(reads) >= 3:  # cloud-init's final stage has run by the third look
            parsed["Output"] = "boot...\n" + console_block([key.public_openssh], "ip-1")

    sess.events.register("after-call.ec2.GetConsoleOutput", console)
    prov = provider(tmp_path, sess, ssh={"console_timeout": 60})
    slept = []
    ctx = launched(prov, tmp_path, "slowconsole")
    prov.sleep = slept.append
    assert prov.host_key_expectation(ctx.instance).fingerprints == {key.fingerprint}
    assert len(reads) == 3 and slept == [5.0, 5.0]
    prov.terminate(ctx.instance)


def test_spot_is_one_time_tagged_and_not_stopped(aws, tmp_path):
    prov = provider(tmp_path, spot={"max_price": "0.05"})
    ctx = launched(prov, tmp_path, "spotty")
    params = prov.instances.run_parameters(ctx.machine_spec(), "sg-1", prov.temporary_tags(ctx.machine_spec()))
    assert params["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
            "MaxPrice": "0.05",
        },
    }
    assert "spot-instances-request" in [t["ResourceType"] for t in params["TagSpecifications"]]
    prov.prepare_snapshot(ctx.instance)
    assert instance_of(ctx.instance.id)["State"]["Name"] == "running", "one-time spot cannot be stopped"
    prov.terminate(ctx.instance)


def test_image_block_device_mappings(aws, tmp_path):
    prov = provider(
        tmp_path,
        extra_volumes=[{"device": "/dev/sdf", "size": 20}, {"device": "/dev/sdg", "size": 50, "in_image": False}],
        ephemeral_volumes=[{"device": "/dev/sdb", "name": "ephemeral0"}],
    )
    inst = AwsInstance(id="i-0", provider="aws", root_device="/dev/xvda")
    assert prov.amis.image_mappings(inst) == [
        {"DeviceName": "/dev/xvda", "Ebs": {"DeleteOnTermination": True}},
        {"DeviceName": "/dev/sdf", "Ebs": {"DeleteOnTermination": True}},
        {"DeviceName": "/dev/sdg", "NoDevice": ""},
        {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"},
    ]
    launch = prov.instances.launch_mappings(ssm().get_parameter(Name=AL2023)["Parameter"]["Value"])
    assert launch[0]["Ebs"]["VolumeType"] == "gp3" and launch[0]["Ebs"]["VolumeSize"]  # the AMI's own size
    assert launch[3] == {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}
