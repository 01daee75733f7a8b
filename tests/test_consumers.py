"""Consumers of a new image (launch templates, instance refresh, git-ops file), promote and in_use,
against a moto server over HTTP and real git repositories; builds/images.json under concurrent writers.

moto 5.2.5 has no StartInstanceRefresh / DescribeInstanceRefreshes: :class:`RefreshEndpoint` answers
only those two calls through a botocore before-call hook, as AWS would; every other call reaches moto.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import subprocess
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse

from kiln.controller import consumers, manifest
from kiln.controller.config import load_config
from kiln.controller.consumers import ConsumerError, NotRetained, PublishSettings, parse_publish
from kiln.controller.model import Diagnostic, Image, InvalidInput
from tests.aws_harness import AL2023, _Raw, provider
from tests.playbooks import TINY_ROLE, invoke, make_playbooks

REGIONS = ("us-east-1", "eu-west-1")


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").disabled = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """An AwsProvider (two regions) whose clients reach the moto server over HTTP."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    prov = provider(tmp_path)
    yield prov
    prov.close()


def diag(keys, message):
    return Diagnostic("kiln.yaml", 1, 1, f"{'.'.join(map(str, keys))}: {message}")


def publish_settings(raw) -> PublishSettings:
    return parse_publish(raw, diag)


def register(prov, role, versions, regions=REGIONS):
    """AMIs tagged like kiln's: {region: {version: id}}."""
    ids = {}
    for region in regions:
        ec2 = prov.ec2(region)
        base = prov.ssm(region).get_parameter(Name=AL2023)["Parameter"]["Value"]
        instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        ids[region] = {}
        for version in versions:
            tags = [{"Key": "kiln:role", "Value": role}, {"Key": "kiln:version", "Value": version}]
            ids[region][version] = ec2.create_image(
                InstanceId=instance,
                Name=f"kiln-{role}-{version}",
                TagSpecifications=[{"ResourceType": "image", "Tags": tags}],
            )["ImageId"]
        ec2.terminate_instances(InstanceIds=[instance])
    return ids


def images_of(ids, role, version):
    return [Image(id=ids[r][version], role=role, version=version, provider="aws", region=r) for r in ids]


def set_latest(prov, role, ids, version):
    for region in ids:
        prov.ssm(region).put_parameter(
            Name=f"/kiln/{role}/latest",
            Value=ids[region][version],
            Type="String",
            DataType="aws:ec2:image",
            Overwrite=True,
        )


def template(prov, region, name, image_id, instance_type="t3.micro"):
    row = prov.ec2(region).create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": image_id, "InstanceType": instance_type}
    )
    return row["LaunchTemplate"]["LaunchTemplateId"]


def versions(prov, region, template_id):
    rows = prov.ec2(region).describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"]
    return {int(r["VersionNumber"]): r for r in rows}


def default_version(prov, region, template_id):
    row = prov.ec2(region).describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"][0]
    return int(row["DefaultVersionNumber"])


def group(prov, region, name, template_name, version="$Default", mixed=False):
    spec = {"LaunchTemplateName": template_name, "Version": version}
    kwargs = (
        {"MixedInstancesPolicy": {"LaunchTemplate": {"LaunchTemplateSpecification": spec}}}
        if mixed
        else {"LaunchTemplate": spec}
    )
    prov.client("autoscaling", region).create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=0, MaxSize=2, DesiredCapacity=0, AvailabilityZones=[f"{region}a"], **kwargs
    )


class RefreshEndpoint:
    """StartInstanceRefresh / DescribeInstanceRefreshes, which moto lacks, answered as AWS does."""

    def __init__(self, statuses=("Successful",)):
        self.started: list[dict] = []
        self.statuses = list(statuses)
        self.described = 0

    def install(self, prov):
        for region in REGIONS:
            events = prov.client("autoscaling", region).meta.events
            events.register_first("before-call.autoscaling.StartInstanceRefresh", self.start)
            events.register_first("before-call.autoscaling.DescribeInstanceRefreshes", self.describe)
        return self

    @staticmethod
    def _answer(parsed):
        return AWSResponse("https://autoscaling.amazonaws.com/", 200, {}, _Raw(b"")), {
            **parsed,
            "ResponseMetadata": {"HTTPStatusCode": 200},
        }

    def start(self, params, **kwargs):
        self.started.append(dict(params["body"]))
        return self._answer({"InstanceRefreshId": f"refresh-{len(self.started)}"})

    def describe(self, params, **kwargs):
        status = self.statuses[min(self.described, len(self.statuses) - 1)]
        self.described += 1
        return self._answer(
            {
                "InstanceRefreshes": [
                    {
                        "InstanceRefreshId": params["body"]["InstanceRefreshIds.member.1"],
                        "Status": status,
                        "PercentageComplete": 40,
                    }
                ]
            }
        )


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def infra(tmp_path):
    """Another git working tree, with a tfvars file another role already owns."""
    repo = tmp_path / "infra"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ops@example.com")
    git(repo, "config", "user.name", "ops")
    (repo / "main.tf").write_text("# infra\n")
    (repo / "images.auto.tfvars.json").write_text(
        json.dumps({"kiln_images": {"db": {"version": "20250101.1", "us-east-1": "ami-0db"}}, "other": 1})
    )
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "initial")
    return repo


# --- settings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, message",
    [
        ({"launch_templates": "web-lt"}, "providers.aws.publish.launch_templates must be a list"),
        ({"launch_templates": [{"set_default": True}]}, "providers.aws.publish.launch_templates[0].name is required"),
        ({"launch_templates": [{"name": "a", "set_default": "yes"}]}, "set_default must be true or false"),
        (
            {"instance_refresh": {"asg": "web-asg", "min_healthy_percentage": 120}},
            "min_healthy_percentage must be between 0 and 100, got 120",
        ),
        (
            {"instance_refresh": {"min_healthy_percentage": 90}},
            "providers.aws.publish.instance_refresh.asg is required",
        ),
        ({"gitops": {"path": "x.json", "comit": True}}, "unknown setting 'providers.aws.publish.gitops.comit'"),
        ({"gitops": {"path": "x.json", "key": "1bad"}}, "must be a Terraform variable name"),
        ({"launch_template": []}, "did you mean"),
        ({"launch_templates": ["lt", {"name": "lt"}]}, "launch template 'lt' is listed twice"),
        ({"launch_templates": [3]}, "providers.aws.publish.launch_templates[0] must be a template name or a mapping"),
        ({"gitops": {"path": "x.yaml"}}, "providers.aws.publish.gitops.path must be a JSON file"),
        ({"instance_refresh": {"asg": " "}}, "providers.aws.publish.instance_refresh.asg must be a group name"),
        ("lt", "providers.aws.publish must be a mapping like"),
    ],
)
def test_bad_settings_are_invalid_input_naming_the_key(raw, message):
    with pytest.raises(InvalidInput) as err:
        publish_settings(raw)
    assert message in err.value.render()


def test_publish_is_declared_once_and_pinned_where_it_is_written(tmp_path):
    """kiln.yaml's providers.aws.publish is judged when kiln.yaml loads, at the line and column of the value."""
    path = tmp_path / "kiln.yaml"
    path.write_text("providers:\n  aws:\n    publish:\n      instance_refresh: {asg: g, min_healthy_percentage: 101}\n")
    with pytest.raises(InvalidInput) as err:
        load_config(path)
    [found] = err.value.diagnostics
    assert (found.line, found.column) == (4, 58), found
    assert (
        found.message
        == "providers.aws.publish.instance_refresh.min_healthy_percentage must be between 0 and 100, got 101"
    )


def test_validate_reports_a_bad_role_publish_at_its_line_and_column(tmp_path):
    """role.yml's publish: is the same declaration: `invoke validate` refuses it (exit 2) before any bake."""
    role_yml = TINY_ROLE + "publish:\n  gitops: {path: images.yaml}\n  instance_refresh: {asg: web-asg, wiat: true}\n"
    playbooks = make_playbooks(tmp_path, {"role.yml": role_yml, "steps.yml": '- command: "true"\n'}, role="pub")
    checked = invoke(tmp_path, "validate", "--role", "pub", playbooks=playbooks, timeout=120)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert (
        "roles/pub/role.yml:5:18: error: publish.gitops.path must be a JSON file (e.g. images.auto.tfvars.json), "
        "got 'images.yaml'" in checked.stdout
    ), checked.stdout
    assert (
        "roles/pub/role.yml:6:36: error: unknown setting 'publish.instance_refresh.wiat' (did you mean 'wait'?)"
        in checked.stdout
    ), checked.stdout


def test_role_publish_overrides_kiln_yaml_key_by_key():
    base = publish_settings({"launch_templates": ["web-lt"], "gitops": {"path": "../infra/x.json"}})
    role = parse_publish({"gitops": None, "instance_refresh": {"asg": "web-asg"}}, diag, ("publish",))
    merged = consumers.effective(base, role)
    assert [t.name for t in merged.launch_templates] == ["web-lt"]
    assert merged.gitops is None, "a role turns off what kiln.yaml sets with a null"
    assert merged.instance_refresh.asg == "web-asg" and merged.instance_refresh.min_healthy_percentage == 90
    assert merged.origin["gitops"][1] == ("publish", "gitops")


# --- launch templates and the refresh ----------------------------------------------------
def test_launch_template_versions_per_region(aws, tmp_path):
    ids = register(aws, "lt", ["20261201.1", "20261201.2"])
    web = {r: template(aws, r, "lt-web", ids[r]["20261201.1"]) for r in REGIONS}
    only_east = template(aws, "us-east-1", "lt-side", ids["us-east-1"]["20261201.1"])
    settings = publish_settings({"launch_templates": [{"name": "lt-web", "set_default": True}, {"name": "lt-side"}]})
    consumers.check_before_launch(aws, settings, tmp_path)

    report = consumers.publish(aws, "lt", "20261201.2", images_of(ids, "lt", "20261201.2"), settings, tmp_path)

    for region in REGIONS:
        made = versions(aws, region, web[region])[2]
        assert made["LaunchTemplateData"]["ImageId"] == ids[region]["20261201.2"]
        assert made["VersionDescription"] == "kiln lt 20261201.2"
        assert default_version(aws, region, web[region]) == 2
    side = versions(aws, "us-east-1", only_east)
    assert side[2]["LaunchTemplateData"]["ImageId"] == ids["us-east-1"]["20261201.2"]
    assert default_version(aws, "us-east-1", only_east) == 1, "set_default is off: the default stays"
    assert sorted((t.name, t.region, t.version) for t in report.templates) == [
        ("lt-side", "us-east-1", 2),
        ("lt-web", "eu-west-1", 2),
        ("lt-web", "us-east-1", 2),
    ]

    consumers.withdraw(aws, report, settings)  # moto lacks DeleteLaunchTemplateVersions: only the default is seen
    assert default_version(aws, "eu-west-1", web["eu-west-1"]) == 1


def test_a_launch_template_missing_everywhere_is_refused_before_launch(aws, tmp_path):
    settings = publish_settings({"launch_templates": [{"name": "lt-nowhere"}]})
    with pytest.raises(InvalidInput) as err:
        consumers.check_before_launch(aws, settings, tmp_path)
    assert "launch template lt-nowhere exists in none of the regions us-east-1, eu-west-1" in err.value.render()


def test_moto_lacks_the_instance_refresh_calls(aws):
    with pytest.raises(Exception):  # noqa: B017 - documents the gap RefreshEndpoint fills
        aws.client("autoscaling", "us-east-1").start_instance_refresh(AutoScalingGroupName="probe-asg")


@pytest.mark.parametrize("asg_version, mixed", [("1", False), ("$Latest", True)])
def test_instance_refresh_started_onto_the_new_version(aws, tmp_path, asg_version, mixed):
    suffix = "mixed" if mixed else "plain"
    ids = register(aws, f"ir{suffix}", ["20261201.1", "20261201.2"], regions=("us-east-1",))
    lt_id = template(aws, "us-east-1", f"ir-lt-{suffix}", ids["us-east-1"]["20261201.1"])
    group(aws, "us-east-1", f"ir-asg-{suffix}", f"ir-lt-{suffix}", asg_version, mixed)
    endpoint = RefreshEndpoint().install(aws)
    settings = publish_settings(
        {
            "launch_templates": [{"name": f"ir-lt-{suffix}", "set_default": True}],
            "instance_refresh": {"asg": f"ir-asg-{suffix}", "min_healthy_percentage": 75},
        }
    )
    consumers.check_before_launch(aws, settings, tmp_path)

    report = consumers.publish(
        aws, f"ir{suffix}", "20261201.2", images_of(ids, f"ir{suffix}", "20261201.2"), settings, tmp_path
    )

    assert [(r.asg, r.region, r.refresh_id) for r in report.refreshes] == [
        (f"ir-asg-{suffix}", "us-east-1", "refresh-1")
    ]
    sent = endpoint.started[0]
    assert sent["AutoScalingGroupName"] == f"ir-asg-{suffix}"
    assert str(sent["Preferences.MinHealthyPercentage"]) == "75"
    if asg_version == "1":  # a pinned group is pinned to kiln's new version, which it keeps after the refresh
        assert sent["DesiredConfiguration.LaunchTemplate.LaunchTemplateId"] == lt_id
        assert str(sent["DesiredConfiguration.LaunchTemplate.Version"]) == "2"
    else:  # $Latest already follows the new version
        assert not any(k.startswith("DesiredConfiguration") for k in sent)
    assert endpoint.described == 0, "kiln does not wait unless asked"


def test_a_group_on_a_template_kiln_does_not_update_is_refused_up_front(aws, tmp_path):
    ids = register(aws, "refuse", ["20261201.1"], regions=("us-east-1",))
    updated = template(aws, "us-east-1", "refuse-lt", ids["us-east-1"]["20261201.1"])
    template(aws, "us-east-1", "refuse-other-lt", ids["us-east-1"]["20261201.1"])
    group(aws, "us-east-1", "refuse-asg", "refuse-other-lt")
    settings = publish_settings(
        {"launch_templates": [{"name": "refuse-lt"}], "instance_refresh": {"asg": "refuse-asg"}}
    )
    with pytest.raises(InvalidInput) as err:
        consumers.check_before_launch(aws, settings, tmp_path)
    assert (
        "asg refuse-asg uses launch template refuse-other-lt, which kiln does not update; add it to "
        "publish.launch_templates"
    ) in err.value.render()
    assert set(versions(aws, "us-east-1", updated)) == {1}, "nothing was changed"

    missing = publish_settings({"launch_templates": [{"name": "refuse-lt"}], "instance_refresh": {"asg": "no-asg"}})
    with pytest.raises(InvalidInput, match="Auto Scaling group no-asg exists in none of the regions"):
        consumers.check_before_launch(aws, missing, tmp_path)


def test_waiting_is_bounded_and_says_what_still_runs(aws, tmp_path, capsys):
    ids = register(aws, "wait", ["20261201.1", "20261201.2"], regions=("us-east-1",))
    template(aws, "us-east-1", "wait-lt", ids["us-east-1"]["20261201.1"])
    group(aws, "us-east-1", "wait-asg", "wait-lt", "$Latest")
    endpoint = RefreshEndpoint(statuses=("InProgress",)).install(aws)
    settings = publish_settings(
        {
            "launch_templates": ["wait-lt"],
            "instance_refresh": {"asg": "wait-asg", "wait": True, "wait_timeout": 1, "poll_interval": 0.2},
        }
    )
    report = consumers.publish(aws, "wait", "20261201.2", images_of(ids, "wait", "20261201.2"), settings, tmp_path)
    assert report.refreshes[0].status == "InProgress"
    assert 3 <= endpoint.described <= 8
    assert "still running after the wait timeout" in capsys.readouterr().out

    endpoint.statuses, endpoint.described = ["InProgress", "Failed"], 0
    with pytest.raises(ConsumerError, match="instance refresh refresh-2 of wait-asg in us-east-1 ended Failed"):
        consumers.publish(aws, "wait", "20261201.2", images_of(ids, "wait", "20261201.2"), settings, tmp_path)


# --- git-ops -------------------------------------------------------------------------------
def test_gitops_file_merged_and_committed_alone(infra, tmp_path):
    settings = publish_settings({"gitops": {"path": "infra/images.auto.tfvars.json", "commit": True}})
    images = [
        Image(id="ami-0e1", role="web", version="20261201.2", provider="aws", region="us-east-1"),
        Image(id="ami-0e2", role="web", version="20261201.2", provider="aws", region="eu-west-1"),
        Image(id="ami-0a1", role="web", version="20261201.2", provider="aws", region="us-east-1", arch="arm64"),
    ]
    consumers.check_before_launch(None, settings, tmp_path)
    report = consumers.publish(None, "web", "20261201.2", images, settings, tmp_path)

    written = json.loads((infra / "images.auto.tfvars.json").read_text())
    assert written == {
        "other": 1,
        "kiln_images": {
            "db": {"version": "20250101.1", "us-east-1": "ami-0db"},
            "web": {
                "version": "20261201.2",
                "us-east-1": "ami-0e1",
                "eu-west-1": "ami-0e2",
                "us-east-1/arm64": "ami-0a1",
            },
        },
    }
    assert git(infra, "log", "-1", "--format=%s").strip() == "kiln: web 20261201.2"
    assert git(infra, "show", "--name-only", "--format=", "HEAD").split() == ["images.auto.tfvars.json"]
    assert git(infra, "rev-parse", "HEAD").strip() == report.gitops.commit
    assert git(infra, "status", "--porcelain") == ""


def test_gitops_refuses_a_dirty_tree_or_no_tree_before_writing(infra, tmp_path):
    before = (infra / "images.auto.tfvars.json").read_text()
    (infra / "main.tf").write_text("# someone's work in progress\n")
    settings = publish_settings({"gitops": {"path": str(infra / "images.auto.tfvars.json"), "commit": True}})
    with pytest.raises(InvalidInput, match=r"has uncommitted changes \(M main.tf\)"):
        consumers.check_before_launch(None, settings, tmp_path)
    with pytest.raises(ConsumerError, match="uncommitted changes"):
        consumers.publish(None, "web", "20261201.2", [], settings, tmp_path)
    assert (infra / "images.auto.tfvars.json").read_text() == before
    assert git(infra, "log", "--format=%s").split("\n")[0] == "initial"

    outside = tmp_path / "plain"
    outside.mkdir()
    loose = publish_settings({"gitops": {"path": str(outside / "x.auto.tfvars.json"), "commit": True}})
    with pytest.raises(ConsumerError, match="is not inside a git working tree"):
        consumers.publish(None, "web", "20261201.2", [], loose, tmp_path)
    assert not (outside / "x.auto.tfvars.json").exists()


# --- promote and in_use --------------------------------------------------------------------
def test_promote_rolls_latest_templates_and_gitops_back(aws, infra, tmp_path, capsys):
    ids = register(aws, "promo", ["20261201.1", "20261201.2", "20261202.1"])
    set_latest(aws, "promo", ids, "20261202.1")
    lts = {r: template(aws, r, "promo-lt", ids[r]["20261202.1"]) for r in REGIONS}
    settings = publish_settings(
        {
            "launch_templates": [{"name": "promo-lt", "set_default": True}],
            "gitops": {"path": "infra/images.auto.tfvars.json", "commit": True},
        }
    )

    report = consumers.promote(aws, "promo", "20261201.2", settings, tmp_path)

    for region in REGIONS:
        value = aws.ssm(region).get_parameter(Name="/kiln/promo/latest")["Parameter"]["Value"]
        assert value == ids[region]["20261201.2"]
        default = default_version(aws, region, lts[region])
        made = versions(aws, region, lts[region])[default]
        assert default == 2 and made["LaunchTemplateData"]["ImageId"] == ids[region]["20261201.2"]
        assert made["VersionDescription"] == "kiln promo 20261201.2 (promoted)"
    tfvars = json.loads((infra / "images.auto.tfvars.json").read_text())["kiln_images"]["promo"]
    assert tfvars == {"version": "20261201.2", **{r: ids[r]["20261201.2"] for r in REGIONS}}
    assert git(infra, "log", "-1", "--format=%s").strip() == "kiln: promote promo to 20261201.2"
    assert "rollback: latest moves back to an older version" in capsys.readouterr().out
    assert set(report.latest.values()) == {ids[r]["20261201.2"] for r in REGIONS}


def test_promote_refuses_a_version_that_is_gone(aws, tmp_path):
    ids = register(aws, "gone", ["20261201.1", "20261201.2"])
    set_latest(aws, "gone", ids, "20261201.2")
    aws.remove_image("eu-west-1", ids["eu-west-1"]["20261201.1"])  # retired there
    settings = PublishSettings()
    with pytest.raises(NotRetained, match="gone has no version 20250101.1 .*; retained: 20261201.2, 20261201.1"):
        consumers.promote(aws, "gone", "20250101.1", settings, tmp_path)
    with pytest.raises(
        NotRetained,
        match=r"gone 20261201.1 is gone from eu-west-1 .*versions in every region: "
        r"20261201.2$",
    ):
        consumers.promote(aws, "gone", "20261201.1", settings, tmp_path)
    assert (
        aws.ssm("us-east-1").get_parameter(Name="/kiln/gone/latest")["Parameter"]["Value"]
        == ids["us-east-1"]["20261201.2"]
    ), "a refused promote moves nothing"


def test_in_use_names_latest_and_default_template_versions(aws, tmp_path):
    ids = register(aws, "used", ["20261201.1", "20261201.2", "20261201.3", "20261201.4"])
    set_latest(aws, "used", ids, "20261201.4")
    aws.ssm("eu-west-1").put_parameter(
        Name="/kiln/used/latest/arm64", Value=ids["eu-west-1"]["20261201.3"], Type="String", DataType="aws:ec2:image"
    )
    lt = template(aws, "us-east-1", "used-lt", ids["us-east-1"]["20261201.1"])
    aws.ec2("us-east-1").create_launch_template_version(
        LaunchTemplateId=lt, LaunchTemplateData={"ImageId": ids["us-east-1"]["20261201.2"]}
    )
    used = consumers.in_use(aws, "used")
    expected = {
        ids["us-east-1"]["20261201.4"],
        ids["eu-west-1"]["20261201.4"],
        ids["eu-west-1"]["20261201.3"],
        ids["us-east-1"]["20261201.1"],
    }
    assert expected <= used
    assert ids["us-east-1"]["20261201.2"] not in used, "a template's non-default version is not in use"
    assert ids["eu-west-1"]["20261201.1"] not in used


# --- builds/images.json ----------------------------------------------------------------------
def _record_many(path: str, worker: int) -> None:
    for n in range(15):
        manifest.record_images(
            Path(path),
            [
                Image(
                    id=f"ami-{worker}-{n}-e",
                    role=f"role{worker % 3}",
                    version=f"2026120{worker}.{n + 1}",
                    provider="aws",
                    region="us-east-1",
                ),
                Image(
                    id=f"ami-{worker}-{n}-a",
                    role=f"role{worker % 3}",
                    version=f"2026120{worker}.{n + 1}",
                    provider="aws",
                    region="us-east-1",
                    arch="arm64",
                ),
            ],
        )


def test_images_json_concurrent_bakes_lose_nothing(tmp_path):
    path = tmp_path / "builds" / "images.json"
    manifest.record_images(path, [Image(id="localhost/kiln/web:1", role="web", version="20261130.1", provider="local")])
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_record_many, args=(str(path), w)) for w in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    document = json.loads(path.read_text())
    assert document["web"] == {"20261130.1": {"local": {"x86_64": "localhost/kiln/web:1"}}}
    for worker in range(6):
        for n in range(15):
            entry = document[f"role{worker % 3}"][f"2026120{worker}.{n + 1}"]["us-east-1"]
            assert entry == {"x86_64": f"ami-{worker}-{n}-e", "arm64": f"ami-{worker}-{n}-a"}


# --- wired into the bake: `invoke bake --provider aws --sandbox` -------------------------------
BAKED_ROLE = f"description: handed to consumers\nbase:\n  aws: {{ssm_parameter: {AL2023}}}\n"
BAKED_STEPS = '- name: marker\n  copy: {content: "hello\\n", dest: /etc/kiln-marker}\n'
BAKED_CHECKS = '- file: /etc/kiln-marker\n  contains: ["hello"]\n'


@pytest.fixture
def sandbox_images(moto_url, engine):
    """The local images the sandbox makes for this server's AMIs, removed afterwards."""
    from kiln.controller.sandbox import local_images

    before = {row["Id"] for row in engine.images(local_images())}
    yield moto_url
    for row in engine.images(local_images()):
        if row["Id"] not in before:
            engine.run("rmi", "-f", row["Id"], check=False)


def baked_playbooks(tmp_path, role, kiln_publish="", role_publish=""):
    from tests.playbooks import make_playbooks

    kiln_yaml = "providers:\n  aws:\n    regions: [us-east-1]\n" + kiln_publish + "retention:\n  keep: 3\n"
    files = {"role.yml": BAKED_ROLE + role_publish, "steps.yml": BAKED_STEPS, "verify.yml": BAKED_CHECKS}
    return make_playbooks(tmp_path, files, role=role, kiln_yaml=kiln_yaml)


def bake_in_sandbox(tmp_path, url, role):
    from tests.playbooks import invoke

    return invoke(
        tmp_path,
        "bake",
        "--role",
        role,
        "--provider",
        "aws",
        "--sandbox",
        env={"KILN_JSON": "1", "AWS_ENDPOINT_URL": url},
        timeout=600,
    )


@pytest.mark.slow
def test_a_sandbox_bake_makes_the_launch_template_version_and_writes_images_json(sandbox_images, tmp_path):
    from kiln.controller.sandbox import sandbox_client

    url = sandbox_images
    ec2 = sandbox_client("ec2", "us-east-1", url)
    base = sandbox_client("ssm", "us-east-1", url).get_parameter(Name=AL2023)["Parameter"]["Value"]
    template_id = ec2.create_launch_template(
        LaunchTemplateName="baked-lt", LaunchTemplateData={"ImageId": base, "InstanceType": "t3.micro"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    publish = "    publish:\n      launch_templates: [{name: baked-lt, set_default: true}]\n"
    baked_playbooks(tmp_path, "ltbaked", kiln_publish=publish)

    proc = bake_in_sandbox(tmp_path, url, "ltbaked")

    assert proc.returncode == 0, proc.stderr[-4000:]
    version = next(json.loads(line)["version"] for line in proc.stderr.splitlines() if '"event": "version"' in line)
    ami = sandbox_client("ssm", "us-east-1", url).get_parameter(Name="/kiln/ltbaked/latest")["Parameter"]["Value"]
    rows = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"]
    made = {int(r["VersionNumber"]): r for r in rows}[2]
    assert made["LaunchTemplateData"]["ImageId"] == ami
    assert made["VersionDescription"] == f"kiln ltbaked {version}"
    template = ec2.describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"][0]
    assert int(template["DefaultVersionNumber"]) == 2
    images = json.loads((tmp_path / "builds" / "images.json").read_text())
    assert images["ltbaked"] == {version: {"us-east-1": {"x86_64": ami}}}


@pytest.mark.slow
def test_a_role_publish_naming_a_missing_template_is_refused_before_launch(sandbox_images, tmp_path):
    """role.yml's publish: is accepted and checked before launch: exit 2 at its file:line:column, nothing launched."""
    from kiln.controller.sandbox import sandbox_client

    url = sandbox_images
    baked_playbooks(tmp_path, "ltmissing", role_publish="publish:\n  launch_templates: [{name: lt-nowhere}]\n")

    proc = bake_in_sandbox(tmp_path, url, "ltmissing")

    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "roles/ltmissing/role.yml:5:" in proc.stdout and "launch template lt-nowhere exists in none" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = sandbox_client("ec2", "us-east-1", url).describe_instances(
        Filters=[{"Name": "tag:kiln:role", "Values": ["ltmissing"]}]
    )["Reservations"]
    assert not rows, "an instance was launched"


@pytest.mark.slow
def test_a_bake_with_consumers_and_the_test_stage_calls_only_what_the_iam_policy_allows(
    sandbox_images, monkeypatch, tmp_path
):
    """The whole bake in-process (test stage, launch templates, retire's in_use), every call recorded."""
    from kiln.controller.bake import bake
    from kiln.controller.context import BakeOptions
    from kiln.controller.providers.aws import make_aws_provider
    from kiln.controller.sandbox import sandbox_client
    from tests.aws_harness import ApiCalls, not_in_policy

    url = sandbox_images
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    base = sandbox_client("ssm", "us-east-1", url).get_parameter(Name=AL2023)["Parameter"]["Value"]
    sandbox_client("ec2", "us-east-1", url).create_launch_template(
        LaunchTemplateName="iam-lt", LaunchTemplateData={"ImageId": base}
    )
    publish = "    publish:\n      launch_templates: [{name: iam-lt, set_default: true}]\n"
    playbooks = baked_playbooks(tmp_path, "iamlt", kiln_publish=publish)
    prov = make_aws_provider({"regions": ["us-east-1"]}, sandbox=True, state_dir=tmp_path / "builds")
    calls = ApiCalls().install(prov.session)
    try:
        result = bake(
            "iamlt", "aws", BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=playbooks), provider=prov
        )
    finally:
        prov.close()
    assert result.exit_code == 0, result.error
    assert "test image" in result.ctx.timings
    assert {
        "ec2:CreateLaunchTemplateVersion",
        "ec2:ModifyLaunchTemplate",
        "ec2:DescribeLaunchTemplates",
    } <= calls.actions
    assert calls.calls.count("ec2:RunInstances") == 2, "the build machine and the test machine"
    missing = not_in_policy(calls.actions)
    assert not missing, f"the bake called actions docs/iam-policy.json lacks: {sorted(missing)}"


@pytest.mark.slow
def test_sigterm_after_the_consumers_were_updated_withdraws_them_and_latest(sandbox_images, tmp_path):
    """The bake is interrupted after the template got kiln's version: its undo puts the default back."""
    import os
    import signal
    import sys

    from kiln.controller.sandbox import sandbox_client
    from tests.playbooks import REPO

    url = sandbox_images
    ec2 = sandbox_client("ec2", "us-east-1", url)
    base = sandbox_client("ssm", "us-east-1", url).get_parameter(Name=AL2023)["Parameter"]["Value"]
    template_id = ec2.create_launch_template(LaunchTemplateName="term-lt", LaunchTemplateData={"ImageId": base})[
        "LaunchTemplate"
    ]["LaunchTemplateId"]
    baked_playbooks(
        tmp_path, "ltterm", kiln_publish="    publish:\n      launch_templates: [{name: term-lt, set_default: true}]\n"
    )
    env = {**os.environ, "KILN_JSON": "1", "CI": "", "AWS_ENDPOINT_URL": url, "KILN_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", "--role", "ltterm", "--provider", "aws", "--sandbox"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if '"event": "consumers updated"' in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    output = "".join(seen) + rest
    assert proc.returncode == 1 and "interrupted" in output, output[-3000:]
    template = ec2.describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"][0]
    assert int(template["DefaultVersionNumber"]) == 1, "the template's default was not put back"
    latest = sandbox_client("ssm", "us-east-1", url).get_parameters(Names=["/kiln/ltterm/latest"])["Parameters"]
    assert not latest, "latest was not put back"


def test_promote_moves_latest_only_under_the_publish_mutex(aws, tmp_path):
    """While a bake's publish holds /kiln/<role>/publishing, promote waits; latest moves after it is released."""
    import threading
    import time

    ids = register(aws, "mutex", ["20261201.1", "20261201.2"])
    set_latest(aws, "mutex", ids, "20261201.2")
    held, seen = threading.Event(), {}

    def publishing_bake():
        with aws.publishing("mutex", "20261201T000000-b4ce01"):
            held.set()
            time.sleep(1.5)
            seen["while held"] = aws.latest("us-east-1", "mutex")

    holder = threading.Thread(target=publishing_bake)
    holder.start()
    assert held.wait(30)
    consumers.promote(aws, "mutex", "20261201.1", PublishSettings(), tmp_path)
    holder.join(30)
    assert seen["while held"] == ids["us-east-1"]["20261201.2"], "promote moved latest inside another's publish"
    assert aws.latest("us-east-1", "mutex") == ids["us-east-1"]["20261201.1"]


def test_retire_spares_a_version_a_launch_template_still_launches(aws, tmp_path):
    ids = register(aws, "spare", ["20261201.1", "20261201.2", "20261201.3"])
    set_latest(aws, "spare", ids, "20261201.3")
    template(aws, "eu-west-1", "spare-lt", ids["eu-west-1"]["20261201.1"])

    retired = aws.retire("spare", keep=1)

    assert sorted((i.region, i.version) for i in retired) == [
        ("eu-west-1", "20261201.2"),
        ("us-east-1", "20261201.1"),
        ("us-east-1", "20261201.2"),
    ]
    left = {(i.region, i.version) for i in aws.images("spare")}
    assert ("eu-west-1", "20261201.1") in left, "the template's default version's AMI was retired"
