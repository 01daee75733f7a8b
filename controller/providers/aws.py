"""The AWS provider: build machines are EC2 instances, images are AMIs, ``latest`` is an SSM parameter.

Everything the bake creates is recorded on the context the moment it exists (a key
pair, a security group, an instance, an AMI, each copy), so an interrupt at any point
still removes it; every temporary resource is tagged ``kiln:temporary=true``,
``kiln:build-id`` and ``kiln:expires`` for ``invoke sweep`` should the controller die,
and the instance halts itself (= terminates) at the deadline.

The AMI half (snapshot, copies, ``latest``, retire) is in ``aws_images.py``; settings in
``aws_settings.py``; tags, console fingerprints, user data and the data plane hooks in
``aws_support.py``.

``--sandbox`` runs this same code against moto with local containers as the data
plane (controller/sandbox.py); only the endpoint and the SSH address differ.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import structlog
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from controller.context import BakeContext
from controller.model import BaseImage, Diagnostic, Instance, InvalidInput
from controller.ownership import BuildClaim
from controller.providers.aws_images import AmiLifecycle, ImageWaitTimeout
from controller.providers.aws_settings import AwsSettings, parse_settings
from controller.providers.aws_support import (
    ARCH,
    BUILD_ID,
    CAPACITY_ERRORS,
    DEFAULT_ARCH,
    EXPIRES,
    ROLE,
    TEMPORARY,
    VERSION,
    CloudDataPlane,
    DataPlane,
    claim_value,
    console_fingerprints,
    error_code,
    expired,
    iso,
    kiln_version,
    lock_parameter,
    now_utc,
    read_claim,
    ssh_answers,
    stale_reason,
    tag_spec,
    tags_of,
    user_data,
    versions_path,
)
from controller.providers.base import Lock, ProviderError, UnknownBase
from controller.ssh import HostKeyExpectation
from controller.versions import next_version

log = structlog.get_logger("kiln.aws")

__all__ = ["AwsProvider", "ImageWaitTimeout", "make_aws_provider"]

ADDRESS_FIELDS = {
    "public_ip": "PublicIpAddress",
    "private_ip": "PrivateIpAddress",
    "public_dns": "PublicDnsName",
    "private_dns": "PrivateDnsName",
}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
CLAIM_RACES = 1000  # a bound on a lock's take-over loop: waits are bounded by time, this by attempts
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


def with_arch(spec: Any, arch: str) -> Any:
    """The base spec with ``{arch}`` in its strings replaced (one role.yml names every architecture's base)."""
    if isinstance(spec, str):
        return spec.replace("{arch}", arch)
    if isinstance(spec, dict):
        return {key: with_arch(value, arch) for key, value in spec.items()}
    if isinstance(spec, list):
        return [with_arch(value, arch) for value in spec]
    return spec


_ARCH_WORDS = re.compile(r"x86_64|arm64|i386")


def closest_names(name: str, names: list[str], count: int = 5) -> list[str]:
    """The ``count`` names nearest ``name``: sharing its release numbers (2023 of amzn2023) first, then its
    architecture, then by difflib's ratio of the last path part."""
    leaf = name.rsplit("/", 1)[-1]

    def marks(text: str) -> set[str]:
        return set(re.findall(r"\d{3,}", _ARCH_WORDS.sub("", text)))

    def rank(candidate: str) -> tuple[int, bool, float]:
        other = candidate.rsplit("/", 1)[-1]
        same_arch = set(_ARCH_WORDS.findall(leaf)) == set(_ARCH_WORDS.findall(other))
        return len(marks(leaf) & marks(other)), same_arch, difflib.SequenceMatcher(None, leaf, other).ratio()

    return sorted(names, key=rank, reverse=True)[:count]


def make_aws_provider(
    settings: dict[str, Any] | None,
    sandbox: bool = False,
    state_dir: Path = Path("builds"),
    config: Any = None,
    session: boto3.Session | None = None,
    data_plane: DataPlane | None = None,
) -> AwsProvider:
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


class AwsProvider(AmiLifecycle):
    name = "aws"

    def __init__(
        self,
        settings: AwsSettings,
        session: boto3.Session,
        state_dir: Path = Path("builds"),
        data_plane: DataPlane | None = None,
        endpoint_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.session = session
        self.state_dir = Path(state_dir)
        self.data_plane: DataPlane = data_plane or CloudDataPlane()
        self.endpoint_url = endpoint_url  # None: boto3's own resolution (which honours AWS_ENDPOINT_URL)
        self.sleep = sleep
        self.boto_config = BotoConfig(
            retries={"mode": settings.retry_mode, "max_attempts": settings.retry_max_attempts},
            user_agent_extra=f"kiln/{kiln_version()}",
            connect_timeout=10,
            read_timeout=120,
        )
        self._given_up: dict[tuple[str, str], list[list[str]]] = {}  # (role, version) -> AMIs still pending
        self._held: dict[str, tuple[str, float, float]] = {}  # role -> (owner, lease, renew until) of held locks
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._lease_lock = threading.Lock()  # a renewal and a release of a lock never interleave
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
                self._clients[key] = self.session.client(
                    service, region_name=key[1], endpoint_url=self.endpoint_url, config=self.boto_config
                )
            return self._clients[key]

    def ec2(self, region: str | None = None) -> Any:
        return self.client("ec2", region)

    def ssm(self, region: str | None = None) -> Any:
        return self.client("ssm", region)

    def close(self) -> None:
        self._heartbeat_stop.set()
        if self.sandbox is not None:
            self.sandbox.close()

    def _instance_waiter(self, region: str, name: str, ids: list[str], max_seconds: float = 600) -> None:
        delay = max(0, min(5.0, self.settings.waiter_delay))
        attempts = max(1, int(max_seconds / delay)) if delay else 40
        self.ec2(region).get_waiter(name).wait(InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})

    # --- base image ------------------------------------------------------------------
    @property
    def architectures(self) -> list[str]:
        """What one bake makes an AMI of each (``providers.aws.architectures``)."""
        return list(self.settings.architectures)

    def resolve_base(self, spec: Any, arch: str = "") -> BaseImage:
        """A pinned ``ami``, an ``ssm_parameter`` (e.g. AWS's public latest-AMI parameters) or a ``filter``.

        ``{arch}`` in the spec becomes ``arch`` (x86_64 when none is given); with ``arch`` the base
        must be of that architecture (a filter without one gets it)."""
        written = spec
        spec = with_arch(spec, arch or DEFAULT_ARCH)
        if arch and isinstance(spec, dict) and isinstance(spec.get("filter"), dict):
            spec = {**spec, "filter": {"architecture": arch, **spec["filter"]}}
        if not spec:
            raise ProviderError(
                "the role has no AWS base image: set base: {aws: {ssm_parameter: /aws/service/...}} "
                "(or {ami: ami-...}, or {filter: {owners, name, architecture}}) in role.yml"
            )
        if isinstance(spec, str):
            spec = {"ami": spec} if spec.startswith("ami-") else {"ssm_parameter": spec.removeprefix("resolve:ssm:")}
        kinds = [k for k in ("ami", "ssm_parameter", "filter") if k in spec] if isinstance(spec, dict) else []
        if len(kinds) != 1 or set(spec) - {"ami", "ssm_parameter", "filter"}:
            raise ProviderError(
                f"base.aws must be exactly one of {{ami: ami-...}}, {{ssm_parameter: /path}} or "
                f"{{filter: {{owners, name, architecture}}}}; got {spec!r}"
            )
        region = self.build_region
        if "ami" in spec:
            image = self._describe_base(str(spec["ami"]), f"pinned AMI {spec['ami']}")
        elif "ssm_parameter" in spec:
            name = str(spec["ssm_parameter"])
            try:
                value = self.ssm().get_parameter(Name=name)["Parameter"]["Value"]
            except ClientError as exc:
                if error_code(exc) == "ParameterNotFound":
                    raise self._unknown_parameter(name, written) from exc
                raise ProviderError(f"reading SSM parameter {name} in {region} failed: {exc}") from exc
            image = self._describe_base(value, f"{name} ({value})")
        else:
            image = self._find_base(spec["filter"])
        if image.get("VirtualizationType", "hvm") != "hvm":
            raise ProviderError(
                f"base image {image['ImageId']} ({image.get('Name', '')}) is "
                f"{image.get('VirtualizationType')}: kiln bakes HVM images only (paravirtual AMIs "
                "cannot use current instance types, ENA or IMDSv2); choose an HVM base"
            )
        if image.get("State", "available") != "available":
            raise ProviderError(f"base image {image['ImageId']} is {image.get('State')}, not available")
        if arch and image.get("Architecture", arch) != arch:
            raise ProviderError(
                f"base image {image['ImageId']} ({image.get('Name', '')}) is {image.get('Architecture')}, but this "
                f"build is {arch}: template the base by {{arch}} (e.g. .../al2023-ami-kernel-default-{{arch}})"
            )
        self._remember_root(image)
        return BaseImage(
            id=image["ImageId"], name=image.get("Name", image["ImageId"]), spec=json.dumps(spec, sort_keys=True)
        )

    def _unknown_parameter(self, name: str, written: Any) -> UnknownBase:
        """The parameter does not exist: say which names do, closest first, under the same path."""
        parent = name.rsplit("/", 1)[0] or "/"
        try:
            names = self._parameter_names(parent)
        except ClientError as exc:
            names = []
            log.warning("could not list the parameters beside the missing one", path=parent, error=str(exc))
        closest = closest_names(name, names)
        listed = "; the closest that exist: " + ", ".join(closest) if closest else f" (nothing under {parent})"
        text = written.get("ssm_parameter", name) if isinstance(written, dict) else str(written)
        return UnknownBase(
            f"base.aws: SSM parameter {name} does not exist in {self.build_region}{listed}",
            written=str(text).removeprefix("resolve:ssm:"),
        )

    def _parameter_names(self, path: str, pages: int = 50) -> list[str]:
        """The parameter names directly under ``path`` (at most ``pages`` pages of them)."""
        names: list[str] = []
        paginator = self.ssm().get_paginator("get_parameters_by_path")
        for i, page in enumerate(paginator.paginate(Path=path, Recursive=False)):
            names += [p["Name"] for p in page["Parameters"]]
            if i + 1 >= pages:
                break
        return names

    def _describe_base(self, image_id: str, what: str) -> dict[str, Any]:
        try:
            images = self.ec2().describe_images(ImageIds=[image_id])["Images"]
        except ClientError as exc:
            if error_code(exc).startswith("InvalidAMIID"):
                raise ProviderError(
                    f"no base image: {what} not found in {self.build_region} ({error_code(exc)})"
                ) from exc
            raise ProviderError(f"describing base image {what} failed: {exc}") from exc
        if not images:
            raise ProviderError(f"no base image: {what} not found in {self.build_region}")
        return images[0]

    def _find_base(self, spec: Any) -> dict[str, Any]:
        known = {"owners", "name", "architecture", "most_recent", "filters"}
        if not isinstance(spec, dict) or set(spec) - known or not spec.get("owners") or not spec.get("name"):
            raise ProviderError(
                "base.aws.filter needs owners (account ids, or amazon/self) and a name pattern, "
                f"optionally architecture, most_recent and filters; got {spec!r}"
            )
        owners = [str(o) for o in (spec["owners"] if isinstance(spec["owners"], list) else [spec["owners"]])]
        filters = [
            {"Name": "name", "Values": [str(spec["name"])]},
            {"Name": "state", "Values": ["available"]},
            {"Name": "image-type", "Values": ["machine"]},
        ]
        if spec.get("architecture"):
            filters.append({"Name": "architecture", "Values": [str(spec["architecture"])]})
        for name, values in (spec.get("filters") or {}).items():
            filters.append(
                {"Name": str(name), "Values": [str(v) for v in (values if isinstance(values, list) else [values])]}
            )
        now = now_utc()
        found = []
        for page in (
            self.ec2()
            .get_paginator("describe_images")
            .paginate(Owners=owners, Filters=filters, IncludeDeprecated=False)
        ):
            for image in page["Images"]:
                deprecation = image.get("DeprecationTime")
                if deprecation and dt.datetime.fromisoformat(deprecation.replace("Z", "+00:00")) <= now:
                    continue
                found.append(image)
        described = (
            f"owners {', '.join(owners)}, name {spec['name']}"
            + (f", architecture {spec['architecture']}" if spec.get("architecture") else "")
            + ", deprecated excluded"
        )
        if not found:
            raise ProviderError(f"no base image matches the filter in {self.build_region} ({described})")
        if len(found) > 1 and not spec.get("most_recent", True):
            names = ", ".join(sorted(i.get("Name", i["ImageId"]) for i in found)[:5])
            raise ProviderError(
                f"{len(found)} images match the base filter ({described}): {names}...; "
                "narrow the filter, or set most_recent: true"
            )
        return max(found, key=lambda i: i.get("CreationDate", ""))

    # --- versions and locks ----------------------------------------------------------
    def _reservations(self, role: str) -> dict[str, str]:
        """version -> the reservation's value (a BuildClaim JSON)."""
        found = {}
        for page in self.ssm().get_paginator("get_parameters_by_path").paginate(Path=versions_path(role)):
            found |= {p["Name"].rsplit("/", 1)[-1]: p["Value"] for p in page["Parameters"]}
        return found

    def _image_versions(self, role: str) -> set[str]:
        rows = self.ec2().describe_images(Owners=["self"], Filters=[{"Name": f"tag:{ROLE}", "Values": [role]}])
        return {tags_of(i).get(VERSION, "") for i in rows["Images"]} - {""}

    def allocate_version(self, role: str, claim: BuildClaim) -> str:
        """``YYYYMMDD.N`` above every AMI and every reservation of the day; the reservation is an SSM
        parameter created with Overwrite=False, so exactly one concurrent bake gets each version.

        The reservation holds ``claim`` (build id, controller pid on its host, the build's
        deadline): until publish releases it, it is the proof that AMIs tagged with that build id
        are unpublished, so sweep may remove them once the claim is over. Over reservations of
        this role are settled first (their AMIs removed once no longer pending)."""
        reservations = self._reservations(role)
        settled = [
            self._settle_reservation(role, version, value, apply=True) for version, value in reservations.items()
        ]
        if any(settled):
            reservations = self._reservations(role)
        taken = self._image_versions(role) | set(reservations)
        for _ in range(100):
            version = next_version(taken)
            try:
                self.ssm().put_parameter(
                    Name=f"{versions_path(role)}/{version}",
                    Value=claim_value(claim),
                    Type="String",
                    Overwrite=False,
                    Description="kiln: version reserved by a bake (a BuildClaim)",
                )
                return version
            except ClientError as exc:
                if error_code(exc) != "ParameterAlreadyExists":
                    raise ProviderError(f"reserving a version of {role} failed: {exc}") from exc
                taken.add(version)
        raise ProviderError(f"could not reserve a version for {role}")

    def release_version(self, role: str, version: str) -> None:
        """Give the version up. An AMI of it still pending keeps the reservation (marked ended): it is
        the proof by which the next bake or ``sweep`` removes that AMI once it settles."""
        name = f"{versions_path(role)}/{version}"
        pending = self._given_up.pop((role, version), None)
        try:
            if pending is None:
                self.ssm().delete_parameter(Name=name)
                return
            value = self.ssm().get_parameter(Name=name)["Parameter"]["Value"]
            claim, _ = read_claim(value)
            if claim is not None:
                self.ssm().put_parameter(
                    Name=name, Value=claim_value(claim, ended=True, pending=pending), Type="String", Overwrite=True
                )
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                log.error(
                    "could not release the version reservation; remove by hand",
                    version=version,
                    parameter=name,
                    error=str(exc),
                )

    def _settle_reservation(self, role: str, version: str, value: str, apply: bool) -> list[str]:
        """A reservation whose build is over: its AMIs (by build id, every region, copies too) are
        unpublished leftovers; they and then the reservation are removed. An AMI still pending
        keeps everything for a later run; an AMI a ``latest`` parameter names is never touched."""
        claim, ended = read_claim(value)
        if claim is None or not (ended or claim.over()):
            return []
        found, waiting = [], False
        for region in self.settings.regions:
            latest = self.latest_ids(region, role)  # latest/arm64 too
            for row in self._images_of_build(region, claim.build_id):
                where = f"AMI {row['ImageId']} in {region} (unpublished {role} {version} of {claim.describe()})"
                if row["ImageId"] in latest:
                    log.warning(
                        "an AMI of an unfinished build is latest; left alone",
                        image=row["ImageId"],
                        region=region,
                        build_id=claim.build_id,
                    )
                    continue
                if row.get("State") == "pending":
                    waiting = True
                    log.info(
                        "AMI of an over build still pending; removed once it settles",
                        image=row["ImageId"],
                        region=region,
                        build_id=claim.build_id,
                    )
                    continue
                found.append(where)
                if apply:
                    self.remove_image(region, row["ImageId"])
                    log.info(
                        "unpublished AMI of an over build removed",
                        image=row["ImageId"],
                        region=region,
                        build_id=claim.build_id,
                        version=version,
                    )
        if waiting:
            return found
        found.append(f"version reservation {versions_path(role)}/{version} ({claim.describe()}, over)")
        if apply:
            self._delete_parameter(self.ssm(), f"{versions_path(role)}/{version}")
        return found

    def _images_of_build(self, region: str, build_id: str) -> list[dict[str, Any]]:
        if not build_id:
            return []
        return self.ec2(region).describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{BUILD_ID}", "Values": [build_id]}]
        )["Images"]

    def acquire_lock(self, role: str, owner: str, wait: bool, ttl: float = 4 * 3600) -> Lock:
        """``/kiln/<role>/lock`` created with Overwrite=False, holding who holds it (owner, pid on host)
        and a short lease (``lock_lease``) a heartbeat renews while the holder lives, for at most ``ttl``.

        A holder that died on this host, or whose lease lapsed (killed elsewhere, or past ``ttl``),
        is taken over and the answer says so. ``wait`` waits at most ``ttl`` for a live holder."""
        name = lock_parameter(role)
        lease = min(self.settings.lock_lease, ttl)
        give_up = time.monotonic() + max(0.0, ttl)
        took_over = ""
        for _ in range(CLAIM_RACES):
            value = claim_value(BuildClaim.for_build(owner, now_utc() + dt.timedelta(seconds=lease)), owner=owner)
            try:
                self.ssm().put_parameter(
                    Name=name,
                    Type="String",
                    Overwrite=False,
                    Value=value,
                    Description="kiln: per-role lock (a lease renewed while held)",
                )
                self._hold(role, owner, lease, ttl)
                return Lock(True, took_over=took_over)
            except ClientError as exc:
                if error_code(exc) != "ParameterAlreadyExists":
                    raise ProviderError(f"taking the lock of {role} failed: {exc}") from exc
            held = self._read_parameter(name)
            if held is None:
                continue
            claim, _ = read_claim(held)
            holder = str(json.loads(held).get("owner", "")) if claim else held
            if holder == owner:
                return Lock(True)
            if reason := stale_reason(claim):
                took_over = f"{holder} ({claim.describe() if claim else 'unreadable value'}, {reason})"
                log.warning("taking over a stale lock", role=role, holder=took_over)
                self._delete_if_unchanged(name, held)
                continue
            if not wait:
                return Lock(False)
            if time.monotonic() >= give_up:
                raise ProviderError(
                    f"waited {ttl:.0f}s (the lock's ttl) for the lock of {role}, held by {holder} "
                    f"({claim.describe()}); it is still renewed, so its holder is alive: giving up"
                )
            self.sleep(min(10.0, max(0.5, lease / 3)))
        raise ProviderError(
            f"the lock of {role} changed hands {CLAIM_RACES} times while kiln tried to take it; giving up (see {name})"
        )

    def _read_parameter(self, name: str) -> str | None:
        try:
            return self.ssm().get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return None
            raise

    def _delete_if_unchanged(self, name: str, value: str) -> None:
        """Delete a stale claim unless someone replaced it meanwhile (SSM has no conditional delete:
        the re-read narrows the window in which two takers could both win to one round trip)."""
        if self._read_parameter(name) == value:
            self._delete_parameter(self.ssm(), name)

    def _hold(self, role: str, owner: str, lease: float, ttl: float) -> None:
        with self._lock:
            self._held[role] = (owner, lease, time.monotonic() + ttl)
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat_stop.clear()
                self._heartbeat = threading.Thread(target=self._renew_locks, name="kiln-lock-heartbeat", daemon=True)
                self._heartbeat.start()

    def _renew_locks(self) -> None:
        """Renew every held lock's lease a third of a lease before it lapses; a kill -9 stops this
        thread with its process, so the lease lapses and the next scheduler takes the lock over."""
        while True:
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._heartbeat = None
                    return
            interval = max(0.2, min(lease for _, lease, _ in held.values()) / 3)
            if self._heartbeat_stop.wait(interval):
                return
            for role, (owner, lease, until) in held.items():
                if time.monotonic() >= until:
                    log.warning("lock held longer than its ttl: no longer renewed", role=role, owner=owner)
                    with self._lock:
                        self._held.pop(role, None)
                    continue
                with self._lease_lock:  # never renew a lock that release_lock is deleting: it would come back
                    if self._held.get(role, ("",))[0] != owner:
                        continue
                    try:
                        self._renew(role, owner, lease)
                    except Exception as exc:  # a missed renewal is retried; the lease is three renewals long
                        log.warning("could not renew the lock", role=role, error=str(exc))

    def _renew(self, role: str, owner: str, lease: float) -> None:
        name = lock_parameter(role)
        held = self._read_parameter(name)
        if held is None or json.loads(held).get("owner") != owner:
            with self._lock:
                self._held.pop(role, None)
            log.error("lost the lock: another scheduler took it over", role=role, owner=owner)
            return
        value = claim_value(BuildClaim.for_build(owner, now_utc() + dt.timedelta(seconds=lease)), owner=owner)
        self.ssm().put_parameter(Name=name, Type="String", Overwrite=True, Value=value)

    def release_lock(self, role: str, owner: str) -> None:
        name = lock_parameter(role)
        with self._lease_lock:
            with self._lock:
                if self._held.get(role, ("",))[0] == owner:
                    self._held.pop(role)
            try:
                held = self._read_parameter(name)
                claim, _ = read_claim(held) if held is not None else (None, False)
                if claim is not None and json.loads(held).get("owner", claim.build_id) == owner:
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
        return {
            **self.settings.tags,
            TEMPORARY: "true",
            BUILD_ID: ctx.build_id,
            EXPIRES: iso(ctx.expires),
            ROLE: ctx.role,
            **({ARCH: ctx.arch} if ctx.arch else {}),  # which of the bake's machines, with machine_name
        }

    def launch(self, ctx: BakeContext) -> Instance:
        s = self.settings
        region = self.build_region
        ec2 = self.ec2(region)
        name = ctx.machine_name  # the build machine's, or the test stage's fresh one from the new AMI
        tags = self.temporary_tags(ctx)
        # The context owns what exists from here on; terminate() removes whatever is recorded.
        inst = Instance(id="", provider=self.name, region=region, ssh_user=s.ssh.user, extra={"key_name": name})
        ctx.instance = inst
        try:
            try:
                ec2.import_key_pair(
                    KeyName=name,
                    PublicKeyMaterial=ctx.client_key.public_openssh.encode(),
                    TagSpecifications=[tag_spec("key-pair", {**tags, "Name": name})],
                )
            except ClientError as exc:  # the name is this bake's: a retried request whose answer was lost
                if error_code(exc) != "InvalidKeyPair.Duplicate":
                    raise
            group = s.ssh.security_group_id or self._security_group(ctx, inst, name, tags)
            self._run_instance(ctx, inst, group, tags)
        except ClientError as exc:
            hint = LAUNCH_HINTS.get(error_code(exc), "")
            raise ProviderError(f"launching the {ctx.machine} instance failed: {exc}{hint}") from exc
        self.data_plane.launched(region, [inst.id])
        try:
            self._instance_waiter(region, "instance_running", [inst.id])
        except WaiterError as exc:
            raise ProviderError(
                f"instance {inst.id} did not reach running within 600 s ({exc}); it is terminated on the way out"
            ) from exc
        described = self._describe_instance(region, inst.id)
        inst.extra.update(
            root_device=described.get("RootDeviceName", ""),
            ena=bool(described.get("EnaSupport")),
            instance_type=described.get("InstanceType", ""),
            spot=described.get("InstanceLifecycle") == "spot" or s.spot,
        )
        inst.ssh_host, inst.ssh_port = self._ssh_address(region, described)
        log.info(
            "instance running",
            instance=inst.id,
            type=inst.extra["instance_type"],
            region=region,
            ssh=f"{inst.ssh_user}@{inst.ssh_host}:{inst.ssh_port}",
        )
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
                GroupName=name,
                Description=f"kiln build {ctx.build_id}: SSH from the controller only",
                TagSpecifications=[tag_spec("security-group", {**tags, "Name": name})],
                **vpc,
            )["GroupId"]
        except ClientError as exc:  # this bake's name: a retried request whose answer was lost
            if error_code(exc) != "InvalidGroup.Duplicate" or not (group := self._group_by_name(inst.region, name)):
                raise
        inst.extra["security_group_id"] = group
        cidrs = s.ssh.cidrs or self.data_plane.source_cidrs(s.ssh.address)
        v4 = [{"CidrIp": c, "Description": "kiln controller"} for c in cidrs if ":" not in c]
        v6 = [{"CidrIpv6": c, "Description": "kiln controller"} for c in cidrs if ":" in c]
        try:
            ec2.authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": v4, "Ipv6Ranges": v6}],
            )
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.Duplicate":
                raise
        return group

    def _remember_root(self, image: dict[str, Any]) -> None:
        device = image.get("RootDeviceName") or "/dev/xvda"
        size = next(
            (
                m["Ebs"].get("VolumeSize")
                for m in image.get("BlockDeviceMappings") or []
                if m.get("DeviceName") == device and "Ebs" in m
            ),
            None,
        )
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
        params: dict[str, Any] = {
            "ImageId": ctx.base.id,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": ctx.machine_name,
            "UserData": user_data(int(ctx.expires.timestamp()), s.user_data),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "InstanceInitiatedShutdownBehavior": "terminate",
            "BlockDeviceMappings": self.launch_mappings(ctx.base.id),
            "TagSpecifications": [
                tag_spec("instance", {**tags, "Name": f"kiln-{ctx.machine}-{ctx.role}-{ctx.build_id}"}),
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

    def _run_instance(self, ctx: BakeContext, inst: Instance, group: str, tags: dict[str, str]) -> None:
        params = self.run_parameters(ctx, group, tags)
        types = self.settings.instance_types_for(ctx.arch)
        inst.extra["launching"] = True  # until the id is known, terminate() looks the instance up by build id
        for i, instance_type in enumerate(types):
            try:
                resp = self.ec2(inst.region).run_instances(
                    **params, InstanceType=instance_type, ClientToken=f"{ctx.machine_name}-{i}"
                )
            except ClientError as exc:
                code = error_code(exc)
                if code not in CAPACITY_ERRORS:
                    raise
                if i + 1 == len(types):
                    raise ProviderError(f"no capacity in {inst.region} for any of {', '.join(types)}: {exc}") from exc
                log.warning(
                    "instance type unavailable; trying the next one", type=instance_type, code=code, next=types[i + 1]
                )
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
            raise ProviderError(
                f"instance {described['InstanceId']} has no {s.ssh.address.replace('_', ' ')}: set "
                "ssh.address (e.g. private_ip from inside the VPC), associate_public_ip: true, or "
                "ssh.host/ssh.port"
            )
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
            self.sleep(min(5.0, max(0.0, timeout - waited)))
        if found:
            log.info("host key fingerprints from the console", instance=inst.id, fingerprints=sorted(found))
            return HostKeyExpectation(fingerprints=found)
        reason = f"cloud-init printed no SSH host key fingerprints on the console of {inst.id} within {timeout:.0f}s"
        if self.settings.ssh.host_key_policy == "refuse":
            raise ProviderError(f"{reason}; refusing to connect (ssh.host_key_policy: refuse)")
        log.warning(
            "host key cannot be verified",
            instance=inst.id,
            reason=reason,
            hint="set ssh.host_key_policy: refuse to stop instead",
        )
        return HostKeyExpectation(unverified_reason=reason)

    def reboot_wait(self, ctx: BakeContext, timeout: float = 300) -> None:
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
        inst = ctx.instance
        region = inst.region or self.build_region
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
            self.sleep(0.5)
        log.info("instance down for its reboot", instance=inst.id, seconds=round(time.monotonic() - started, 1))
        try:
            self.data_plane.rebooting(region, inst.id, max(1.0, deadline - time.monotonic()))
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

    def hygiene_script(self) -> str:
        return HYGIENE

    def terminate(self, ctx: BakeContext | None, instance: Instance) -> None:
        """Remove the instance, then its key pair and security group; never raises, says what is left."""
        region = instance.region or self.build_region
        ec2 = self.ec2(region)
        ids = [instance.id] if instance.id else []
        if instance.extra.get("launching") and ctx is not None:
            ids += [i for i in self._instances_of_build(region, ctx.build_id, ctx.machine, ctx.arch) if i not in ids]
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
                self._safely(self.data_plane.terminated, region, ids)
                try:
                    self._instance_waiter(region, "instance_terminated", ids, max_seconds=300)
                except (WaiterError, ClientError) as exc:
                    log.warning(
                        "instance still terminating; its security group may stay", instances=ids, error=str(exc)
                    )
        key = instance.extra.get("key_name")
        if key:
            try:
                ec2.delete_key_pair(KeyName=key)
            except ClientError as exc:
                log.error(
                    "could not delete the key pair; remove by hand",
                    key_pair=key,
                    error=str(exc),
                    command=f"aws ec2 delete-key-pair --region {region} --key-name {key}",
                )
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

    def _instances_of_build(self, region: str, build_id: str, machine: str = "", arch: str = "") -> list[str]:
        """The build's live instances (``machine``: only that one of its machines, by its Name tag;
        ``arch``: only that architecture's)."""
        named = [{"Name": "tag:Name", "Values": [f"kiln-{machine}-*-{build_id}"]}] if machine else []
        named += [{"Name": f"tag:{ARCH}", "Values": [arch]}] if arch else []
        try:
            rows = self.ec2(region).describe_instances(
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

    def _group_by_name(self, region: str, name: str) -> str:
        try:
            groups = self.ec2(region).describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])[
                "SecurityGroups"
            ]
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
                log.error(
                    "could not delete the security group; remove by hand",
                    group=group,
                    error=str(exc),
                    command=f"aws ec2 delete-security-group --region {region} --group-id {group}",
                )
                return False
        return False

    # --- sweep -----------------------------------------------------------------------
    def sweep(self, apply: bool) -> list[str]:
        """Temporary resources whose ``kiln:expires`` passed (instances, key pairs, security groups,
        volumes) in every region, plus expired version reservations; removed when ``apply``."""
        now = now_utc()
        found: list[str] = []
        temporary = [{"Name": f"tag:{TEMPORARY}", "Values": ["true"]}]
        for region in self.settings.regions:
            ec2 = self.ec2(region)

            def note(
                kind: str, ident: str, tags: dict[str, str], when: dt.datetime, extra: str = "", region: str = region
            ) -> None:
                found.append(
                    f"{kind} {ident} in {region} (build {tags.get(BUILD_ID, '?')}, role "
                    f"{tags.get(ROLE, '?')}, expired {iso(when)}){extra}"
                )

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
                    note(
                        "security group",
                        group["GroupId"],
                        tags_of(group),
                        when,
                        "" if ok else " - still in use, retry later",
                    )
            for volume in ec2.describe_volumes(Filters=temporary + [{"Name": "status", "Values": ["available"]}])[
                "Volumes"
            ]:
                if when := expired(tags_of(volume), now):
                    note("volume", volume["VolumeId"], tags_of(volume), when)
                    if apply:
                        ec2.delete_volume(VolumeId=volume["VolumeId"])
        found += self._sweep_reservations(apply)
        found += self.data_plane.sweep(apply)
        return found

    def _sweep_reservations(self, apply: bool) -> list[str]:
        """Version reservations whose build is over, with the unpublished AMIs they prove are that build's."""
        ssm = self.ssm()
        names = []
        for page in ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": ["/kiln/"]}]
        ):
            names += [p["Name"] for p in page["Parameters"] if "/versions/" in p["Name"]]
        found = []
        for start in range(0, len(names), 10):
            for param in ssm.get_parameters(Names=names[start : start + 10])["Parameters"]:
                role, version = param["Name"].removeprefix("/kiln/").split("/versions/", 1)
                found += self._settle_reservation(role, version, param["Value"], apply)
        return found
