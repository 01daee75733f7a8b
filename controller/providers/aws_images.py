"""The AMI half of the AWS provider: snapshot, wait, distribute, move ``latest``, retire.

:class:`AmiLifecycle` is mixed into :class:`controller.providers.aws.AwsProvider`; it uses
the provider's clients (``ec2``/``ssm``), settings, data plane and state directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from botocore.exceptions import ClientError, WaiterError

from controller import manifest
from controller.context import BakeContext
from controller.model import Image, Instance
from controller.ownership import BuildClaim
from controller.providers.aws_settings import AwsSettings
from controller.providers.aws_support import (
    ARCH,
    BUILD_ID,
    DEFAULT_ARCH,
    ROLE,
    VERSION,
    DataPlane,
    claim_value,
    error_code,
    iso,
    kiln_version,
    latest_parameter,
    now_utc,
    publishing_parameter,
    read_claim,
    snapshot_ids,
    stale_reason,
    tag_list,
    tag_spec,
    tags_of,
    unimplemented,
)
from controller.providers.base import ProviderError
from controller.versions import sort_key

log = structlog.get_logger("kiln.aws")


def image_name(role: str, version: str, arch: str = "") -> str:
    """``kiln-<role>-<version>``; another architecture's AMI of the version adds it (AMI names are unique)."""
    return f"kiln-{role}-{version}" + ("" if arch in ("", DEFAULT_ARCH) else f"-{arch}")


def arch_of(image: Image) -> str:
    return str(image.extra.get("arch") or DEFAULT_ARCH)


def arch_suffix(image: Image) -> str:
    """Nothing for x86_64, ``-arm64`` for arm64: keeps one architecture's names and tokens apart from another's."""
    return "" if arch_of(image) == DEFAULT_ARCH else f"-{arch_of(image)}"


def beyond_retention(images: list[Image], region: str, keep: int) -> list[Image]:
    """The images of ``region`` beyond the newest ``keep`` versions, counted per architecture
    (``images`` newest first: a version has one AMI per architecture)."""
    here = [i for i in images if i.region == region]
    return [i for arch in dict.fromkeys(map(arch_of, here)) for i in [j for j in here if arch_of(j) == arch][keep:]]


class ImageWaitTimeout(ProviderError):
    """The AMI did not become available within the configured waiter."""


class AmiLifecycle:
    """AMIs of a role: made from the build instance, copied, shared, pointed to, retired."""

    name: str
    settings: AwsSettings
    data_plane: DataPlane
    state_dir: Path
    _given_up: dict[tuple[str, str], list[list[str]]]
    sleep: Callable[[float], None]

    # provided by AwsProvider
    def ec2(self, region: str | None = None) -> Any: ...
    def ssm(self, region: str | None = None) -> Any: ...
    def release_version(self, role: str, version: str) -> None: ...
    def _read_parameter(self, name: str) -> str | None: ...
    def _delete_if_unchanged(self, name: str, value: str) -> None: ...
    def _safely(self, hook: Callable[..., None], *args: Any) -> None: ...
    def _instance_waiter(self, region: str, name: str, ids: list[str], max_seconds: float = 600) -> None: ...
    @staticmethod
    def _delete_parameter(ssm: Any, name: str) -> None: ...

    # --- the image -------------------------------------------------------------------
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
            raise ProviderError(
                f"instance {inst.id} did not stop within 600 s ({exc}); it is terminated on the way out"
            ) from exc
        if self.settings.ena_support and not inst.extra.get("ena"):
            ec2.modify_instance_attribute(InstanceId=inst.id, EnaSupport={"Value": True})
            log.info("ENA support enabled on the build instance", instance=inst.id)

    def image_tags(self, ctx: BakeContext, name: str) -> dict[str, str]:
        tags = {"Name": name, **self.settings.tags}
        tags.update({f"kiln:{key}": value for key, value in ctx.labels().items()})
        tags.update({"kiln:kiln-version": kiln_version(), "kiln:base-name": ctx.base.name if ctx.base else ""})
        tags[ARCH] = ctx.arch or DEFAULT_ARCH
        return tags

    def image_mappings(self, inst: Instance) -> list[dict[str, Any]]:
        """The AMI's devices: the root and extra EBS volumes (deleted with the instances launched from it),
        volumes not wanted in the image removed, and the instance-store (ephemeral) volumes."""
        s = self.settings
        root = inst.extra.get("root_device") or "/dev/xvda"
        mappings: list[dict[str, Any]] = [{"DeviceName": root, "Ebs": {"DeleteOnTermination": True}}]
        for v in s.extra_volumes:
            mappings.append(
                {"DeviceName": v.device, "Ebs": {"DeleteOnTermination": v.delete_on_termination}}
                if v.in_image
                else {"DeviceName": v.device, "NoDevice": ""}
            )
        mappings += [{"DeviceName": device, "VirtualName": name} for device, name in s.ephemeral_volumes]
        return mappings

    def snapshot(self, ctx: BakeContext) -> Image:
        inst = ctx.instance
        region = inst.region
        ec2 = self.ec2(region)
        name = image_name(ctx.role, ctx.version, ctx.arch)
        tags = self.image_tags(ctx, name)
        description = f"kiln {ctx.role} {ctx.version}: {ctx.compiled.description}"[:255]
        params = {
            "InstanceId": inst.id,
            "Name": name,
            "Description": description,
            "NoReboot": not inst.extra.get("spot"),
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
                    ctx.image = self._image_from(found, region, ctx.role)
            if isinstance(exc, ClientError):
                raise ProviderError(f"create_image failed: {exc}") from exc
            raise
        image = Image(
            id=resp["ImageId"],
            role=ctx.role,
            version=ctx.version,
            provider=self.name,
            region=region,
            name=name,
            created=iso(now_utc()),
            base=ctx.base.id,
            inputs_hash=ctx.inputs_hash,
            status="pending",
            extra={"tags": tags, "arch": tags[ARCH]},
        )
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
        """IMDSv2 only for instances of the AMI, and the AMI's tags on its snapshots (again: idempotent,
        and the only tagging of a copy's snapshots or where the endpoint refused it at creation)."""
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

    def wait_image(
        self, region: str, image_id: str, stop: threading.Event | None = None, left: str = ""
    ) -> dict[str, Any]:
        """Poll until the AMI is available (waiter.delay x waiter.max_attempts); failed: ProviderError.

        ``left`` says in the timeout's error what becomes of the AMI (the default: the snapshot's)."""
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
                    self.sleep(s.waiter_delay)
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

    def _record_pending(self, ctx: BakeContext, image: Image) -> None:
        """The AMI is still being made: it cannot be removed now. Its build's version reservation is
        kept (marked ended) instead of released, and proves to the next run or sweep that the AMI is
        an unpublished leftover, to be removed once it settles."""
        self._given_up.setdefault((ctx.role, ctx.version), []).append([image.region, image.id])
        moment = iso(now_utc())
        try:
            manifest.append(
                self.state_dir / "manifest.json",
                [
                    {
                        "role": ctx.role,
                        "version": ctx.version,
                        "provider": self.name,
                        "build_id": ctx.build_id,
                        "region": image.region,
                        "image_id": image.id,
                        "image_name": image.name,
                        "status": "pending",
                        "inputs_hash": ctx.inputs_hash,
                        "started": ctx.started.isoformat(),
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
            version=ctx.version,
        )

    def _image_by_name(self, region: str, name: str) -> dict[str, Any] | None:
        try:
            images = self.ec2(region).describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
        except Exception:  # best effort while unwinding
            return None
        return images["Images"][0] if images["Images"] else None

    def _image_from(self, row: dict[str, Any], region: str, role: str) -> Image:
        tags = tags_of(row)
        return Image(
            id=row["ImageId"],
            role=role,
            version=tags.get(VERSION, ""),
            provider=self.name,
            region=region,
            name=row.get("Name", ""),
            created=row.get("CreationDate", ""),
            base=tags.get("kiln:base-image", ""),
            inputs_hash=tags.get("kiln:inputs-hash", ""),
            status=row.get("State", ""),
            extra={
                "snapshots": snapshot_ids(row),
                "build_id": tags.get(BUILD_ID, ""),
                "deprecation_time": row.get("DeprecationTime", ""),
                "arch": tags.get(ARCH) or row.get("Architecture") or DEFAULT_ARCH,
            },
        )

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
            log.error(
                "could not remove the unfinished AMI; remove by hand",
                image=image.id,
                region=image.region,
                error=str(exc),
                command=f"aws ec2 deregister-image --region {image.region} --image-id "
                f"{image.id} (then delete its snapshots)",
            )

    # --- distribution ----------------------------------------------------------------
    def publish(self, ctx: BakeContext, image: Image) -> list[Image]:
        """Copy to the other regions in parallel, share, then move ``/kiln/<role>/latest`` in each region.

        Every copy is appended to ``ctx.published`` as soon as it exists, so the stage's undo
        (unpublish) finds copies of a publish that failed or was interrupted half way.
        """
        s = self.settings
        published = ctx.published
        originals = [i for i in ctx.images_made() if i is not image]
        originals.insert(0, image)  # and, baking several architectures, each one's AMI of the version
        published.extend(originals)
        targets = [r for r in s.regions if r != image.region]
        for region in targets:  # clients are made here: creating them is not thread-safe
            self.ec2(region)
            self.ssm(region)
        if targets:
            stop = threading.Event()
            copies = [(original, region) for original in originals for region in targets]
            pool = ThreadPoolExecutor(max_workers=len(copies), thread_name_prefix="kiln-copy")
            futures = [pool.submit(self._copy_to, ctx, one, region, stop, published) for one, region in copies]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        order = {region: i for i, region in enumerate(s.regions)}
        images = sorted(published, key=lambda i: (order.get(i.region, 99), arch_of(i) != DEFAULT_ARCH, arch_of(i)))
        permissions = s.share.launch_permissions()
        if permissions:
            for img in images:
                self.ec2(img.region).modify_image_attribute(ImageId=img.id, LaunchPermission={"Add": permissions})
            log.info(
                "shared", accounts=s.share.accounts, orgs=s.share.org_arns, ous=s.share.ou_arns, public=s.share.public
            )
        # every copy is available and tagged: the AMIs hold the version now, so the reservation goes
        # before latest moves (a crash from here on leaves a whole, unpublished-but-complete version,
        # never a reservation that would let sweep remove an AMI a latest pointer may already name)
        self.release_version(ctx.role, ctx.version)
        with self.publishing(ctx.role, ctx.build_id):
            for img in images:
                self._move_latest(ctx, img)
        return images

    def _move_latest(self, ctx: BakeContext, img: Image) -> None:
        """Point ``latest`` (of the image's architecture) in its region to it, unless it names a newer version."""
        current = self.latest(img.region, ctx.role, arch_of(img))
        current_version = self._version_of(img.region, current) if current else ""
        if current_version and sort_key(current_version) >= sort_key(ctx.version):
            log.warning(
                "latest stayed at the newer version",
                role=ctx.role,
                region=img.region,
                arch=arch_of(img),
                latest=current_version,
                version=ctx.version,
                image=img.id,
            )
            return
        img.extra["previous_latest"] = current
        self.ssm(img.region).put_parameter(
            Name=latest_parameter(ctx.role, arch_of(img)),
            Value=img.id,
            Type="String",
            DataType="aws:ec2:image",
            Overwrite=True,
            Description=f"kiln: latest {ctx.role} ({ctx.version}, {arch_of(img)})",
        )
        img.latest, img.status = True, "latest"

    def _version_of(self, region: str, image_id: str) -> str:
        """The ``kiln:version`` of the AMI (empty when it is gone or not kiln's: any version is newer)."""
        try:
            rows = self.ec2(region).describe_images(ImageIds=[image_id])["Images"]
        except ClientError as exc:
            if not error_code(exc).startswith("InvalidAMIID"):
                raise
            return ""
        return tags_of(rows[0]).get(VERSION, "") if rows else ""

    @contextlib.contextmanager
    def publishing(self, role: str, build_id: str, ttl: float = 60.0) -> Iterator[None]:
        """Hold ``/kiln/<role>/publishing`` (an SSM parameter created with Overwrite=False, holding this
        build's claim for ``ttl`` seconds) while ``latest`` is read, compared and moved, so two
        publishes of a role never interleave. A dead or expired holder is taken over; a live one is
        waited for at most ``2 * ttl``. Always released."""
        name = publishing_parameter(role)
        give_up = time.monotonic() + 2 * ttl
        for _ in range(1000):  # bounded by time below; by attempts should it keep changing hands
            value = claim_value(BuildClaim.for_build(build_id, now_utc() + dt.timedelta(seconds=ttl)))
            try:
                self.ssm().put_parameter(
                    Name=name,
                    Value=value,
                    Type="String",
                    Overwrite=False,
                    Description="kiln: a publish is moving latest",
                )
                break
            except ClientError as exc:
                if error_code(exc) != "ParameterAlreadyExists":
                    raise ProviderError(f"taking the publish mutex of {role} failed: {exc}") from exc
            held = self._read_parameter(name)
            if held is None:
                continue
            claim, _ = read_claim(held)
            if reason := stale_reason(claim):
                log.warning(
                    "taking over a stale publish mutex",
                    role=role,
                    reason=reason,
                    holder=claim.describe() if claim else held,
                )
                self._delete_if_unchanged(name, held)
                continue
            if time.monotonic() >= give_up:
                raise ProviderError(
                    f"another publish of {role} ({claim.describe()}) held {name} for over "
                    f"{2 * ttl:.0f}s; latest was not moved (the AMIs are kept)"
                )
            self.sleep(0.5)
        else:
            raise ProviderError(f"the publish mutex of {role} ({name}) kept changing hands; latest was not moved")
        try:
            yield
        finally:
            try:
                self._delete_if_unchanged(name, value)
            except Exception as exc:  # it expires by itself after ttl; say so rather than fail the bake
                log.error(
                    "could not release the publish mutex; it expires by itself",
                    parameter=name,
                    seconds=ttl,
                    error=str(exc),
                )

    def _copy_to(
        self, ctx: BakeContext, image: Image, region: str, stop: threading.Event, published: list[Image]
    ) -> Image:
        s = self.settings
        ec2 = self.ec2(region)
        tags = {**image.extra.get("tags", {}), "kiln:source-image": image.id, "kiln:source-region": image.region}
        kwargs: dict[str, Any] = {}
        if s.encrypted:
            kwargs["Encrypted"] = True
            if s.kms_keys.get(region):
                kwargs["KmsKeyId"] = s.kms_keys[region]
        resp = ec2.copy_image(
            SourceImageId=image.id,
            SourceRegion=image.region,
            Name=image.name,
            Description=f"kiln {ctx.role} {ctx.version} (copy of {image.id} in {image.region})",
            ClientToken=f"kiln-{ctx.build_id}-{region}{arch_suffix(image)}"[:64],
            TagSpecifications=[tag_spec("image", tags)],
            **kwargs,
        )
        copy = Image(
            id=resp["ImageId"],
            role=ctx.role,
            version=ctx.version,
            provider=self.name,
            region=region,
            name=image.name,
            created=iso(now_utc()),
            base=image.base,
            inputs_hash=image.inputs_hash,
            status="pending",
            extra={"tags": tags, "source": image.id, "arch": arch_of(image)},
        )
        published.append(copy)
        self._safely(self.data_plane.image_copied, image.region, image.id, region, copy.id)
        described = self.wait_image(region, copy.id, stop, left="the copy is deregistered on the way out")
        # copies do not reliably carry tags (CopyImageTags, and moto, differ): tag explicitly
        ec2.create_tags(Resources=[copy.id], Tags=tag_list(tags))
        self._finish_image(region, copy.id, described, tags)
        copy.status = "available"
        copy.extra["snapshots"] = snapshot_ids(described)
        log.info("copied", region=region, image=copy.id, arch=arch_of(copy))
        return copy

    def latest(self, region: str, role: str, arch: str = "") -> str:
        """What ``latest`` of ``arch`` (x86_64 when none) names in ``region`` ("" when there is none)."""
        try:
            return self.ssm(region).get_parameter(Name=latest_parameter(role, arch))["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return ""
            raise

    def latest_ids(self, region: str, role: str) -> set[str]:
        """Every AMI a ``latest`` parameter of ``role`` names in ``region``, whatever its architecture
        (``latest/arm64`` too, even of an architecture kiln.yaml no longer bakes)."""
        name = latest_parameter(role)
        ssm = self.ssm(region)
        found = {p["Value"] for p in ssm.get_parameters(Names=[name])["Parameters"]}
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=name, Recursive=True):
            found |= {p["Value"] for p in page["Parameters"]}
        return found

    def unpublish(self, ctx: BakeContext, images: list[Image]) -> None:
        """Put ``latest`` back where it was (where it still names this bake's AMI) and remove the copies.

        Under the publish mutex, so it never interleaves with another publish: a newer bake that
        moved ``latest`` meanwhile keeps it, and the pointer only ever goes back to what it named
        before this bake moved it."""
        moved = [img for img in images if "previous_latest" in img.extra]
        if moved:
            try:
                with self.publishing(ctx.role, ctx.build_id):
                    for img in moved:
                        self._restore_latest(ctx.role, img)
            except Exception as exc:
                log.error(
                    "could not restore latest; fix by hand",
                    role=ctx.role,
                    error=str(exc),
                    previous={img.region: img.extra["previous_latest"] or "(delete it)" for img in moved},
                )
        own = {i.id for i in ctx.images_made()} | ({ctx.image.id} if ctx.image else set())
        for img in images:
            if img.id in own:
                continue  # the snapshot stage's undo removes the originals
            try:
                self.remove_image(img.region, img.id)
                log.info("AMI copy removed", image=img.id, region=img.region)
            except Exception as exc:
                log.error(
                    "could not remove an AMI copy; remove by hand", image=img.id, region=img.region, error=str(exc)
                )

    def _restore_latest(self, role: str, img: Image) -> None:
        name = latest_parameter(role, arch_of(img))
        if self.latest(img.region, role, arch_of(img)) != img.id:
            return
        previous = img.extra["previous_latest"]
        if previous:
            self.ssm(img.region).put_parameter(
                Name=name, Value=previous, Type="String", DataType="aws:ec2:image", Overwrite=True
            )
        else:
            self._delete_parameter(self.ssm(img.region), name)

    def images(self, role: str) -> list[Image]:
        """Every AMI of ``role`` in every configured region: newest version first, regions in order."""
        found: list[Image] = []
        for region in self.settings.regions:
            rows = self.ec2(region).describe_images(
                Owners=["self"], Filters=[{"Name": f"tag:{ROLE}", "Values": [role]}]
            )["Images"]
            latest: dict[str, str] = {}  # arch -> what its latest names here
            for row in rows:
                image = self._image_from(row, region, role)
                if not image.version:
                    continue
                arch = arch_of(image)
                if arch not in latest:
                    latest[arch] = self.latest(region, role, arch)
                image.latest = image.id == latest[arch]
                if image.latest:
                    image.status = "latest"
                found.append(image)
        order = {region: i for i, region in enumerate(self.settings.regions)}
        return sorted(found, key=lambda i: (sort_key(i.version), -order[i.region]), reverse=True)

    def retire(self, role: str, keep: int) -> list[Image]:
        """Per region keep the newest ``keep`` versions (``retention`` overrides); never what a latest
        parameter (any architecture) or a launch template's default version names, nor an AMI still
        pending. Older ones are deprecated, deregistered, their snapshots deleted."""
        from controller import consumers

        keep = self.settings.retention or keep
        images = [i for i in self.images(role) if i.status != "pending"]
        in_use = consumers.in_use(self, role)
        retired = []
        for region in self.settings.regions:
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
            self.ec2(image.region).enable_image_deprecation(ImageId=image.id, DeprecateAt=at)
        except Exception as exc:  # moto: NotImplementedError in-process, an unparseable HTTP 500 as a server
            if not unimplemented(exc):
                raise
            log.info("the endpoint does not implement image deprecation; deregistering directly", image=image.id)
