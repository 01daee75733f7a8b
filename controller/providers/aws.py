"""The AWS provider: build machines are EC2 instances, images are AMIs, ``latest`` is an SSM parameter.

Everything the bake creates is recorded on the context the moment it exists (a key
pair, a security group, an instance, an AMI, each copy), so an interrupt at any point
still removes it; every temporary resource is tagged ``kiln:temporary=true``,
``kiln:build-id`` and ``kiln:expires`` for ``invoke sweep`` should the controller die,
and the instance halts itself (= terminates) at the deadline.

``--sandbox`` runs this same code against moto with local containers as the data
plane (controller/sandbox.py); only the endpoint and the SSH address differ.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import structlog
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from controller import manifest
from controller.context import BakeContext
from controller.model import BaseImage, Diagnostic, Image, Instance, InvalidInput
from controller.providers.aws_settings import AwsSettings, parse_settings
from controller.providers.aws_support import (
    BUILD_ID,
    CAPACITY_ERRORS,
    EXPIRES,
    ROLE,
    TEMPORARY,
    VERSION,
    CloudDataPlane,
    DataPlane,
    PendingImage,
    PendingImages,
    console_fingerprints,
    error_code,
    expired,
    tag_list,
    tag_spec,
    tags_of,
    unimplemented,
    user_data,
)
from controller.providers.base import ProviderError
from controller.ssh import HostKeyExpectation
from controller.versions import next_version, sort_key

log = structlog.get_logger("kiln.aws")

ADDRESS_FIELDS = {"public_ip": "PublicIpAddress", "private_ip": "PrivateIpAddress",
                  "public_dns": "PublicDnsName", "private_dns": "PrivateDnsName"}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
HYGIENE = r"""
# cloud-init: forget this instance, so each instance of the image runs first boot again
# (its own host keys, the launching key pair, hostname, user data)
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed >/dev/null 2>&1 || cloud-init clean --logs >/dev/null 2>&1 || true
fi
rm -f /var/lib/dhclient/*.lease* /var/lib/dhcp/*.lease* /var/lib/NetworkManager/*.lease 2>/dev/null || true
"""


def kiln_version() -> str:
    try:
        from importlib.metadata import version

        return version("kiln")
    except Exception:  # not installed (a source checkout)
        return "0.1.0"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def latest_parameter(role: str) -> str:
    return f"/kiln/{role}/latest"


def versions_path(role: str) -> str:
    return f"/kiln/{role}/versions"


class ImageWaitTimeout(ProviderError):
    """The AMI did not become available within the configured waiter."""


def make_aws_provider(settings: dict[str, Any] | None, sandbox: bool = False, state_dir: Path = Path("builds"),
                      config: Any = None, session: boto3.Session | None = None,
                      data_plane: DataPlane | None = None) -> AwsProvider:
    """Check ``providers.aws`` (InvalidInput: nothing launched) and build the provider.

    ``sandbox``: moto (embedded, or ``AWS_ENDPOINT_URL``) with local containers as instances.
    """

    def diag(keys: tuple[Any, ...], message: str) -> Diagnostic:
        if config is not None:
            return config.diagnostic(keys, message)
        return Diagnostic("kiln.yaml", 1, 1, f"{'.'.join(str(k) for k in keys)}: {message}")

    parsed = parse_settings(settings, diag)
    if sandbox:
        from controller.sandbox import make_sandbox_provider

        return make_sandbox_provider(parsed, Path(state_dir))
    if session is None:
        try:
            session = boto3.Session(profile_name=parsed.profile or None, region_name=parsed.build_region)
        except BotoCoreError as exc:  # e.g. ProfileNotFound
            raise InvalidInput([diag(("providers", "aws", "profile"), str(exc))]) from exc
    return AwsProvider(parsed, session=session, state_dir=Path(state_dir), data_plane=data_plane)


class AwsProvider:
    name = "aws"

    def __init__(self, settings: AwsSettings, session: boto3.Session, state_dir: Path = Path("builds"),
                 data_plane: DataPlane | None = None, endpoint_url: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.session = session
        self.state_dir = Path(state_dir)
        self.data_plane: DataPlane = data_plane or CloudDataPlane()
        self.endpoint_url = endpoint_url  # None: boto3's own resolution (which honours AWS_ENDPOINT_URL)
        self.sleep = sleep
        self.boto_config = BotoConfig(
            retries={"mode": settings.retry_mode, "max_attempts": settings.retry_max_attempts},
            user_agent_extra=f"kiln/{kiln_version()}", connect_timeout=10, read_timeout=120,
        )
        self.pending = PendingImages(self.state_dir)
        self.sandbox: Any = None  # set by controller.sandbox
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._root_devices: dict[str, tuple[str, int | None]] = {}

    # --- clients ---------------------------------------------------------------------
    @property
    def build_region(self) -> str:
        return self.settings.build_region

    def client(self, service: str, region: str | None = None) -> Any:
        """A cached client per service and region (creating clients is not thread-safe; using them is)."""
        key = (service, region or self.build_region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self.session.client(service, region_name=key[1], endpoint_url=self.endpoint_url,
                                                         config=self.boto_config)
            return self._clients[key]

    def ec2(self, region: str | None = None) -> Any:
        return self.client("ec2", region)

    def ssm(self, region: str | None = None) -> Any:
        return self.client("ssm", region)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def _instance_waiter(self, region: str, name: str, ids: list[str], max_seconds: float = 600) -> None:
        delay = max(0, min(5.0, self.settings.waiter_delay))
        attempts = max(1, int(max_seconds / delay)) if delay else 40
        self.ec2(region).get_waiter(name).wait(InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})

    # --- base image ------------------------------------------------------------------
    def resolve_base(self, spec: Any) -> BaseImage:
        """A pinned ``ami``, an ``ssm_parameter`` (e.g. AWS's public latest-AMI parameters) or a ``filter``."""
        if not spec:
            raise ProviderError("the role has no AWS base image: set base: {aws: {ssm_parameter: /aws/service/...}} "
                                "(or {ami: ami-...}, or {filter: {owners, name, architecture}}) in role.yml")
        if isinstance(spec, str):
            spec = {"ami": spec} if spec.startswith("ami-") else {"ssm_parameter": spec.removeprefix("resolve:ssm:")}
        kinds = [k for k in ("ami", "ssm_parameter", "filter") if k in spec] if isinstance(spec, dict) else []
        if len(kinds) != 1 or set(spec) - {"ami", "ssm_parameter", "filter"}:
            raise ProviderError(f"base.aws must be exactly one of {{ami: ami-...}}, {{ssm_parameter: /path}} or "
                                f"{{filter: {{owners, name, architecture}}}}; got {spec!r}")
        region = self.build_region
        if "ami" in spec:
            image = self._describe_base(str(spec["ami"]), f"pinned AMI {spec['ami']}")
        elif "ssm_parameter" in spec:
            name = str(spec["ssm_parameter"])
            try:
                value = self.ssm().get_parameter(Name=name)["Parameter"]["Value"]
            except ClientError as exc:
                if error_code(exc) == "ParameterNotFound":
                    raise ProviderError(f"no base image: SSM parameter {name} does not exist in {region}") from exc
                raise ProviderError(f"reading SSM parameter {name} in {region} failed: {exc}") from exc
            image = self._describe_base(value, f"{name} ({value})")
        else:
            image = self._find_base(spec["filter"])
        if image.get("VirtualizationType", "hvm") != "hvm":
            raise ProviderError(f"base image {image['ImageId']} ({image.get('Name', '')}) is "
                                f"{image.get('VirtualizationType')}: kiln bakes HVM images only (paravirtual AMIs "
                                "cannot use current instance types, ENA or IMDSv2); choose an HVM base")
        if image.get("State", "available") != "available":
            raise ProviderError(f"base image {image['ImageId']} is {image.get('State')}, not available")
        self._remember_root(image)
        return BaseImage(id=image["ImageId"], name=image.get("Name", image["ImageId"]),
                         spec=json.dumps(spec, sort_keys=True))

    def _describe_base(self, image_id: str, what: str) -> dict[str, Any]:
        try:
            images = self.ec2().describe_images(ImageIds=[image_id])["Images"]
        except ClientError as exc:
            if error_code(exc).startswith("InvalidAMIID"):
                raise ProviderError(f"no base image: {what} not found in {self.build_region} ({error_code(exc)})") \
                    from exc
            raise ProviderError(f"describing base image {what} failed: {exc}") from exc
        if not images:
            raise ProviderError(f"no base image: {what} not found in {self.build_region}")
        return images[0]

    def _find_base(self, spec: Any) -> dict[str, Any]:
        known = {"owners", "name", "architecture", "most_recent", "filters"}
        if not isinstance(spec, dict) or set(spec) - known or not spec.get("owners") or not spec.get("name"):
            raise ProviderError("base.aws.filter needs owners (account ids, or amazon/self) and a name pattern, "
                                f"optionally architecture, most_recent and filters; got {spec!r}")
        owners = [str(o) for o in (spec["owners"] if isinstance(spec["owners"], list) else [spec["owners"]])]
        filters = [{"Name": "name", "Values": [str(spec["name"])]}, {"Name": "state", "Values": ["available"]},
                   {"Name": "image-type", "Values": ["machine"]}]
        if spec.get("architecture"):
            filters.append({"Name": "architecture", "Values": [str(spec["architecture"])]})
        for name, values in (spec.get("filters") or {}).items():
            filters.append({"Name": str(name), "Values": [str(v) for v in (values if isinstance(values, list)
                                                                          else [values])]})
        now = now_utc()
        found = []
        for page in self.ec2().get_paginator("describe_images").paginate(
                Owners=owners, Filters=filters, IncludeDeprecated=False):
            for image in page["Images"]:
                deprecation = image.get("DeprecationTime")
                if deprecation and dt.datetime.fromisoformat(deprecation.replace("Z", "+00:00")) <= now:
                    continue
                found.append(image)
        described = (f"owners {', '.join(owners)}, name {spec['name']}"
                     + (f", architecture {spec['architecture']}" if spec.get("architecture") else "")
                     + ", deprecated excluded")
        if not found:
            raise ProviderError(f"no base image matches the filter in {self.build_region} ({described})")
        if len(found) > 1 and not spec.get("most_recent", True):
            names = ", ".join(sorted(i.get("Name", i["ImageId"]) for i in found)[:5])
            raise ProviderError(f"{len(found)} images match the base filter ({described}): {names}...; "
                                "narrow the filter, or set most_recent: true")
        return max(found, key=lambda i: i.get("CreationDate", ""))

    # --- versions and locks ----------------------------------------------------------
    def _reservations(self, role: str) -> set[str]:
        names = set()
        for page in self.ssm().get_paginator("get_parameters_by_path").paginate(Path=versions_path(role)):
            names |= {p["Name"].rsplit("/", 1)[-1] for p in page["Parameters"]}
        return names

    def _image_versions(self, role: str) -> set[str]:
        rows = self.ec2().describe_images(Owners=["self"], Filters=[{"Name": f"tag:{ROLE}", "Values": [role]}])
        return {tags_of(i).get(VERSION, "") for i in rows["Images"]} - {""}

    def allocate_version(self, role: str) -> str:
        """``YYYYMMDD.N`` above every AMI and every reservation of the day; the reservation is an SSM
        parameter created with Overwrite=False, so exactly one concurrent bake gets each version."""
        self.settle_pending()
        taken = self._image_versions(role) | self._reservations(role)
        moment = now_utc()
        value = json.dumps({"reserved": iso(moment), "expires": iso(moment + dt.timedelta(days=1)),
                            "host": socket.gethostname()})
        for _ in range(100):
            version = next_version(taken)
            try:
                self.ssm().put_parameter(Name=f"{versions_path(role)}/{version}", Value=value, Type="String",
                                         Overwrite=False, Description="kiln: version reserved by a bake")
                return version
            except ClientError as exc:
                if error_code(exc) != "ParameterAlreadyExists":
                    raise ProviderError(f"reserving a version of {role} failed: {exc}") from exc
                taken.add(version)
        raise ProviderError(f"could not reserve a version for {role}")

    def release_version(self, role: str, version: str) -> None:
        try:
            self.ssm().delete_parameter(Name=f"{versions_path(role)}/{version}")
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                log.error("could not release the version reservation; remove by hand", version=version,
                          parameter=f"{versions_path(role)}/{version}", error=str(exc))

    def acquire_lock(self, role: str, owner: str, wait: bool, ttl: float = 4 * 3600) -> bool:
        """``/kiln/<role>/lock`` created with Overwrite=False; an expired lock is taken over."""
        name = f"/kiln/{role}/lock"
        while True:
            moment = now_utc()
            try:
                self.ssm().put_parameter(Name=name, Type="String", Overwrite=False, Value=json.dumps(
                    {"owner": owner, "expires": iso(moment + dt.timedelta(seconds=ttl))}))
                return True
            except ClientError as exc:
                if error_code(exc) != "ParameterAlreadyExists":
                    raise ProviderError(f"taking the lock of {role} failed: {exc}") from exc
            holder = self._lock_holder(name)
            if holder is None:
                continue
            if holder.get("owner") == owner:
                return True
            if expired({EXPIRES: str(holder.get("expires", ""))}, moment):
                log.warning("taking over an expired lock", role=role, holder=holder.get("owner"))
                self._delete_parameter(self.ssm(), name)
                continue
            if not wait:
                return False
            self.sleep(10)

    def _lock_holder(self, name: str) -> dict[str, Any] | None:
        try:
            value = self.ssm().get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return None
            raise
        try:
            return json.loads(value)
        except ValueError:
            return {"owner": value, "expires": ""}

    def release_lock(self, role: str, owner: str) -> None:
        name = f"/kiln/{role}/lock"
        try:
            holder = self._lock_holder(name)
            if holder is not None and holder.get("owner") == owner:
                self._delete_parameter(self.ssm(), name)
        except ClientError as exc:
            log.error("could not release the lock; remove by hand", parameter=name, error=str(exc))

    @staticmethod
    def _delete_parameter(ssm: Any, name: str) -> None:
        try:
            ssm.delete_parameter(Name=name)
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise

    # --- the build machine -----------------------------------------------------------
    def temporary_tags(self, ctx: BakeContext) -> dict[str, str]:
        return {**self.settings.tags, TEMPORARY: "true", BUILD_ID: ctx.build_id, EXPIRES: iso(ctx.expires),
                ROLE: ctx.role}

    def launch(self, ctx: BakeContext) -> Instance:
        s = self.settings
        region = self.build_region
        ec2 = self.ec2(region)
        name = f"kiln-build-{ctx.build_id}"
        tags = self.temporary_tags(ctx)
        # The context owns what exists from here on; terminate() removes whatever is recorded.
        inst = Instance(id="", provider=self.name, region=region, ssh_user=s.ssh.user, extra={"key_name": name})
        ctx.instance = inst
        try:
            try:
                ec2.import_key_pair(KeyName=name, PublicKeyMaterial=ctx.client_key.public_openssh.encode(),
                                    TagSpecifications=[tag_spec("key-pair", {**tags, "Name": name})])
            except ClientError as exc:  # the name is this bake's: a retried request whose answer was lost
                if error_code(exc) != "InvalidKeyPair.Duplicate":
                    raise
            group = s.ssh.security_group_id or self._security_group(ctx, inst, name, tags)
            self._run_instance(ctx, inst, group, tags)
        except ClientError as exc:
            raise ProviderError(f"launching the build instance failed: {exc}") from exc
        self.data_plane.launched(region, [inst.id])
        try:
            self._instance_waiter(region, "instance_running", [inst.id])
        except WaiterError as exc:
            raise ProviderError(f"instance {inst.id} did not reach running: {exc}") from exc
        described = self._describe_instance(region, inst.id)
        inst.extra.update(root_device=described.get("RootDeviceName", ""), ena=bool(described.get("EnaSupport")),
                          instance_type=described.get("InstanceType", ""),
                          spot=described.get("InstanceLifecycle") == "spot" or s.spot)
        inst.ssh_host, inst.ssh_port = self._ssh_address(region, described)
        log.info("instance running", instance=inst.id, type=inst.extra["instance_type"], region=region,
                 ssh=f"{inst.ssh_user}@{inst.ssh_host}:{inst.ssh_port}")
        return inst

    def _security_group(self, ctx: BakeContext, inst: Instance, name: str, tags: dict[str, str]) -> str:
        s = self.settings
        ec2 = self.ec2(inst.region)
        vpc: dict[str, str] = {}
        if s.subnet_id:
            vpc["VpcId"] = ec2.describe_subnets(SubnetIds=[s.subnet_id])["Subnets"][0]["VpcId"]
        inst.extra["security_group_name"] = name  # found by name if the answer to the create is lost
        try:
            group = ec2.create_security_group(
                GroupName=name, Description=f"kiln build {ctx.build_id}: SSH from the controller only",
                TagSpecifications=[tag_spec("security-group", {**tags, "Name": name})], **vpc)["GroupId"]
        except ClientError as exc:  # this bake's name: a retried request whose answer was lost
            if error_code(exc) != "InvalidGroup.Duplicate" or not (group := self._group_by_name(inst.region, name)):
                raise
        inst.extra["security_group_id"] = group
        cidrs = s.ssh.cidrs or self.data_plane.source_cidrs(s.ssh.address)
        v4 = [{"CidrIp": c, "Description": "kiln controller"} for c in cidrs if ":" not in c]
        v6 = [{"CidrIpv6": c, "Description": "kiln controller"} for c in cidrs if ":" in c]
        try:
            ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": v4, "Ipv6Ranges": v6}])
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.Duplicate":
                raise
        return group

    def _remember_root(self, image: dict[str, Any]) -> None:
        device = image.get("RootDeviceName") or "/dev/xvda"
        size = next((m["Ebs"].get("VolumeSize") for m in image.get("BlockDeviceMappings") or []
                     if m.get("DeviceName") == device and "Ebs" in m), None)
        self._root_devices[image["ImageId"]] = (device, size)

    def _root_device(self, image_id: str) -> tuple[str, int | None]:
        if image_id not in self._root_devices:
            self._remember_root(self._describe_base(image_id, image_id))
        return self._root_devices[image_id]

    def launch_mappings(self, image_id: str) -> list[dict[str, Any]]:
        s = self.settings
        device, base_size = self._root_device(image_id)
        root = s.root_volume.ebs()
        if "VolumeSize" not in root and base_size:
            root["VolumeSize"] = base_size  # the snapshot's own size, said explicitly
        mappings = [{"DeviceName": device, "Ebs": root}]
        mappings += [{"DeviceName": v.device, "Ebs": v.ebs()} for v in s.extra_volumes]
        mappings += [{"DeviceName": dev, "VirtualName": name} for dev, name in s.ephemeral_volumes]
        return mappings

    def run_parameters(self, ctx: BakeContext, group: str, tags: dict[str, str]) -> dict[str, Any]:
        """Everything of run_instances but the instance type (tried in order)."""
        s = self.settings
        minutes = int((ctx.expires - now_utc()).total_seconds() // 60)
        params: dict[str, Any] = {
            "ImageId": ctx.base.id, "MinCount": 1, "MaxCount": 1, "KeyName": f"kiln-build-{ctx.build_id}",
            "UserData": user_data(minutes, s.user_data),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "InstanceInitiatedShutdownBehavior": "terminate",
            "BlockDeviceMappings": self.launch_mappings(ctx.base.id),
            "TagSpecifications": [tag_spec("instance", {**tags, "Name": f"kiln-build-{ctx.role}-{ctx.build_id}"}),
                                  tag_spec("volume", tags)],
        }
        if s.associate_public_ip is not None:
            nic: dict[str, Any] = {"DeviceIndex": 0, "AssociatePublicIpAddress": s.associate_public_ip,
                                   "Groups": [group], "DeleteOnTermination": True}
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

    def _run_instance(self, ctx: BakeContext, inst: Instance, group: str, tags: dict[str, str]) -> None:
        params = self.run_parameters(ctx, group, tags)
        types = self.settings.instance_types
        inst.extra["launching"] = True  # until the id is known, terminate() looks the instance up by build id
        for i, instance_type in enumerate(types):
            try:
                resp = self.ec2(inst.region).run_instances(**params, InstanceType=instance_type,
                                                           ClientToken=f"kiln-{ctx.build_id}-{i}")
            except ClientError as exc:
                code = error_code(exc)
                if code not in CAPACITY_ERRORS:
                    raise
                if i + 1 == len(types):
                    raise ProviderError(f"no capacity in {inst.region} for any of {', '.join(types)}: {exc}") from exc
                log.warning("instance type unavailable; trying the next one", type=instance_type, code=code,
                            next=types[i + 1])
                continue
            inst.id = resp["Instances"][0]["InstanceId"]
            inst.extra["launching"] = False
            return

    def _describe_instance(self, region: str, instance_id: str) -> dict[str, Any]:
        reservations = self.ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]

    def _ssh_address(self, region: str, described: dict[str, Any]) -> tuple[str, int]:
        s = self.settings
        explicit = self.data_plane.address(region, described["InstanceId"])
        if explicit:
            return explicit
        if s.ssh.host:
            return s.ssh.host, s.ssh.port
        value = described.get(ADDRESS_FIELDS[s.ssh.address])
        if not value:
            raise ProviderError(f"instance {described['InstanceId']} has no {s.ssh.address.replace('_', ' ')}: set "
                                "ssh.address (e.g. private_ip from inside the VPC), associate_public_ip: true, or "
                                "ssh.host/ssh.port")
        return value, s.ssh.port

    def host_key_expectation(self, ctx: BakeContext) -> HostKeyExpectation:
        """The fingerprints cloud-init prints on the console; none printed: warn (or refuse, if configured)."""
        inst = ctx.instance
        ec2 = self.ec2(inst.region)
        timeout = self.settings.ssh.console_timeout
        started = time.monotonic()
        latest = True
        while True:
            try:
                resp = ec2.get_console_output(InstanceId=inst.id, Latest=True) if latest else \
                    ec2.get_console_output(InstanceId=inst.id)
            except ClientError as exc:  # Latest is for Nitro instances only
                if latest and error_code(exc) in ("UnsupportedOperation", "InvalidParameterCombination",
                                                  "InvalidParameter"):
                    latest = False
                    continue
                raise ProviderError(f"reading the console of {inst.id} failed: {exc}") from exc
            found = console_fingerprints(resp.get("Output") or "")
            waited = time.monotonic() - started
            if found or waited >= timeout:
                break
            self.sleep(min(5.0, max(0.0, timeout - waited)))
        if found:
            log.info("host key fingerprints from the console", instance=inst.id, fingerprints=sorted(found))
            return HostKeyExpectation(fingerprints=found)
        reason = (f"cloud-init printed no SSH host key fingerprints on the console of {inst.id} "
                  f"within {timeout:.0f}s")
        if self.settings.ssh.host_key_policy == "refuse":
            raise ProviderError(f"{reason}; refusing to connect (ssh.host_key_policy: refuse)")
        log.warning("host key cannot be verified", instance=inst.id, reason=reason,
                    hint="set ssh.host_key_policy: refuse to stop instead")
        return HostKeyExpectation(unverified_reason=reason)

    def hygiene_script(self) -> str:
        return HYGIENE

    def terminate(self, ctx: BakeContext | None, instance: Instance) -> None:
        """Remove the instance, then its key pair and security group; never raises, says what is left."""
        region = instance.region or self.build_region
        ec2 = self.ec2(region)
        ids = [instance.id] if instance.id else []
        if instance.extra.get("launching") and ctx is not None:
            ids += [i for i in self._instances_of_build(region, ctx.build_id) if i not in ids]
        if ids:
            try:
                ec2.terminate_instances(InstanceIds=ids)
                gone = True
            except ClientError as exc:
                gone = error_code(exc) == "InvalidInstanceID.NotFound"
                if not gone:
                    log.error("could not terminate; remove by hand", instances=ids, region=region, error=str(exc),
                              command=f"aws ec2 terminate-instances --region {region} --instance-ids {' '.join(ids)}")
            if gone:
                self._safely(self.data_plane.terminated, region, ids)
                try:
                    self._instance_waiter(region, "instance_terminated", ids, max_seconds=300)
                except (WaiterError, ClientError) as exc:
                    log.warning("instance still terminating; its security group may stay", instances=ids,
                                error=str(exc))
        key = instance.extra.get("key_name")
        if key:
            try:
                ec2.delete_key_pair(KeyName=key)
            except ClientError as exc:
                log.error("could not delete the key pair; remove by hand", key_pair=key, error=str(exc),
                          command=f"aws ec2 delete-key-pair --region {region} --key-name {key}")
        group = instance.extra.get("security_group_id")
        if not group and instance.extra.get("security_group_name"):
            group = self._group_by_name(region, instance.extra["security_group_name"])
        if group:
            self._delete_group(region, group)

    def _safely(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception as exc:  # the data plane must never stop the cleanup
            log.error("data plane hook failed", hook=getattr(hook, "__name__", str(hook)), error=str(exc))

    def _instances_of_build(self, region: str, build_id: str) -> list[str]:
        try:
            rows = self.ec2(region).describe_instances(Filters=[
                {"Name": f"tag:{BUILD_ID}", "Values": [build_id]},
                {"Name": "instance-state-name", "Values": LIVE_STATES}])["Reservations"]
        except ClientError as exc:
            log.error("could not look for the build's instances", build_id=build_id, error=str(exc))
            return []
        return [i["InstanceId"] for r in rows for i in r["Instances"]]

    def _group_by_name(self, region: str, name: str) -> str:
        try:
            groups = self.ec2(region).describe_security_groups(
                Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        except ClientError:
            return ""
        return groups[0]["GroupId"] if groups else ""

    def _delete_group(self, region: str, group: str, attempts: int = 12) -> bool:
        for attempt in range(attempts):
            try:
                self.ec2(region).delete_security_group(GroupId=group)
                return True
            except ClientError as exc:
                code = error_code(exc)
                if code == "InvalidGroup.NotFound":
                    return True
                if code == "DependencyViolation" and attempt + 1 < attempts:  # the ENI is still detaching
                    self.sleep(5)
                    continue
                log.error("could not delete the security group; remove by hand", group=group, error=str(exc),
                          command=f"aws ec2 delete-security-group --region {region} --group-id {group}")
                return False
        return False

    # --- images ----------------------------------------------------------------------
    def prepare_snapshot(self, ctx: BakeContext) -> None:
        """Stop the instance (a consistent disk), and turn ENA on while it is stopped."""
        inst = ctx.instance
        ec2 = self.ec2(inst.region)
        if inst.extra.get("spot"):
            log.info("spot instance: not stopped (one-time spot cannot be); create_image reboots it instead")
            return
        ec2.stop_instances(InstanceIds=[inst.id])
        try:
            self._instance_waiter(inst.region, "instance_stopped", [inst.id])
        except WaiterError as exc:
            raise ProviderError(f"instance {inst.id} did not stop: {exc}") from exc
        if self.settings.ena_support and not inst.extra.get("ena"):
            ec2.modify_instance_attribute(InstanceId=inst.id, EnaSupport={"Value": True})
            log.info("ENA support enabled on the build instance", instance=inst.id)

    def image_tags(self, ctx: BakeContext, name: str) -> dict[str, str]:
        tags = {"Name": name, **self.settings.tags}
        tags.update({f"kiln:{key}": value for key, value in ctx.labels().items()})
        tags.update({"kiln:kiln-version": kiln_version(), "kiln:base-name": ctx.base.name if ctx.base else ""})
        return tags

    def image_mappings(self, inst: Instance) -> list[dict[str, Any]]:
        """The AMI's devices: the root and extra EBS volumes (deleted with the instances launched from it),
        volumes not wanted in the image removed, and the instance-store (ephemeral) volumes."""
        s = self.settings
        root = inst.extra.get("root_device") or "/dev/xvda"
        mappings: list[dict[str, Any]] = [{"DeviceName": root, "Ebs": {"DeleteOnTermination": True}}]
        for v in s.extra_volumes:
            mappings.append({"DeviceName": v.device, "Ebs": {"DeleteOnTermination": v.delete_on_termination}}
                            if v.in_image else {"DeviceName": v.device, "NoDevice": ""})
        mappings += [{"DeviceName": device, "VirtualName": name} for device, name in s.ephemeral_volumes]
        return mappings

    def snapshot(self, ctx: BakeContext) -> Image:
        inst = ctx.instance
        region = inst.region
        ec2 = self.ec2(region)
        name = f"kiln-{ctx.role}-{ctx.version}"
        tags = self.image_tags(ctx, name)
        description = f"kiln {ctx.role} {ctx.version}: {ctx.compiled.description}"[:255]
        try:
            # create_image takes the image's tags; snapshots are tagged once known (moto, and
            # some partitions, refuse a snapshot TagSpecification here).
            resp = ec2.create_image(InstanceId=inst.id, Name=name, Description=description,
                                    NoReboot=not inst.extra.get("spot"), BlockDeviceMappings=self.image_mappings(inst),
                                    TagSpecifications=[tag_spec("image", tags)])
        except BaseException as exc:  # noqa: B036 - the AMI may exist although the answer was lost
            if not isinstance(exc, ClientError):
                found = self._image_by_name(region, name)
                if found:
                    ctx.image = self._image_from(found, region, ctx.role)
            if isinstance(exc, ClientError):
                raise ProviderError(f"create_image failed: {exc}") from exc
            raise
        image = Image(id=resp["ImageId"], role=ctx.role, version=ctx.version, provider=self.name, region=region,
                      name=name, created=iso(now_utc()), base=ctx.base.id, inputs_hash=ctx.inputs_hash,
                      status="pending", extra={"tags": tags})
        ctx.image = image  # owned from here: the stage's undo deregisters it if the bake fails
        self._safely(self.data_plane.image_created, region, inst.id, image.id)
        try:
            described = self.wait_image(region, image.id)
        except ImageWaitTimeout:
            self._record_pending(ctx, image)
            ctx.image = None  # not deregistered now: its snapshots are still being made
            raise
        if described.get("VirtualizationType", "hvm") != "hvm":
            raise ProviderError(f"AMI {image.id} is {described.get('VirtualizationType')}: HVM only")
        self._finish_image(region, image.id, described, tags)
        image.status = "available"
        image.extra["snapshots"] = snapshot_ids(described)
        return image

    def _finish_image(self, region: str, image_id: str, described: dict[str, Any], tags: dict[str, str]) -> None:
        """IMDSv2 only for instances of the AMI, and the AMI's tags on its snapshots."""
        ec2 = self.ec2(region)
        try:
            ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})
        except ClientError as exc:
            if not unimplemented(exc):
                raise ProviderError(f"setting IMDSv2 on {image_id} failed: {exc}") from exc
            log.warning("the endpoint cannot set imds-support on AMIs", image=image_id)
        snapshots = snapshot_ids(described)
        if snapshots:
            ec2.create_tags(Resources=snapshots, Tags=tag_list(tags))

    def wait_image(self, region: str, image_id: str, stop: threading.Event | None = None) -> dict[str, Any]:
        """Poll until the AMI is available (waiter.delay x waiter.max_attempts); failed: ProviderError."""
        s = self.settings
        ec2 = self.ec2(region)
        state = "unknown"
        for attempt in range(s.waiter_max_attempts):
            try:
                images = ec2.describe_images(ImageIds=[image_id])["Images"]
            except ClientError as exc:
                if not error_code(exc).startswith("InvalidAMIID"):  # not visible yet: eventual consistency
                    raise
                images = []
            if images:
                state = images[0].get("State", "available")
                if state == "available":
                    return images[0]
                if state in ("failed", "invalid", "deregistered", "error"):
                    reason = images[0].get("StateReason", {}).get("Message", "")
                    raise ProviderError(f"AMI {image_id} in {region} is {state}: {reason}")
            if attempt + 1 < s.waiter_max_attempts:
                if stop is not None:
                    if stop.wait(s.waiter_delay):
                        raise ProviderError(f"stopped waiting for AMI {image_id} in {region}")
                else:
                    self.sleep(s.waiter_delay)
        raise ImageWaitTimeout(f"AMI {image_id} in {region} is still {state} after {s.waiter_max_attempts} checks "
                               f"{s.waiter_delay:g}s apart (providers.aws.waiter); recorded as pending in "
                               f"{self.pending.path}: the next run removes it once it settles")

    def _record_pending(self, ctx: BakeContext, image: Image) -> None:
        moment = iso(now_utc())
        self.pending.add(PendingImage(region=image.region, image_id=image.id, role=ctx.role, version=ctx.version,
                                      build_id=ctx.build_id, recorded=moment))
        try:
            manifest.append(self.state_dir / "manifest.json", [{
                "role": ctx.role, "version": ctx.version, "provider": self.name, "build_id": ctx.build_id,
                "region": image.region, "image_id": image.id, "image_name": image.name, "status": "pending",
                "inputs_hash": ctx.inputs_hash, "started": ctx.started.isoformat(), "finished": moment}])
        except OSError as exc:
            log.error("could not record the pending AMI in the manifest", image=image.id, error=str(exc))
        log.warning("AMI still pending; recorded for the next run", image=image.id, region=image.region)

    def settle_pending(self) -> list[str]:
        """AMIs an earlier bake stopped waiting for: once settled (available or failed) they are removed
        with their snapshots (they were never published); still pending ones wait for the next run."""
        settled = []
        for row in self.pending.read():
            try:
                images = self.ec2(row.region).describe_images(ImageIds=[row.image_id])["Images"]
            except ClientError as exc:
                if not error_code(exc).startswith("InvalidAMIID"):
                    log.warning("could not check a pending AMI", image=row.image_id, error=str(exc))
                    continue
                images = []
            state = images[0].get("State", "available") if images else "gone"
            if state == "pending":
                log.info("AMI of an earlier bake still pending", image=row.image_id, build_id=row.build_id)
                continue
            if images:
                self.remove_image(row.region, row.image_id)
            self.pending.remove(row.image_id)
            settled.append(row.image_id)
            log.info("pending AMI of an earlier bake settled and removed (never published)", image=row.image_id,
                     state=state, build_id=row.build_id)
        return settled

    def _image_by_name(self, region: str, name: str) -> dict[str, Any] | None:
        try:
            images = self.ec2(region).describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
        except Exception:  # best effort while unwinding
            return None
        return images["Images"][0] if images["Images"] else None

    def _image_from(self, row: dict[str, Any], region: str, role: str) -> Image:
        tags = tags_of(row)
        return Image(id=row["ImageId"], role=role, version=tags.get(VERSION, ""), provider=self.name, region=region,
                     name=row.get("Name", ""), created=row.get("CreationDate", ""), base=tags.get("kiln:base-image", ""),
                     inputs_hash=tags.get("kiln:inputs-hash", ""), status=row.get("State", ""),
                     extra={"snapshots": snapshot_ids(row), "build_id": tags.get(BUILD_ID, ""),
                            "deprecation_time": row.get("DeprecationTime", "")})

    def remove_image(self, region: str, image_id: str) -> None:
        """Deregister the AMI and delete its snapshots (raises on failure; callers decide)."""
        ec2 = self.ec2(region)
        try:
            images = ec2.describe_images(ImageIds=[image_id])["Images"]
        except ClientError as exc:
            if not error_code(exc).startswith("InvalidAMIID"):
                raise
            images = []
        if images:
            ec2.deregister_image(ImageId=image_id)
        for snapshot in snapshot_ids(images[0]) if images else []:
            for attempt in range(6):
                try:
                    ec2.delete_snapshot(SnapshotId=snapshot)
                    break
                except ClientError as exc:
                    code = error_code(exc)
                    if code == "InvalidSnapshot.NotFound":
                        break
                    if code == "InvalidSnapshot.InUse" and attempt < 5:  # the deregistration is settling
                        self.sleep(2)
                        continue
                    raise
        self._safely(self.data_plane.image_removed, region, image_id)

    def discard(self, ctx: BakeContext, image: Image) -> None:
        try:
            self.remove_image(image.region, image.id)
        except Exception as exc:
            log.error("could not remove the unfinished AMI; remove by hand", image=image.id, region=image.region,
                      error=str(exc), command=f"aws ec2 deregister-image --region {image.region} --image-id "
                                              f"{image.id} (then delete its snapshots)")

    # --- distribution ----------------------------------------------------------------
    def publish(self, ctx: BakeContext, image: Image) -> list[Image]:
        """Copy to the other regions in parallel, share, then move ``/kiln/<role>/latest`` in each region.

        Every copy is appended to ``ctx.published`` as soon as it exists, so the stage's undo
        (unpublish) finds copies of a publish that failed or was interrupted half way.
        """
        s = self.settings
        published = ctx.published
        published.append(image)
        targets = [r for r in s.regions if r != image.region]
        for region in targets:  # clients are made here: creating them is not thread-safe
            self.ec2(region)
            self.ssm(region)
        if targets:
            stop = threading.Event()
            pool = ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="kiln-copy")
            futures = [pool.submit(self._copy_to, ctx, image, region, stop, published) for region in targets]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        order = {region: i for i, region in enumerate(s.regions)}
        images = sorted(published, key=lambda i: order.get(i.region, 99))
        permissions = s.share.launch_permissions()
        if permissions:
            for img in images:
                self.ec2(img.region).modify_image_attribute(ImageId=img.id, LaunchPermission={"Add": permissions})
            log.info("shared", accounts=s.share.accounts, orgs=s.share.org_arns, ous=s.share.ou_arns,
                     public=s.share.public)
        for img in images:  # every copy is available by now: only then does latest move
            img.extra["previous_latest"] = self.latest(img.region, ctx.role)
            self.ssm(img.region).put_parameter(
                Name=latest_parameter(ctx.role), Value=img.id, Type="String", DataType="aws:ec2:image",
                Overwrite=True, Description=f"kiln: latest {ctx.role} ({ctx.version})")
            img.latest, img.status = True, "latest"
        self.release_version(ctx.role, ctx.version)  # the AMIs carry the version now
        return images

    def _copy_to(self, ctx: BakeContext, image: Image, region: str, stop: threading.Event,
                 published: list[Image]) -> Image:
        s = self.settings
        ec2 = self.ec2(region)
        tags = {**image.extra.get("tags", {}), "kiln:source-image": image.id, "kiln:source-region": image.region}
        kwargs: dict[str, Any] = {}
        if s.encrypted:
            kwargs["Encrypted"] = True
            if s.kms_keys.get(region):
                kwargs["KmsKeyId"] = s.kms_keys[region]
        resp = ec2.copy_image(SourceImageId=image.id, SourceRegion=image.region, Name=image.name,
                              Description=f"kiln {ctx.role} {ctx.version} (copy of {image.id} in {image.region})",
                              ClientToken=f"kiln-{ctx.build_id}-{region}"[:64],
                              TagSpecifications=[tag_spec("image", tags)], **kwargs)
        copy = Image(id=resp["ImageId"], role=ctx.role, version=ctx.version, provider=self.name, region=region,
                     name=image.name, created=iso(now_utc()), base=image.base, inputs_hash=image.inputs_hash,
                     status="pending", extra={"tags": tags, "source": image.id})
        published.append(copy)
        self._safely(self.data_plane.image_copied, image.region, image.id, region, copy.id)
        described = self.wait_image(region, copy.id, stop)
        # copies do not reliably carry tags (CopyImageTags, and moto, differ): tag explicitly
        ec2.create_tags(Resources=[copy.id], Tags=tag_list(tags))
        self._finish_image(region, copy.id, described, tags)
        copy.status = "available"
        copy.extra["snapshots"] = snapshot_ids(described)
        log.info("copied", region=region, image=copy.id)
        return copy

    def latest(self, region: str, role: str) -> str:
        try:
            return self.ssm(region).get_parameter(Name=latest_parameter(role))["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return ""
            raise

    def unpublish(self, ctx: BakeContext, images: list[Image]) -> None:
        """Put ``latest`` back where it was (if it still points to this bake's AMI) and remove the copies."""
        own = ctx.image.id if ctx.image else ""
        for img in images:
            if "previous_latest" in img.extra:
                name = latest_parameter(ctx.role)
                try:
                    if self.latest(img.region, ctx.role) == img.id:
                        previous = img.extra["previous_latest"]
                        if previous:
                            self.ssm(img.region).put_parameter(Name=name, Value=previous, Type="String",
                                                               DataType="aws:ec2:image", Overwrite=True)
                        else:
                            self._delete_parameter(self.ssm(img.region), name)
                except Exception as exc:
                    log.error("could not restore latest; fix by hand", region=img.region, parameter=name,
                              value=img.extra["previous_latest"] or "(delete it)", error=str(exc))
            if img.id == own:
                continue  # the snapshot stage's undo removes the original
            try:
                self.remove_image(img.region, img.id)
                log.info("AMI copy removed", image=img.id, region=img.region)
            except Exception as exc:
                log.error("could not remove an AMI copy; remove by hand", image=img.id, region=img.region,
                          error=str(exc))

    def images(self, role: str) -> list[Image]:
        """Every AMI of ``role`` in every configured region: newest version first, regions in order."""
        found: list[Image] = []
        for region in self.settings.regions:
            rows = self.ec2(region).describe_images(Owners=["self"],
                                                    Filters=[{"Name": f"tag:{ROLE}", "Values": [role]}])["Images"]
            latest = self.latest(region, role)
            for row in rows:
                image = self._image_from(row, region, role)
                if not image.version:
                    continue
                image.latest = image.id == latest
                if image.latest:
                    image.status = "latest"
                found.append(image)
        order = {region: i for i, region in enumerate(self.settings.regions)}
        return sorted(found, key=lambda i: (sort_key(i.version), -order[i.region]), reverse=True)

    def retire(self, role: str, keep: int) -> list[Image]:
        """Per region keep the newest ``keep`` versions (``retention`` overrides); never what latest points
        to, nor an AMI still pending. Older ones are deprecated, deregistered, their snapshots deleted."""
        keep = self.settings.retention or keep
        images = [i for i in self.images(role) if i.status != "pending"]
        retired = []
        for region in self.settings.regions:
            for image in [i for i in images if i.region == region][keep:]:
                if image.latest:
                    continue
                self._deprecate(image)
                self.remove_image(region, image.id)
                retired.append(image)
                log.info("retired", role=role, version=image.version, region=region, image=image.id)
        return retired

    def _deprecate(self, image: Image) -> None:
        at = iso(now_utc() + dt.timedelta(minutes=1))
        try:
            self.ec2(image.region).enable_image_deprecation(ImageId=image.id, DeprecateAt=at)
        except Exception as exc:  # moto: NotImplementedError in-process, an unparseable HTTP 500 as a server
            if not unimplemented(exc):
                raise
            log.info("the endpoint does not implement image deprecation; deregistering directly", image=image.id)

    # --- sweep -----------------------------------------------------------------------
    def sweep(self, apply: bool) -> list[str]:
        """Temporary resources whose ``kiln:expires`` passed (instances, key pairs, security groups,
        volumes) in every region, plus expired version reservations; removed when ``apply``."""
        now = now_utc()
        found: list[str] = []
        temporary = [{"Name": f"tag:{TEMPORARY}", "Values": ["true"]}]
        for region in self.settings.regions:
            ec2 = self.ec2(region)

            def note(kind: str, ident: str, tags: dict[str, str], when: dt.datetime, extra: str = "",
                     region: str = region) -> None:
                found.append(f"{kind} {ident} in {region} (build {tags.get(BUILD_ID, '?')}, role "
                             f"{tags.get(ROLE, '?')}, expired {iso(when)}){extra}")

            rows = ec2.describe_instances(Filters=temporary + [{"Name": "instance-state-name", "Values": LIVE_STATES}])
            instances = [(i, expired(tags_of(i), now)) for r in rows["Reservations"] for i in r["Instances"]]
            ids = []
            for inst, when in instances:
                if when:
                    note("instance", inst["InstanceId"], tags_of(inst), when)
                    ids.append(inst["InstanceId"])
            if apply and ids:
                ec2.terminate_instances(InstanceIds=ids)
                self._safely(self.data_plane.terminated, region, ids)
                try:
                    self._instance_waiter(region, "instance_terminated", ids, max_seconds=300)
                except WaiterError as exc:
                    log.warning("instances still terminating", instances=ids, error=str(exc))
            for pair in ec2.describe_key_pairs(Filters=temporary)["KeyPairs"]:
                if when := expired(tags_of(pair), now):
                    note("key pair", pair["KeyName"], tags_of(pair), when)
                    if apply:
                        ec2.delete_key_pair(KeyName=pair["KeyName"])
            for group in ec2.describe_security_groups(Filters=temporary)["SecurityGroups"]:
                if when := expired(tags_of(group), now):
                    ok = self._delete_group(region, group["GroupId"], attempts=6) if apply else True
                    note("security group", group["GroupId"], tags_of(group), when,
                         "" if ok else " - still in use, retry later")
            for volume in ec2.describe_volumes(Filters=temporary + [{"Name": "status",
                                                                     "Values": ["available"]}])["Volumes"]:
                if when := expired(tags_of(volume), now):
                    note("volume", volume["VolumeId"], tags_of(volume), when)
                    if apply:
                        ec2.delete_volume(VolumeId=volume["VolumeId"])
        found += self._sweep_reservations(now, apply)
        if apply:
            self.settle_pending()
        return found

    def _sweep_reservations(self, now: dt.datetime, apply: bool) -> list[str]:
        ssm = self.ssm()
        names = []
        for page in ssm.get_paginator("describe_parameters").paginate(
                ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": ["/kiln/"]}]):
            names += [p["Name"] for p in page["Parameters"] if "/versions/" in p["Name"]]
        found = []
        for start in range(0, len(names), 10):
            for param in ssm.get_parameters(Names=names[start:start + 10])["Parameters"]:
                try:
                    expires = json.loads(param["Value"]).get("expires", "")
                except (ValueError, AttributeError):
                    continue
                if when := expired({EXPIRES: expires}, now):
                    found.append(f"version reservation {param['Name']} in {self.build_region} (expired {iso(when)})")
                    if apply:
                        self._delete_parameter(ssm, param["Name"])
        return found


def snapshot_ids(image: dict[str, Any]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings") or []
            if m.get("Ebs", {}).get("SnapshotId")]
