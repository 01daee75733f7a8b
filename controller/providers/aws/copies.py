"""The AMI's copies in the other regions (in parallel), shared as providers.aws.share says."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import structlog

from kiln.controller.model import Image, Publication, PublishSpec
from kiln.controller.providers.aws.image import AmiRecord, arch_of, arch_suffix
from kiln.controller.providers.aws.tags import (
    DEFAULT_ARCH,
    iso,
    now_utc,
    snapshot_ids,
    tag_list,
    tag_spec,
)

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi

log = structlog.get_logger("kiln.aws")

#: How long a stopped publish waits for CopyImage requests already sent: a copy made by one that
#: returns later would be unknown to the undo, and left behind.
COPY_REQUEST_BOUND = 60.0


class Copies:
    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def publish(self, spec: PublishSpec, on_started: Callable[[Publication], None]) -> Publication:
        """Copy every architecture's AMI to the other regions in parallel, share, then move
        ``/kiln/<role>/latest`` (``/latest/<arch>``) in each region.

        The caller holds the publication from the start and every copy is added to it as soon as it
        exists, so its undo (unpublish) finds copies of a publish that failed or was interrupted half way.
        """
        s = self.api.settings
        originals = list(spec.images)
        publication = Publication(spec, images=list(originals))
        on_started(publication)
        published = publication.images
        targets = [r for r in s.regions if r != originals[0].region]
        for region in targets:  # clients are made here: creating them is not thread-safe
            self.api.ec2(region)
            self.api.ssm(region)
        if targets:
            stop = threading.Event()
            copies = [(original, region) for original in originals for region in targets]
            pool = ThreadPoolExecutor(max_workers=len(copies), thread_name_prefix="kiln-copy")
            futures = [pool.submit(self._copy_to, spec, one, region, stop, published) for one, region in copies]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                self._await_requests_in_flight(futures, copies)
                raise
            pool.shutdown(wait=True)
        order = {region: i for i, region in enumerate(s.regions)}
        published[:] = sorted(
            published, key=lambda i: (order.get(i.region, 99), arch_of(i) != DEFAULT_ARCH, arch_of(i))
        )
        images = list(published)
        permissions = s.share.launch_permissions()
        if permissions:
            for img in images:
                self.api.ec2(img.region).modify_image_attribute(ImageId=img.id, LaunchPermission={"Add": permissions})
            log.info(
                "shared", accounts=s.share.accounts, orgs=s.share.org_arns, ous=s.share.ou_arns, public=s.share.public
            )
        # every copy is available and tagged: the AMIs hold the version now, so the reservation goes
        # before latest moves (a crash from here on leaves a whole, unpublished-but-complete version,
        # never a reservation that would let sweep remove an AMI a latest pointer may already name)
        self.api.versions.release_version(spec.role, spec.version)
        with self.api.latest_pointer.publishing(spec.role, spec.build_id):
            for img in images:
                self.api.latest_pointer._move_latest(spec, img, publication)
        return publication

    def _await_requests_in_flight(self, futures: list, copies: list[tuple[Image, str]]) -> None:
        """Once stopped, every copy still being requested is waited for (bounded), so the undo knows
        each copy that exists; one that does not answer in time is named, with how to find it."""
        wait(futures, timeout=COPY_REQUEST_BOUND)
        for future, (original, region) in zip(futures, copies, strict=True):
            if future.done():
                continue
            log.error(
                "a copy request did not answer in time; if it made a copy, remove it by hand",
                region=region,
                source=original.id,
                name=original.name,
                seconds=COPY_REQUEST_BOUND,
            )

    def _copy_to(
        self, spec: PublishSpec, image: Image, region: str, stop: threading.Event, published: list[Image]
    ) -> Image:
        s = self.api.settings
        ec2 = self.api.ec2(region)
        tags = {**image.tags, "kiln:source-image": image.id, "kiln:source-region": image.region}
        kwargs: dict[str, Any] = {}
        if s.encrypted:
            kwargs["Encrypted"] = True
            if s.kms_keys.get(region):
                kwargs["KmsKeyId"] = s.kms_keys[region]
        resp = ec2.copy_image(
            SourceImageId=image.id,
            SourceRegion=image.region,
            Name=image.name,
            Description=f"kiln {spec.role} {spec.version} (copy of {image.id} in {image.region})",
            ClientToken=f"kiln-{spec.build_id}-{region}{arch_suffix(image)}"[:64],
            TagSpecifications=[tag_spec("image", tags)],
            **kwargs,
        )
        copy = AmiRecord(
            id=resp["ImageId"],
            role=spec.role,
            version=spec.version,
            provider=self.api.name,
            region=region,
            name=image.name,
            created=iso(now_utc()),
            base=image.base,
            inputs_hash=image.inputs_hash,
            status="pending",
            tags=tags,
            source=image.id,
            arch=arch_of(image),
            build_id=spec.build_id,
        )
        published.append(copy)
        log.info("copy started", region=region, image=copy.id, source=image.id)  # minutes on AWS: say it began
        self.api._safely(self.api.data_plane.image_copied, image.region, image.id, region, copy.id)
        described = self.api.amis.wait_image(region, copy.id, stop, left="the copy is deregistered on the way out")
        # copies do not reliably carry tags (CopyImageTags, and moto, differ): tag explicitly
        ec2.create_tags(Resources=[copy.id], Tags=tag_list(tags))
        self.api.amis._finish_image(region, copy.id, described, tags)
        copy.status = "available"
        copy.snapshots = snapshot_ids(described)
        log.info("copied", region=region, image=copy.id, arch=arch_of(copy))
        return copy
