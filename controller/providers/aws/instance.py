"""The build machine: an EC2 instance, launched as a small pipeline of its resources (key pair, security group,
instance), each with its own undo, as Packer's amazon builder does."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import ClientError, WaiterError

from kiln.controller.model import Machine
from kiln.controller.pipeline import run_stages
from kiln.controller.providers.aws.cloud_init import console_fingerprints, user_data
from kiln.controller.providers.aws.key_pair import KeyPairStep, delete_key_pair
from kiln.controller.providers.aws.security_group import SecurityGroupStep
from kiln.controller.providers.aws.tags import (
    ARCH,
    BUILD_ID,
    CAPACITY_ERRORS,
    error_code,
    tag_spec,
)
from kiln.controller.providers.base import MachineSpec, ProviderError, ssh_answers
from kiln.controller.ssh import HostKeyExpectation

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi

log = structlog.get_logger("kiln.aws")

ADDRESS_FIELDS = {
    "public_ip": "PublicIpAddress",
    "private_ip": "PrivateIpAddress",
    "public_dns": "PublicDnsName",
    "private_dns": "PrivateDnsName",
}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
LAUNCH_HINTS = {
    "VPCIdNotSpecified": " (this region has no default VPC: set providers.aws.subnet_id)",
    "MissingInput": " (set providers.aws.subnet_id)",
    "InvalidSubnetID.NotFound": " (providers.aws.subnet_id must be in the build region, the first of regions)",
    "InvalidGroup.NotFound": " (providers.aws.ssh.security_group_id must be in the build region)",
    "UnauthorizedOperation": " (compare the controller's permissions with docs/iam-policy.json)",
}
HYGIENE = r"""
# cloud-init: forget this instance, so each instance of the image runs first boot again
# (its own host keys, the launching key pair, hostname, user data)
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed >/dev/null 2>&1 || cloud-init clean --logs >/dev/null 2>&1 || true
fi
rm -f /var/lib/dhclient/*.lease* /var/lib/dhcp/*.lease* /var/lib/NetworkManager/*.lease 2>/dev/null || true
"""


@dataclass
class AwsInstance(Machine):
    """An EC2 build machine and the temporaries made for it."""

    key_pair: str = ""
    security_group_id: str = ""
    security_group_name: str = ""  # set when the group is the machine's own (deleted with it)
    root_device: str = ""
    ena: bool = False
    instance_type: str = ""
    spot: bool = False


@dataclass
class Launch:
    """One launch's small pipeline (controller/pipeline.py's run/undo): its spec, the machine as far as it
    exists, and the bookkeeping ``run_stages`` keeps."""

    spec: MachineSpec
    machine: AwsInstance
    tags: dict[str, str]
    role: str = ""
    build_id: str = ""
    launching: bool = False  # run_instances was sent and its answer not yet read: look the instance up by tags
    current_stage: str = ""
    succeeded: bool = False
    failure: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class InstanceStep:
    """run_instances (instance types in order, capacity errors skip to the next), then wait until running.
    Its undo terminates it unless the launch succeeded."""

    name = "instance"

    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def run(self, launch: Launch) -> None:
        self.api.instances._run_instance(launch)
        machine = launch.machine
        self.api.data_plane.launched(machine.region, [machine.id])
        try:
            self.api._instance_waiter(machine.region, "instance_running", [machine.id])
        except WaiterError as exc:
            raise ProviderError(
                f"instance {machine.id} did not reach running within 600 s ({exc}); it is terminated on the way out"
            ) from exc

    def undo(self, launch: Launch) -> None:
        if not launch.succeeded:
            self.api.instances.remove(launch.machine, launch)


class Instances:
    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def launch(self, spec: MachineSpec) -> AwsInstance:
        """Key pair -> security group -> instance, each with its own undo: an error or an interrupt at any
        point removes exactly what exists by then, and nothing is left for the caller to remove."""
        s = self.api.settings
        region = self.api.build_region
        machine = AwsInstance(id="", provider=self.api.name, region=region, ssh_user=s.ssh.user)
        launch = Launch(spec, machine, self.api.temporary_tags(spec), role=spec.role, build_id=spec.build_id)
        steps = [KeyPairStep(self.api), SecurityGroupStep(self.api), InstanceStep(self.api)]
        try:
            run_stages(steps, launch)  # type: ignore[arg-type] - a Launch carries what run_stages keeps
        except ClientError as exc:
            hint = LAUNCH_HINTS.get(error_code(exc), "")
            raise ProviderError(f"launching the {spec.machine} instance failed: {exc}{hint}") from exc
        described = self._describe_instance(region, machine.id)
        machine.root_device = described.get("RootDeviceName", "")
        machine.ena = bool(described.get("EnaSupport"))
        machine.instance_type = described.get("InstanceType", "")
        machine.spot = described.get("InstanceLifecycle") == "spot" or s.spot
        machine.ssh_host, machine.ssh_port = self._ssh_address(region, described)
        log.info(
            "instance running",
            instance=machine.id,
            type=machine.instance_type,
            region=region,
            ssh=f"{machine.ssh_user}@{machine.ssh_host}:{machine.ssh_port}",
        )
        return machine

    def launch_mappings(self, image_id: str) -> list[dict[str, Any]]:
        s = self.api.settings
        device, base_size = self.api.base_images.root_device(image_id)
        root = s.root_volume.ebs()
        if "VolumeSize" not in root and base_size:
            root["VolumeSize"] = base_size  # the snapshot's own size, said explicitly
        mappings = [{"DeviceName": device, "Ebs": root}]
        mappings += [{"DeviceName": v.device, "Ebs": v.ebs()} for v in s.extra_volumes]
        mappings += [{"DeviceName": dev, "VirtualName": name} for dev, name in s.ephemeral_volumes]
        return mappings

    def run_parameters(self, spec: MachineSpec, group: str, tags: dict[str, str]) -> dict[str, Any]:
        """Everything of run_instances but the instance type (tried in order)."""
        s = self.api.settings
        params: dict[str, Any] = {
            "ImageId": spec.base.id,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": spec.name,
            "UserData": user_data(int(spec.expires.timestamp()), s.user_data),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "InstanceInitiatedShutdownBehavior": "terminate",
            "BlockDeviceMappings": self.launch_mappings(spec.base.id),
            "TagSpecifications": [
                tag_spec("instance", {**tags, "Name": f"kiln-{spec.machine}-{spec.role}-{spec.build_id}"}),
                tag_spec("volume", tags),
            ],
        }
        if s.associate_public_ip is not None:
            nic: dict[str, Any] = {
                "DeviceIndex": 0,
                "AssociatePublicIpAddress": s.associate_public_ip,
                "Groups": [group],
                "DeleteOnTermination": True,
            }
            if s.subnet_id:
                nic["SubnetId"] = s.subnet_id
            params["NetworkInterfaces"] = [nic]
        else:
            params["SecurityGroupIds"] = [group]
            if s.subnet_id:
                params["SubnetId"] = s.subnet_id
        if s.iam_instance_profile:
            key = "Arn" if s.iam_instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: s.iam_instance_profile}
        if s.spot:
            options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if s.spot_max_price:
                options["MaxPrice"] = s.spot_max_price
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
            params["TagSpecifications"].append(tag_spec("spot-instances-request", tags))
        return params

    def _run_instance(self, launch: Launch) -> None:
        spec, machine = launch.spec, launch.machine
        params = self.run_parameters(spec, machine.security_group_id, launch.tags)
        types = self.api.settings.instance_types_for(spec.arch)
        launch.launching = True  # until the id is known, the undo looks the instance up by build id
        for i, instance_type in enumerate(types):
            try:
                resp = self.api.ec2(machine.region).run_instances(
                    **params, InstanceType=instance_type, ClientToken=f"{spec.name}-{i}"
                )
            except ClientError as exc:
                code = error_code(exc)
                if code not in CAPACITY_ERRORS:
                    raise
                if i + 1 == len(types):
                    raise ProviderError(
                        f"no capacity in {machine.region} for any of {', '.join(types)}: {exc}"
                    ) from exc
                log.warning(
                    "instance type unavailable; trying the next one", type=instance_type, code=code, next=types[i + 1]
                )
                continue
            machine.id = resp["Instances"][0]["InstanceId"]
            launch.launching = False
            return

    def terminate(self, machine: AwsInstance) -> None:
        """Remove the instance, then its key pair and its own security group; never raises, says what is left."""
        self.remove(machine)
        if machine.key_pair:
            delete_key_pair(self.api, machine.region, machine.key_pair)
        self.api.security_groups.remove(machine)

    def _describe_instance(self, region: str, instance_id: str) -> dict[str, Any]:
        reservations = self.api.ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]

    def _ssh_address(self, region: str, described: dict[str, Any]) -> tuple[str, int]:
        s = self.api.settings
        explicit = self.api.data_plane.address(region, described["InstanceId"])
        if explicit:
            return explicit
        if s.ssh.host:
            return s.ssh.host, s.ssh.port
        value = described.get(ADDRESS_FIELDS[s.ssh.address])
        if not value:
            raise ProviderError(
                f"instance {described['InstanceId']} has no {s.ssh.address.replace('_', ' ')}: set "
                "ssh.address (e.g. private_ip from inside the VPC), associate_public_ip: true, or "
                "ssh.host/ssh.port"
            )
        return value, s.ssh.port

    def host_key_expectation(self, inst: Machine) -> HostKeyExpectation:
        """The fingerprints cloud-init prints on the console; none printed: warn (or refuse, if configured)."""
        ec2 = self.api.ec2(inst.region)
        timeout = self.api.settings.ssh.console_timeout
        started = time.monotonic()
        latest = True
        while True:
            try:
                resp = (
                    ec2.get_console_output(InstanceId=inst.id, Latest=True)
                    if latest
                    else ec2.get_console_output(InstanceId=inst.id)
                )
            except ClientError as exc:  # Latest is for Nitro instances only
                if latest and error_code(exc) in (
                    "UnsupportedOperation",
                    "InvalidParameterCombination",
                    "InvalidParameter",
                ):
                    latest = False
                    continue
                raise ProviderError(f"reading the console of {inst.id} failed: {exc}") from exc
            found = console_fingerprints(resp.get("Output") or "")
            waited = time.monotonic() - started
            if found or waited >= timeout:
                break
            self.api.sleep(min(5.0, max(0.0, timeout - waited)))
        if found:
            log.info("host key fingerprints from the console", instance=inst.id, fingerprints=sorted(found))
            return HostKeyExpectation(fingerprints=found)
        reason = f"cloud-init printed no SSH host key fingerprints on the console of {inst.id} within {timeout:.0f}s"
        if self.api.settings.ssh.host_key_policy == "refuse":
            raise ProviderError(f"{reason}; refusing to connect (ssh.host_key_policy: refuse)")
        log.warning(
            "host key cannot be verified",
            instance=inst.id,
            reason=reason,
            hint="set ssh.host_key_policy: refuse to stop instead",
        )
        return HostKeyExpectation(unverified_reason=reason)

    def reboot_wait(self, inst: Machine, timeout: float = 300) -> None:
        """The agent scheduled a reboot and exited: return once the instance is down for it.

        EC2 reboots an instance in place: it stays ``running``, with the same addresses, EBS
        root, host keys and authorised keys, so the API shows nothing; what changes is that
        SSH stops answering while the machine shuts down and boots. Poll the SSH port (a TCP
        connect and sshd's greeting) until it does not answer, checking now and then that the
        instance was not stopped or terminated instead (e.g. a halt at the build deadline).
        Then the data plane gets ``rebooting`` (EC2 needs nothing; the sandbox starts its
        container again) and the caller reconnects, host key still pinned; the resumed
        agent confirms the machine really booted (its ``/run`` marker is gone).
        """
        region = inst.region or self.api.build_region
        started = time.monotonic()
        deadline = started + timeout
        next_state = started
        while True:
            now = time.monotonic()
            if now >= next_state:
                state = self._instance_state(region, inst.id)
                if state not in ("pending", "running"):
                    raise ProviderError(f"instance {inst.id} is {state} instead of rebooting")
                next_state = now + 10
            if not ssh_answers(inst.ssh_host, inst.ssh_port, timeout=min(3.0, max(0.5, deadline - now))):
                break
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"instance {inst.id} still answered SSH on {inst.ssh_host}:{inst.ssh_port} "
                    f"{timeout:.0f}s after it scheduled its reboot"
                )
            self.api.sleep(0.5)
        log.info("instance down for its reboot", instance=inst.id, seconds=round(time.monotonic() - started, 1))
        try:
            self.api.data_plane.rebooting(region, inst.id, max(1.0, deadline - time.monotonic()))
        except ProviderError:
            raise
        except Exception as exc:  # the data plane's own errors (the sandbox's engine), named as the reboot's
            raise ProviderError(f"bringing {inst.id} back from its reboot failed: {exc}") from exc

    def _instance_state(self, region: str, instance_id: str) -> str:
        try:
            return self._describe_instance(region, instance_id)["State"]["Name"]
        except ClientError as exc:
            if error_code(exc) == "InvalidInstanceID.NotFound":
                return "gone"
            raise ProviderError(f"describing {instance_id} during its reboot failed: {exc}") from exc

    def remove(self, instance: Machine, launch: Launch | None = None) -> None:
        """Terminate the instance (during its launch, whatever run_instances made for it) and wait until it is
        gone, so its security group can go next; never raises, says what is left."""
        region = instance.region or self.api.build_region
        ec2 = self.api.ec2(region)
        ids = [instance.id] if instance.id else []
        if launch is not None and launch.launching:
            spec = launch.spec
            ids += [i for i in self._instances_of_build(region, spec.build_id, spec.machine, spec.arch) if i not in ids]
        if ids:
            try:
                ec2.terminate_instances(InstanceIds=ids)
                gone = True
            except ClientError as exc:
                gone = error_code(exc) == "InvalidInstanceID.NotFound"
                if not gone:
                    log.error(
                        "could not terminate; remove by hand",
                        instances=ids,
                        region=region,
                        error=str(exc),
                        command=f"aws ec2 terminate-instances --region {region} --instance-ids {' '.join(ids)}",
                    )
            if gone:
                self.api._safely(self.api.data_plane.terminated, region, ids)
                try:
                    self.api._instance_waiter(region, "instance_terminated", ids, max_seconds=300)
                except (WaiterError, ClientError) as exc:
                    log.warning(
                        "instance still terminating; its security group may stay", instances=ids, error=str(exc)
                    )

    def _instances_of_build(self, region: str, build_id: str, machine: str = "", arch: str = "") -> list[str]:
        """The build's live instances (``machine``: only that one of its machines, by its Name tag;
        ``arch``: only that architecture's)."""
        named = [{"Name": "tag:Name", "Values": [f"kiln-{machine}-*-{build_id}"]}] if machine else []
        named += [{"Name": f"tag:{ARCH}", "Values": [arch]}] if arch else []
        try:
            rows = self.api.ec2(region).describe_instances(
                Filters=named
                + [
                    {"Name": f"tag:{BUILD_ID}", "Values": [build_id]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )["Reservations"]
        except ClientError as exc:
            log.error("could not look for the build's instances", build_id=build_id, error=str(exc))
            return []
        return [i["InstanceId"] for r in rows for i in r["Instances"]]
