"""The AMI: made from the stopped build instance, waited for, tagged (snapshots too), listed, retired."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import ClientError, WaiterError

from kiln.controller import manifest
from kiln.controller.model import Image, Machine
from kiln.controller.providers.aws.tags import (
    ARCH,
    BUILD_ID,
    DEFAULT_ARCH,
    ROLE,
    VERSION,
    error_code,
    iso,
    kiln_version,
    now_utc,
    snapshot_ids,
    tag_list,
    tag_spec,
    tags_of,
    unimplemented,
)
from kiln.controller.providers.base import ImageLeftToSweep, ImageSpec, ProviderError
from kiln.controller.versions import sort_key

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi
    from kiln.controller.providers.aws.instance import AwsInstance

log = structlog.get_logger("kiln.aws")


def image_name(role: str, version: str, arch: str = "") -> str:
    """``kiln-<role>-<version>``; another architecture's AMI of the version adds it (AMI names are unique)."""
    return f"kiln-{role}-{version}" + ("" if arch in ("", DEFAULT_ARCH) else f"-{arch}")


def arch_of(image: Image) -> str:
    return image.arch or DEFAULT_ARCH


def arch_suffix(image: Image) -> str:
    """Nothing for x86_64, ``-arm64`` for arm64: keeps one architecture's names and tokens apart from another's."""
    return "" if arch_of(image) == DEFAULT_ARCH else f"-{arch_of(image)}"


def beyond_retention(images: list[Image], region: str, keep: int) -> list[Image]:
    """The images of ``region`` beyond the newest ``keep`` versions, counted per architecture
    (``images`` newest first: a version has one AMI per architecture)."""
    here = [i for i in images if i.region == region]
    return [i for arch in dict.fromkeys(map(arch_of, here)) for i in [j for j in here if arch_of(j) == arch][keep:]]


@dataclass
class AmiRecord(Image):
    """An AMI of a version in one region, with what the provider needs of it later."""

    tags: dict[str, str] = field(default_factory=dict)  # its tags, given to its copies and snapshots
    snapshots: list[str] = field(default_factory=list)
    source: str = ""  # a copy's source AMI
    deprecation_time: str = ""


class ImageWaitTimeout(ProviderError):
    """The AMI did not become available within the configured waiter."""


class PendingAmi(ImageWaitTimeout, ImageLeftToSweep):
    """The new AMI is still pending past the waiter: recorded in its version reservation for the next bake
    of the role or ``sweep`` (it cannot be deregistered while its snapshots are being made)."""


class Amis:
    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def prepare_snapshot(self, inst: Machine) -> None:
        """Stop the instance (a consistent disk), and turn ENA on while it is stopped."""
        ec2 = self.api.ec2(inst.region)
        if inst.spot:
            log.info("spot instance: not stopped (one-time spot cannot be); create_image reboots it instead")
            return
        ec2.stop_instances(InstanceIds=[inst.id])
        try:
            self.api._instance_waiter(inst.region, "instance_stopped", [inst.id])
        except WaiterError as exc:
            raise ProviderError(
                f"instance {inst.id} did not stop within 600 s ({exc}); it is terminated on the way out"
            ) from exc
        if self.api.settings.ena_support and not inst.ena:
            ec2.modify_instance_attribute(InstanceId=inst.id, EnaSupport={"Value": True})
            log.info("ENA support enabled on the build instance", instance=inst.id)

    def image_tags(self, spec: ImageSpec, name: str) -> dict[str, str]:
        tags = {"Name": name, **self.api.settings.tags}
        tags.update({f"kiln:{key}": value for key, value in spec.labels.items()})
        tags.update({"kiln:kiln-version": kiln_version(), "kiln:base-name": spec.base.name if spec.base else ""})
        tags[ARCH] = spec.arch or DEFAULT_ARCH
        return tags

    def image_mappings(self, inst: AwsInstance) -> list[dict[str, Any]]:
        """The AMI's devices: the root and extra EBS volumes (deleted with the instances launched from it),
        volumes not wanted in the image removed, and the instance-store (ephemeral) volumes."""
        s = self.api.settings
        root = inst.root_device or "/dev/xvda"
        mappings: list[dict[str, Any]] = [{"DeviceName": root, "Ebs": {"DeleteOnTermination": True}}]
        for v in s.extra_volumes:
            mappings.append(
                {"DeviceName": v.device, "Ebs": {"DeleteOnTermination": v.delete_on_termination}}
                if v.in_image
                else {"DeviceName": v.device, "NoDevice": ""}
            )
        mappings += [{"DeviceName": device, "VirtualName": name} for device, name in s.ephemeral_volumes]
        return mappings

    def snapshot(self, spec: ImageSpec, on_created: Callable[[Image], None]) -> Image:
        inst = spec.machine
        region = inst.region
        ec2 = self.api.ec2(region)
        name = image_name(spec.role, spec.version, spec.arch)
        tags = self.image_tags(spec, name)
        description = f"kiln {spec.role} {spec.version}: {spec.description}"[:255]
        params = {
            "InstanceId": inst.id,
            "Name": name,
            "Description": description,
            "NoReboot": not inst.spot,
            "BlockDeviceMappings": self.image_mappings(inst),
        }
        specs = [tag_spec("image", tags), tag_spec("snapshot", tags)]
        try:
            try:
                resp = ec2.create_image(**params, TagSpecifications=specs)
            except Exception as exc:
                if not unimplemented(exc):
                    raise
                # moto refuses a snapshot TagSpecification (and creates nothing): the image is
                # tagged now, its snapshots with create_tags once they are known
                log.info("the endpoint cannot tag snapshots at creation; tagging them afterwards")
                resp = ec2.create_image(**params, TagSpecifications=specs[:1])
        except BaseException as exc:  # noqa: B036 - the AMI may exist although the answer was lost
            if not isinstance(exc, ClientError):
                found = self._image_by_name(region, name)
                if found:
                    on_created(self._image_from(found, region, spec.role))
            if isinstance(exc, ClientError):
                raise ProviderError(f"create_image failed: {exc}") from exc
            raise
        image = AmiRecord(
            id=resp["ImageId"],
            role=spec.role,
            version=spec.version,
            provider=self.api.name,
            region=region,
            name=name,
            created=iso(now_utc()),
            base=spec.base.id,
            inputs_hash=spec.inputs_hash,
            status="pending",
            tags=tags,
            arch=tags[ARCH],
            build_id=spec.build_id,
        )
        on_created(image)  # owned from here: the caller's undo deregisters it if the bake fails
        self.api._safely(self.api.data_plane.image_created, region, inst.id, image.id)
        try:
            described = self.wait_image(region, image.id)
        except ImageWaitTimeout as exc:
            self._record_pending(spec, image)
            raise PendingAmi(str(exc)) from exc  # not deregistered now: its snapshots are still being made
        if described.get("VirtualizationType", "hvm") != "hvm":
            raise ProviderError(f"AMI {image.id} is {described.get('VirtualizationType')}: HVM only")
        self._finish_image(region, image.id, described, tags)
        image.status = "available"
        image.snapshots = snapshot_ids(described)
        return image

    def _finish_image(self, region: str, image_id: str, described: dict[str, Any], tags: dict[str, str]) -> None:
        """IMDSv2 only for instances of the AMI, and the AMI's tags on its snapshots (again: idempotent,
        and the only tagging of a copy's snapshots or where the endpoint refused it at creation)."""
        ec2 = self.api.ec2(region)
        try:
            ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})
        except ClientError as exc:
            if not unimplemented(exc):
                raise ProviderError(f"setting IMDSv2 on {image_id} failed: {exc}") from exc
            log.warning("the endpoint cannot set imds-support on AMIs", image=image_id)
        snapshots = snapshot_ids(described)
        if snapshots:
            ec2.create_tags(Resources=snapshots, Tags=tag_list(tags))

    def wait_image(
        self, region: str, image_id: str, stop: threading.Event | None = None, left: str = ""
    ) -> dict[str, Any]:
        """Poll until the AMI is available (waiter.delay x waiter.max_attempts); failed: ProviderError.

        ``left`` says in the timeout's error what becomes of the AMI (the default: the snapshot's)."""
        s = self.api.settings
        ec2 = self.api.ec2(region)
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
            if attempt and attempt % max(1, round(60 / max(s.waiter_delay, 0.001))) == 0:
                log.info(
                    "still waiting for the AMI",
                    image=image_id,
                    region=region,
                    state=state,
                    seconds=round(attempt * s.waiter_delay),
                )  # AMIs take minutes: show it is alive
            if attempt + 1 < s.waiter_max_attempts:
                if stop is not None:
                    if stop.wait(s.waiter_delay):
                        raise ProviderError(f"stopped waiting for AMI {image_id} in {region}")
                else:
                    self.api.sleep(s.waiter_delay)
        raise ImageWaitTimeout(
            f"AMI {image_id} in {region} is still {state} after {s.waiter_max_attempts} checks "
            f"{s.waiter_delay:g}s apart (providers.aws.waiter, about "
            f"{s.waiter_max_attempts * s.waiter_delay:.0f} s); "
            + (
                left
                or "recorded in its version reservation: the next bake of the role or "
                "`invoke sweep --apply` removes it once it settles"
            )
        )

    def _record_pending(self, spec: ImageSpec, image: Image) -> None:
        """The AMI is still being made: it cannot be removed now. Its build's version reservation is
        kept (marked ended) instead of released, and proves to the next run or sweep that the AMI is
        an unpublished leftover, to be removed once it settles."""
        self.api._given_up.setdefault((spec.role, spec.version), []).append([image.region, image.id])
        moment = iso(now_utc())
        try:
            manifest.append(
                self.api.state_dir / "manifest.json",
                [
                    {
                        "role": spec.role,
                        "version": spec.version,
                        "provider": self.api.name,
                        "build_id": spec.build_id,
                        "region": image.region,
                        "image_id": image.id,
                        "image_name": image.name,
                        "status": "pending",
                        "inputs_hash": spec.inputs_hash,
                        "started": spec.started.isoformat(),
                        "finished": moment,
                    }
                ],
            )
        except OSError as exc:
            log.error("could not record the pending AMI in the manifest", image=image.id, error=str(exc))
        log.warning(
            "AMI still pending; its version reservation stays as the proof for the next run or sweep",
            image=image.id,
            region=image.region,
            version=spec.version,
        )

    def _image_by_name(self, region: str, name: str) -> dict[str, Any] | None:
        try:
            images = self.api.ec2(region).describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
        except Exception:  # best effort while unwinding
            return None
        return images["Images"][0] if images["Images"] else None

    def _image_from(self, row: dict[str, Any], region: str, role: str) -> Image:
        tags = tags_of(row)
        return AmiRecord(
            id=row["ImageId"],
            role=role,
            version=tags.get(VERSION, ""),
            provider=self.api.name,
            region=region,
            name=row.get("Name", ""),
            created=row.get("CreationDate", ""),
            base=tags.get("kiln:base-image", ""),
            inputs_hash=tags.get("kiln:inputs-hash", ""),
            status=row.get("State", ""),
            snapshots=snapshot_ids(row),
            build_id=tags.get(BUILD_ID, ""),
            nightly_run=tags.get("kiln:nightly-run", ""),
            deprecation_time=row.get("DeprecationTime", ""),
            arch=tags.get(ARCH) or row.get("Architecture") or DEFAULT_ARCH,
        )

    def remove_image(self, region: str, image_id: str) -> None:
        """Deregister the AMI and delete its snapshots (raises on failure; callers decide)."""
        ec2 = self.api.ec2(region)
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
                        self.api.sleep(2)
                        continue
                    raise
        self.api._safely(self.api.data_plane.image_removed, region, image_id)

    def discard(self, image: Image) -> None:
        try:
            self.remove_image(image.region, image.id)
        except Exception as exc:
            log.error(
                "could not remove the unfinished AMI; remove by hand",
                image=image.id,
                region=image.region,
                error=str(exc),
                command=f"aws ec2 deregister-image --region {image.region} --image-id "
                f"{image.id} (then delete its snapshots)",
            )

    def images(self, role: str) -> list[Image]:
        """Every AMI of ``role`` in every configured region: newest version first, regions in order."""
        found: list[Image] = []
        for region in self.api.settings.regions:
            rows = self.api.ec2(region).describe_images(
                Owners=["self"], Filters=[{"Name": f"tag:{ROLE}", "Values": [role]}]
            )["Images"]
            latest: dict[str, str] = {}  # arch -> what its latest names here
            for row in rows:
                image = self._image_from(row, region, role)
                if not image.version:
                    continue
                arch = arch_of(image)
                if arch not in latest:
                    latest[arch] = self.api.latest_pointer.latest(region, role, arch)
                image.latest = image.id == latest[arch]
                if image.latest:
                    image.status = "latest"
                found.append(image)
        order = {region: i for i, region in enumerate(self.api.settings.regions)}
        return sorted(found, key=lambda i: (sort_key(i.version), -order[i.region]), reverse=True)

    def retire(self, role: str, keep: int) -> list[Image]:
        """Per region keep the newest ``keep`` versions (``retention`` overrides); never what a latest
        parameter (any architecture) or a launch template's default version names, nor an AMI still
        pending. Older ones are deprecated, deregistered, their snapshots deleted."""
        from kiln.controller import consumers

        keep = self.api.settings.retention or keep
        images = [i for i in self.images(role) if i.status != "pending"]
        in_use = consumers.in_use(self.api, role)
        retired = []
        for region in self.api.settings.regions:
            for image in beyond_retention(images, region, keep):
                if image.latest or image.id in in_use:
                    if not image.latest:
                        log.info("kept beyond retention: in use", role=role, version=image.version, image=image.id)
                    continue
                self._deprecate(image)
                self.remove_image(region, image.id)
                retired.append(image)
                log.info("retired", role=role, version=image.version, region=region, image=image.id)
        return retired

    def _deprecate(self, image: Image) -> None:
        at = iso(now_utc() + dt.timedelta(minutes=1))
        try:
            self.api.ec2(image.region).enable_image_deprecation(ImageId=image.id, DeprecateAt=at)
        except Exception as exc:  # moto: NotImplementedError in-process, an unparseable HTTP 500 as a server
            if not unimplemented(exc):
                raise
            log.info("the endpoint does not implement image deprecation; deregistering directly", image=image.id)
