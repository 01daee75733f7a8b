"""Version reservations: ``/kiln/<role>/versions/<version>`` SSM parameters, each a build's claim (its record)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import ClientError

from kiln.controller.ownership import BuildClaim
from kiln.controller.providers.aws.tags import (
    BUILD_ID,
    ROLE,
    VERSION,
    claim_value,
    error_code,
    read_claim,
    tags_of,
    versions_path,
)
from kiln.controller.providers.base import ProviderError
from kiln.controller.versions import next_version

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi

log = structlog.get_logger("kiln.aws")


class Versions:
    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def _reservations(self, role: str) -> dict[str, str]:
        """version -> the reservation's value (a BuildClaim JSON)."""
        found = {}
        for page in self.api.ssm().get_paginator("get_parameters_by_path").paginate(Path=versions_path(role)):
            found |= {p["Name"].rsplit("/", 1)[-1]: p["Value"] for p in page["Parameters"]}
        return found

    def _image_versions(self, role: str) -> set[str]:
        rows = self.api.ec2().describe_images(Owners=["self"], Filters=[{"Name": f"tag:{ROLE}", "Values": [role]}])
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
                self.api.ssm().put_parameter(
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
        pending = self.api._given_up.pop((role, version), None)
        try:
            if pending is None:
                self.api.ssm().delete_parameter(Name=name)
                return
            value = self.api.ssm().get_parameter(Name=name)["Parameter"]["Value"]
            claim, _ = read_claim(value)
            if claim is not None:
                self.api.ssm().put_parameter(
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
        for region in self.api.settings.regions:
            latest = self.api.latest_pointer.latest_ids(region, role)  # latest/arm64 too
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
                    self.api.amis.remove_image(region, row["ImageId"])
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
            self.api._delete_parameter(self.api.ssm(), f"{versions_path(role)}/{version}")
        return found

    def _images_of_build(self, region: str, build_id: str) -> list[dict[str, Any]]:
        if not build_id:
            return []
        return self.api.ec2(region).describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{BUILD_ID}", "Values": [build_id]}]
        )["Images"]

    def _sweep_reservations(self, apply: bool) -> list[str]:
        """Version reservations whose build is over, with the unpublished AMIs they prove are that build's."""
        ssm = self.api.ssm()
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
