"""AMI kinds: x86_64 and arm64 in one bake, instance-store refused, a base parameter that does not exist.

Against a moto server over HTTP, with real containers as the instances (the sandbox; both
architectures' machines are this host's x86_64 containers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse

from kiln.controller.bake import bake
from kiln.controller.context import BakeOptions
from kiln.controller.manifest import read_images, record_images
from kiln.controller.providers.aws import make_aws_provider
from kiln.controller.providers.base import UnknownBase
from kiln.controller.sandbox import sandbox_client
from tests.aws_harness import ApiCalls, not_in_policy
from tests.playbooks import invoke, make_playbooks

pytestmark = pytest.mark.slow

REGIONS = ["us-east-1", "eu-west-1"]
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
TWO_ARCHES = """\
providers:
  aws:
    regions: [us-east-1, eu-west-1]
    architectures: [x86_64, arm64]
    instance_types: {x86_64: [t3.micro], arm64: [t4g.micro]}
retention:
  keep: 1
"""
TINY = {
    "role.yml": f'description: a tiny role for both architectures\nbase:\n  aws:\n    ssm_parameter: "{AL2023}"\n',
    "steps.yml": '- name: marker\n  copy: {content: "hello\\n", dest: /etc/kiln-marker}\n',
    "verify.yml": '- file: /etc/kiln-marker\n  contains: ["hello"]\n',
}


def client(url: str, service: str, region: str = "us-east-1"):
    return sandbox_client(service, region, url)


def amis_of(url: str, role: str, region: str = "us-east-1") -> list[dict]:
    return client(url, "ec2", region).describe_images(
        Owners=["self"], Filters=[{"Name": "tag:kiln:role", "Values": [role]}]
    )["Images"]


def parameter(url: str, name: str, region: str = "us-east-1") -> str:
    found = client(url, "ssm", region).get_parameters(Names=[name])["Parameters"]
    return found[0]["Value"] if found else ""


def live_instances(url: str, build_id: str) -> list[str]:
    rows = client(url, "ec2").describe_instances(
        Filters=[
            {"Name": "tag:kiln:build-id", "Values": [build_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )["Reservations"]
    return [i["InstanceId"] for r in rows for i in r["Instances"]]


def tags(row: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in row.get("Tags") or []}


class Refuse:
    """An EC2 call answered with a non-retried error (HTTP 400) when ``when(query)`` holds: the cloud
    refusing one architecture's request, injected on the session like tests/aws_harness.fail_call."""

    def __init__(self, operation: str, when, code: str = "InvalidParameterValue") -> None:
        self.operation, self.when, self.code, self.hits = operation, when, code, 0

    def install(self, sess) -> Refuse:
        sess.events.register_first(f"before-call.ec2.{self.operation}", self)
        return self

    def __call__(self, params, **kwargs):
        body = params.get("body") or {}
        if not (isinstance(body, dict) and self.when(body)):
            return None
        self.hits += 1
        http = AWSResponse("https://ec2.amazonaws.com/", 400, {}, None)
        error = {"Code": self.code, "Message": f"injected {self.code} for {self.operation}"}
        return http, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}


def arch_provider(tmp_path: Path):
    raw = {
        "regions": REGIONS,
        "architectures": ["x86_64", "arm64"],
        "instance_types": {"x86_64": ["t3.micro"], "arm64": ["t4g.micro"]},
    }
    return make_aws_provider(raw, sandbox=True, state_dir=tmp_path / "builds")


# --- two architectures -------------------------------------------------------------------------
def test_two_architectures_give_two_amis_two_pointers_one_version(sandbox_env, engine, tmp_path):
    """Through the command line: one version, an AMI per architecture (Architecture and kiln:arch right)
    in each region, ``latest`` -> x86_64, ``latest/arm64`` -> arm64; a second bake retires the first
    version of both architectures (retention counts versions per architecture)."""
    url = sandbox_env
    playbooks = make_playbooks(tmp_path, TINY, role="duo", kiln_yaml=TWO_ARCHES)
    work = tmp_path / "work"
    work.mkdir()
    (work / "playbooks").symlink_to(playbooks)
    proc = invoke(work, "bake", "--role", "duo", "--provider", "aws", "--sandbox", env={"KILN_JSON": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "run as local x86_64 containers" in proc.stderr, "the sandbox says arm64 runs as x86_64 containers"

    entries = json.loads((work / "builds" / "manifest.json").read_text())
    version = entries[0]["version"]
    assert {e["version"] for e in entries} == {version}
    assert sorted((e["region"], e["arch"]) for e in entries) == sorted(
        (r, a) for r in REGIONS for a in ("x86_64", "arm64")
    )
    for region in REGIONS:
        rows = amis_of(url, "duo", region)
        by_arch = {tags(r)["kiln:arch"]: r for r in rows}
        assert sorted(by_arch) == ["arm64", "x86_64"] and len(rows) == 2
        for arch, row in by_arch.items():
            assert row["Architecture"] == arch and tags(row)["kiln:version"] == version
        assert by_arch["x86_64"]["Name"] == f"kiln-duo-{version}"
        assert by_arch["arm64"]["Name"] == f"kiln-duo-{version}-arm64"
        assert parameter(url, "/kiln/duo/latest", region) == by_arch["x86_64"]["ImageId"]
        assert parameter(url, "/kiln/duo/latest/arm64", region) == by_arch["arm64"]["ImageId"]
        entry = {e["arch"]: e for e in entries if e["region"] == region}
        assert entry["arm64"]["base"]["id"] != entry["x86_64"]["base"]["id"], "each architecture has its own base"
        for arch, name in (("x86_64", f"{version}.json"), ("arm64", f"{version}.arm64.json")):
            artifact = (work / "builds" / "packages" / "duo" / name).read_bytes()
            assert tags(by_arch[arch])["kiln:packages-sha256"] == hashlib.sha256(artifact).hexdigest(), arch
    assert not live_instances(url, entries[0]["build_id"])

    images_json = tmp_path / "images.json"
    prov = arch_provider(tmp_path)
    record_images(images_json, [i for i in prov.images("duo") if i.version == version])
    regions = read_images(images_json)["duo"][version]
    assert {r: sorted(a) for r, a in regions.items()} == {r: ["arm64", "x86_64"] for r in REGIONS}

    second = invoke(work, "bake", "--role", "duo", "--provider", "aws", "--sandbox", timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    for region in REGIONS:
        rows = amis_of(url, "duo", region)
        assert len(rows) == 2 and version not in {tags(r)["kiln:version"] for r in rows}, "first version retired"
        newest = {tags(r)["kiln:arch"]: r["ImageId"] for r in rows}
        assert parameter(url, "/kiln/duo/latest/arm64", region) == newest["arm64"]


def test_one_architecture_failing_publishes_neither(sandbox_env, engine, tmp_path):
    """arm64's AMI cannot be made: x86_64's chain is cancelled or its AMI removed; no AMI of the bake is
    left, both pointers stay where the previous bake put them, the version is given back."""
    url = sandbox_env
    playbooks = make_playbooks(tmp_path, TINY, role="half", kiln_yaml=TWO_ARCHES)
    options = BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks)
    first = bake("half", "aws", options, provider=arch_provider(tmp_path))
    assert first.exit_code == 0, first.error
    before = {name: parameter(url, name) for name in ("/kiln/half/latest", "/kiln/half/latest/arm64")}
    assert all(before.values())

    prov = arch_provider(tmp_path)
    refused = Refuse("CopyImage", lambda q: str(q.get("Name", "")).endswith("-arm64")).install(prov.session)
    result = bake("half", "aws", options, provider=prov)
    assert result.exit_code == 1 and refused.hits, result.error
    assert "injected InvalidParameterValue" in result.error
    ctx = result.ctx
    for region in REGIONS:
        left = [r["ImageId"] for r in amis_of(url, "half", region) if tags(r)["kiln:build-id"] == ctx.build_id]
        assert not left, f"AMIs of the failed bake left in {region}: {left}"
    assert {name: parameter(url, name) for name in before} == before, "a latest pointer moved"
    assert not live_instances(url, ctx.build_id)
    assert not parameter(url, f"/kiln/half/versions/{ctx.version}"), "the version is given back"

    prov = arch_provider(tmp_path)
    Refuse("CreateImage", lambda q: str(q.get("Name", "")).endswith("-arm64")).install(prov.session)
    result = bake("half", "aws", options, provider=prov)
    assert result.exit_code == 1 and result.error.startswith("build each architecture: arm64:"), result.error
    ctx = result.ctx
    for region in REGIONS:
        left = [r["ImageId"] for r in amis_of(url, "half", region) if tags(r)["kiln:build-id"] == ctx.build_id]
        assert not left, f"AMIs of the failed bake left in {region}: {left}"
    assert {name: parameter(url, name) for name in before} == before, "a latest pointer moved"
    assert not live_instances(url, ctx.build_id)
    assert not engine.containers(f"kiln.build-id={ctx.build_id}")


def test_sweep_never_removes_what_latest_arm64_names(sandbox_env, engine, tmp_path):
    """An over reservation whose build's arm64 AMI is what ``latest/arm64`` names: sweep leaves that AMI.
    Every call of the bake, a misspelt base's suggestions and the sweep is in docs/iam-policy.json."""
    from kiln.controller.ownership import BuildClaim
    from kiln.controller.providers.aws.tags import claim_value

    url = sandbox_env
    playbooks = make_playbooks(tmp_path, TINY, role="keep", kiln_yaml=TWO_ARCHES)
    options = BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks)
    prov = arch_provider(tmp_path)
    calls = ApiCalls().install(prov.session)
    done = bake("keep", "aws", options, provider=prov)
    assert done.exit_code == 0, done.error
    with pytest.raises(UnknownBase, match="al2023-ami-kernel-default-arm64"):
        prov.resolve_base(
            {"ssm_parameter": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-defualt-{arch}"}, "arm64"
        )
    arm = {i.region: i.id for i in done.ctx.published if i.arch == "arm64"}
    claim = BuildClaim(build_id=done.ctx.build_id, expires="2000-01-01T00:00:00+00:00")  # over long ago
    ssm = client(url, "ssm")
    ssm.put_parameter(
        Name=f"/kiln/keep/versions/{done.ctx.version}", Value=claim_value(claim, ended=True), Type="String"
    )
    ssm.delete_parameter(Name="/kiln/keep/latest")  # only the arm64 pointer proves the AMIs are published
    for region in REGIONS:
        if region != "us-east-1":
            client(url, "ssm", region).delete_parameter(Name="/kiln/keep/latest")
    sweeper = arch_provider(tmp_path)
    calls.install(sweeper.session)
    swept = sweeper.sweep(apply=True)
    assert not (missing := not_in_policy(calls.actions)), f"docs/iam-policy.json lacks {sorted(missing)}"
    assert any(f"/kiln/keep/versions/{done.ctx.version}" in line for line in swept), swept
    for region, image_id in arm.items():
        assert image_id in {r["ImageId"] for r in amis_of(url, "keep", region)}, f"latest/arm64 swept in {region}"


# --- refused before anything is launched ---------------------------------------------------------
def test_instance_store_root_is_refused_with_its_position_and_reason(sandbox_env, engine, tmp_path):
    kiln_yaml = "providers:\n  aws:\n    regions: [us-east-1]\n    root_device_type: instance-store\n"
    playbooks = make_playbooks(tmp_path, TINY, role="store", kiln_yaml=kiln_yaml)
    result = bake("store", "aws", BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks), sandbox=True)
    assert result.exit_code == 2 and result.ctx is None
    assert f"{playbooks / 'kiln.yaml'}:4:23: error: " in result.error, result.error
    assert "instance-store-backed AMIs" in result.error and "S3" in result.error, result.error
    assert "ephemeral_volumes" in result.error


def test_a_base_parameter_that_does_not_exist_lists_the_closest_real_ones(sandbox_env, engine, tmp_path):
    """The seed's own example name: exit 2 pinned in role.yml, the real AL2023 names listed, nothing launched."""
    missing = "/aws/service/ami-amazon-linux-latest/amzn2023-ami-hvm-x86_64-gp2"
    role = {**TINY, "role.yml": f"description: the seed's example\nbase:\n  aws: {{ssm_parameter: {missing}}}\n"}
    playbooks = make_playbooks(tmp_path, role, role="seed", kiln_yaml="providers:\n  aws:\n    regions: [us-east-1]\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "playbooks").symlink_to(playbooks)
    proc = invoke(work, "bake", "--role", "seed", "--provider", "aws", "--sandbox", env={"KILN_JSON": "1"})
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert "roles/seed/role.yml:3:24: error: " in proc.stdout, proc.stdout
    assert f"SSM parameter {missing} does not exist" in proc.stdout
    assert "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64" in proc.stdout
    assert '"stage": "launch instance"' not in out
    instances = client(sandbox_env, "ec2").describe_instances()["Reservations"]
    names = [
        tag["Value"] for r in instances for i in r["Instances"] for tag in i.get("Tags", []) if tag["Key"] == "Name"
    ]
    assert not [name for name in names if "-seed-" in name], names  # this bake's own: others share the machine
