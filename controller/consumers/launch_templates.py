"""``publish.launch_templates``: a new launch template version on the new AMI, in every region the template is in.

The version is made from the template's current default version (``SourceVersion``) with only
``ImageId`` changed, so whatever else the template says (instance type, user data, network)
stays as the owners of the template left it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from botocore.exceptions import ClientError

from kiln.controller.consumers.common import ConsumerError
from kiln.controller.providers.aws.tags import error_code
from kiln.controller.publish_settings import LaunchTemplateSetting

log = structlog.get_logger("kiln.consumers")

NOT_FOUND = (
    "InvalidLaunchTemplateName.NotFoundException",
    "InvalidLaunchTemplateId.NotFound",
    "InvalidLaunchTemplateId.Malformed",
)


@dataclass
class TemplateVersion:
    """One launch template version kiln made (what promote and an undo need to know)."""

    name: str
    template_id: str
    region: str
    version: int
    image_id: str
    previous_default: int
    made_default: bool


def find(provider: Any, name: str) -> dict[str, dict[str, Any]]:
    """region -> the template named ``name`` there (regions without it are left out)."""
    found = {}
    for region in provider.settings.regions:
        try:
            rows = provider.ec2(region).describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                continue
            raise ConsumerError(f"looking up launch template {name} in {region} failed: {exc}") from exc
        if rows:
            found[region] = rows[0]
    return found


def point_at(
    provider: Any, setting: LaunchTemplateSetting, images: dict[str, str], description: str
) -> list[TemplateVersion]:
    """A new version of the template on ``images[region]`` in each region where the template exists."""
    templates = find(provider, setting.name)
    if not templates:
        raise ConsumerError(
            f"launch template {setting.name} exists in none of the regions {', '.join(provider.settings.regions)}"
        )
    made = []
    for region in provider.settings.regions:
        if region not in templates:
            log.info("launch template not in this region: skipped", template=setting.name, region=region)
            continue
        if region not in images:
            raise ConsumerError(
                f"launch template {setting.name} exists in {region}, but there is no "
                f"{setting.arch} image there to point it at"
            )
        made.append(_new_version(provider, region, templates[region], setting, images[region], description))
    return made


def _new_version(
    provider: Any,
    region: str,
    template: dict[str, Any],
    setting: LaunchTemplateSetting,
    image_id: str,
    description: str,
) -> TemplateVersion:
    ec2 = provider.ec2(region)
    template_id, default = template["LaunchTemplateId"], int(template["DefaultVersionNumber"])
    try:
        row = ec2.create_launch_template_version(
            LaunchTemplateId=template_id,
            SourceVersion=str(default),
            VersionDescription=description[:255],
            LaunchTemplateData={"ImageId": image_id},
        )["LaunchTemplateVersion"]
        number = int(row["VersionNumber"])
        if setting.set_default:
            ec2.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion=str(number))
    except ClientError as exc:
        raise ConsumerError(
            f"updating launch template {setting.name} ({template_id}) in {region} failed: {exc}"
        ) from exc
    log.info(
        "launch template version made",
        template=setting.name,
        region=region,
        template_id=template_id,
        version=number,
        image=image_id,
        default=setting.set_default,
    )
    return TemplateVersion(
        name=setting.name,
        template_id=template_id,
        region=region,
        version=number,
        image_id=image_id,
        previous_default=default,
        made_default=setting.set_default,
    )


def withdraw(provider: Any, made: list[TemplateVersion]) -> None:
    """Undo :func:`point_at`: the old default back, the new version deleted; what fails is said, not raised."""
    for version in made:
        ec2 = provider.ec2(version.region)
        try:
            if version.made_default:
                ec2.modify_launch_template(
                    LaunchTemplateId=version.template_id, DefaultVersion=str(version.previous_default)
                )
            ec2.delete_launch_template_versions(LaunchTemplateId=version.template_id, Versions=[str(version.version)])
            log.info(
                "launch template version withdrawn",
                template=version.name,
                region=version.region,
                version=version.version,
            )
        except Exception as exc:  # an undo says what it could not do, and goes on with the rest
            log.error(
                "could not withdraw a launch template version; fix by hand",
                template=version.name,
                region=version.region,
                version=version.version,
                default=version.previous_default,
                error=str(exc),
            )


def default_images(provider: Any, region: str) -> dict[str, str]:
    """image id -> template name, for the default version of every launch template in ``region``."""
    named: dict[str, str] = {}
    pages = provider.ec2(region).get_paginator("describe_launch_template_versions").paginate(Versions=["$Default"])
    for page in pages:
        for row in page["LaunchTemplateVersions"]:
            image_id = (row.get("LaunchTemplateData") or {}).get("ImageId", "")
            if image_id:
                named[image_id] = row.get("LaunchTemplateName", row.get("LaunchTemplateId", ""))
    return named
