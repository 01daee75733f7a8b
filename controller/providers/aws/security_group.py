"""The build machine's temporary security group: SSH from the controller only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import ClientError

from kiln.controller.providers.aws.tags import (
    error_code,
    tag_spec,
)

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi
    from kiln.controller.providers.aws.instance import AwsInstance, Launch

log = structlog.get_logger("kiln.aws")


class SecurityGroupStep:
    """The machine's own security group (unless providers.aws.ssh.security_group_id names one to use): SSH
    from the controller only. Its undo deletes it unless the launch succeeded (then the machine owns it)."""

    name = "security group"

    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def run(self, launch: Launch) -> None:
        s = self.api.settings
        machine = launch.machine
        if s.ssh.security_group_id:
            machine.security_group_id = s.ssh.security_group_id
            return
        ec2 = self.api.ec2(machine.region)
        name = launch.spec.name
        vpc: dict[str, str] = {}
        if s.subnet_id:
            vpc["VpcId"] = ec2.describe_subnets(SubnetIds=[s.subnet_id])["Subnets"][0]["VpcId"]
        machine.security_group_name = name  # owned before it exists: found by name if the answer is lost
        try:
            group = ec2.create_security_group(
                GroupName=name,
                Description=f"kiln build {launch.spec.build_id}: SSH from the controller only",
                TagSpecifications=[tag_spec("security-group", {**launch.tags, "Name": name})],
                **vpc,
            )["GroupId"]
        except ClientError as exc:  # this bake's name: a retried request whose answer was lost
            groups = self.api.security_groups
            if error_code(exc) != "InvalidGroup.Duplicate" or not (
                group := groups._group_by_name(machine.region, name)
            ):
                raise
        machine.security_group_id = group
        self.allow_ssh(machine.region, group)

    def allow_ssh(self, region: str, group: str) -> None:
        s = self.api.settings
        cidrs = s.ssh.cidrs or self.api.data_plane.source_cidrs(s.ssh.address)
        v4 = [{"CidrIp": c, "Description": "kiln controller"} for c in cidrs if ":" not in c]
        v6 = [{"CidrIpv6": c, "Description": "kiln controller"} for c in cidrs if ":" in c]
        try:
            self.api.ec2(region).authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": v4, "Ipv6Ranges": v6}],
            )
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.Duplicate":
                raise

    def undo(self, launch: Launch) -> None:
        if not launch.succeeded:
            self.api.security_groups.remove(launch.machine)


class SecurityGroups:
    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def remove(self, machine: AwsInstance) -> None:
        """The machine's own group, by id or (its create's answer lost) by name; a group it was given stays."""
        group = machine.security_group_id if machine.security_group_name else ""
        if not group and machine.security_group_name:
            group = self._group_by_name(machine.region, machine.security_group_name)
        if group:
            self._delete_group(machine.region, group)

    def _group_by_name(self, region: str, name: str) -> str:
        try:
            groups = self.api.ec2(region).describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])[
                "SecurityGroups"
            ]
        except ClientError:
            return ""
        return groups[0]["GroupId"] if groups else ""

    def _delete_group(self, region: str, group: str, attempts: int = 12) -> bool:
        for attempt in range(attempts):
            try:
                self.api.ec2(region).delete_security_group(GroupId=group)
                return True
            except ClientError as exc:
                code = error_code(exc)
                if code == "InvalidGroup.NotFound":
                    return True
                if code == "DependencyViolation" and attempt + 1 < attempts:  # the ENI is still detaching
                    self.api.sleep(5)
                    continue
                log.error(
                    "could not delete the security group; remove by hand",
                    group=group,
                    error=str(exc),
                    command=f"aws ec2 delete-security-group --region {region} --group-id {group}",
                )
                return False
        return False
