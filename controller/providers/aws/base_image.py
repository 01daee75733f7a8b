"""The role's base AMI: pinned, from an SSM parameter (AWS's public latest-AMI ones) or a filter; ``{arch}`` templated."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from typing import TYPE_CHECKING, Any

import structlog
from botocore.exceptions import ClientError

from kiln.controller.model import BaseImage
from kiln.controller.providers.aws.tags import (
    DEFAULT_ARCH,
    error_code,
    now_utc,
)
from kiln.controller.providers.base import ProviderError, UnknownBase

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi

log = structlog.get_logger("kiln.aws")


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


class BaseImages:
    def __init__(self, api: AwsApi) -> None:
        self.api = api
        self._root_devices: dict[str, tuple[str, int | None]] = {}  # AMI -> (root device, its size)

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
        region = self.api.build_region
        if "ami" in spec:
            image = self._describe_base(str(spec["ami"]), f"pinned AMI {spec['ami']}")
        elif "ssm_parameter" in spec:
            name = str(spec["ssm_parameter"])
            try:
                value = self.api.ssm().get_parameter(Name=name)["Parameter"]["Value"]
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
            f"base.aws: SSM parameter {name} does not exist in {self.api.build_region}{listed}",
            written=str(text).removeprefix("resolve:ssm:"),
        )

    def _parameter_names(self, path: str, pages: int = 50) -> list[str]:
        """The parameter names directly under ``path`` (at most ``pages`` pages of them)."""
        names: list[str] = []
        paginator = self.api.ssm().get_paginator("get_parameters_by_path")
        for i, page in enumerate(paginator.paginate(Path=path, Recursive=False)):
            names += [p["Name"] for p in page["Parameters"]]
            if i + 1 >= pages:
                break
        return names

    def _describe_base(self, image_id: str, what: str) -> dict[str, Any]:
        try:
            images = self.api.ec2().describe_images(ImageIds=[image_id])["Images"]
        except ClientError as exc:
            if error_code(exc).startswith("InvalidAMIID"):
                raise ProviderError(
                    f"no base image: {what} not found in {self.api.build_region} ({error_code(exc)})"
                ) from exc
            raise ProviderError(f"describing base image {what} failed: {exc}") from exc
        if not images:
            raise ProviderError(f"no base image: {what} not found in {self.api.build_region}")
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
            self.api.ec2()
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
            raise ProviderError(f"no base image matches the filter in {self.api.build_region} ({described})")
        if len(found) > 1 and not spec.get("most_recent", True):
            names = ", ".join(sorted(i.get("Name", i["ImageId"]) for i in found)[:5])
            raise ProviderError(
                f"{len(found)} images match the base filter ({described}): {names}...; "
                "narrow the filter, or set most_recent: true"
            )
        return max(found, key=lambda i: i.get("CreationDate", ""))

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

    def root_device(self, image_id: str) -> tuple[str, int | None]:
        if image_id not in self._root_devices:
            self._remember_root(self._describe_base(image_id, image_id))
        return self._root_devices[image_id]
