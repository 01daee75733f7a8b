"""examples/cloudformation: a fleet template that takes its image from kiln's `latest` parameter.

cfn-lint checks the template; moto's CloudFormation (over HTTP) deploys it and must resolve
``AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>`` to the AMI the parameter names.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.playbooks import REPO

TEMPLATE = REPO / "examples" / "cloudformation" / "fleet.yaml"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def client(service: str, endpoint: str):
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_template_passes_cfn_lint():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_stack_launches_the_image_latest_names(moto_endpoint):
    ec2, ssm, cfn = (client(s, moto_endpoint) for s in ("ec2", "ssm", "cloudformation"))
    baked = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    ssm.put_parameter(Name="/kiln/web/latest", Value=baked, Type="String", DataType="aws:ec2:image", Overwrite=True)

    cfn.create_stack(
        StackName="web-fleet",
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": "FleetSize", "ParameterValue": "1"}],
    )
    stack = cfn.describe_stacks(StackName="web-fleet")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["ImageId"] == baked

    template_id = outputs["LaunchTemplateId"]
    version = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"][0]
    assert version["LaunchTemplateData"]["ImageId"] == baked
