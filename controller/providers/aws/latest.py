"""The ``latest`` pointer: ``/kiln/<role>/latest`` (``/latest/<arch>``) SSM parameters, and the publish mutex
``/kiln/<role>/publishing`` that serialises moving them."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import ClientError

from kiln.controller.model import Image, Publication, PublishSpec
from kiln.controller.ownership import BuildClaim
from kiln.controller.providers.aws.image import arch_of
from kiln.controller.providers.aws.tags import (
    VERSION,
    claim_value,
    error_code,
    latest_parameter,
    now_utc,
    publishing_parameter,
    read_claim,
    stale_reason,
    tags_of,
)
from kiln.controller.providers.base import ProviderError
from kiln.controller.versions import sort_key

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi

log = structlog.get_logger("kiln.aws")


class Latest:
    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def _move_latest(self, spec: PublishSpec, img: Image, publication: Publication) -> None:
        """Point ``latest`` (of the image's architecture) in its region to it, unless it names a newer version.

        What it named before goes into ``publication`` first: an interrupt right after the move is undone too."""
        current = self.latest(img.region, spec.role, arch_of(img))
        current_version = self._version_of(img.region, current) if current else ""
        if current_version and sort_key(current_version) >= sort_key(spec.version):
            log.warning(
                "latest stayed at the newer version",
                role=spec.role,
                region=img.region,
                arch=arch_of(img),
                latest=current_version,
                version=spec.version,
                image=img.id,
            )
            return
        publication.previous_latest[img.id] = current
        self.api.ssm(img.region).put_parameter(
            Name=latest_parameter(spec.role, arch_of(img)),
            Value=img.id,
            Type="String",
            DataType="aws:ec2:image",
            Overwrite=True,
            Description=f"kiln: latest {spec.role} ({spec.version}, {arch_of(img)})",
        )
        img.latest, img.status = True, "latest"

    def _version_of(self, region: str, image_id: str) -> str:
        """The ``kiln:version`` of the AMI (empty when it is gone or not kiln's: any version is newer)."""
        try:
            rows = self.api.ec2(region).describe_images(ImageIds=[image_id])["Images"]
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
                self.api.ssm().put_parameter(
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
            held = self.api._read_parameter(name)
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
                self.api._delete_if_unchanged(name, held)
                continue
            if time.monotonic() >= give_up:
                raise ProviderError(
                    f"another publish of {role} ({claim.describe()}) held {name} for over "
                    f"{2 * ttl:.0f}s; latest was not moved (the AMIs are kept)"
                )
            self.api.sleep(0.5)
        else:
            raise ProviderError(f"the publish mutex of {role} ({name}) kept changing hands; latest was not moved")
        try:
            yield
        finally:
            try:
                self.api._delete_if_unchanged(name, value)
            except Exception as exc:  # it expires by itself after ttl; say so rather than fail the bake
                log.error(
                    "could not release the publish mutex; it expires by itself",
                    parameter=name,
                    seconds=ttl,
                    error=str(exc),
                )

    def latest(self, region: str, role: str, arch: str = "") -> str:
        """What ``latest`` of ``arch`` (x86_64 when none) names in ``region`` ("" when there is none)."""
        try:
            return self.api.ssm(region).get_parameter(Name=latest_parameter(role, arch))["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return ""
            raise

    def latest_ids(self, region: str, role: str) -> set[str]:
        """Every AMI a ``latest`` parameter of ``role`` names in ``region``, whatever its architecture
        (``latest/arm64`` too, even of an architecture kiln.yaml no longer bakes)."""
        name = latest_parameter(role)
        ssm = self.api.ssm(region)
        found = {p["Value"] for p in ssm.get_parameters(Names=[name])["Parameters"]}
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=name, Recursive=True):
            found |= {p["Value"] for p in page["Parameters"]}
        return found

    def unpublish(self, publication: Publication) -> None:
        """Put ``latest`` back where it was (where it still names this bake's AMI) and remove the copies.

        Under the publish mutex, so it never interleaves with another publish: a newer bake that
        moved ``latest`` meanwhile keeps it, and the pointer only ever goes back to what it named
        before this bake moved it."""
        spec, previous = publication.spec, publication.previous_latest
        moved = [img for img in publication.images if img.id in previous]
        if moved:
            try:
                with self.publishing(spec.role, spec.build_id):
                    for img in moved:
                        self._restore_latest(spec.role, img, previous[img.id])
            except Exception as exc:
                log.error(
                    "could not restore latest; fix by hand",
                    role=spec.role,
                    error=str(exc),
                    previous={img.region: previous[img.id] or "(delete it)" for img in moved},
                )
        for img in publication.copies:  # the snapshot stage's undo removes the originals
            try:
                self.api.amis.remove_image(img.region, img.id)
                log.info("AMI copy removed", image=img.id, region=img.region)
            except Exception as exc:
                log.error(
                    "could not remove an AMI copy; remove by hand", image=img.id, region=img.region, error=str(exc)
                )

    def _restore_latest(self, role: str, img: Image, previous: str) -> None:
        name = latest_parameter(role, arch_of(img))
        if self.latest(img.region, role, arch_of(img)) != img.id:
            return
        if previous:
            self.api.ssm(img.region).put_parameter(
                Name=name, Value=previous, Type="String", DataType="aws:ec2:image", Overwrite=True
            )
        else:
            self.api._delete_parameter(self.api.ssm(img.region), name)
