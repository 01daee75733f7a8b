"""``publish.instance_refresh``: roll an Auto Scaling group onto the launch template version kiln just made.

kiln starts the refresh and reports its id; it waits only when asked (``wait: true``), and
then no longer than ``wait_timeout``. A group launched from a template kiln does not update
would refresh onto the old image: it is refused before anything is launched.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import structlog
from botocore.exceptions import ClientError

from kiln.controller.consumers.common import ConsumerError
from kiln.controller.consumers.launch_templates import TemplateVersion
from kiln.controller.publish_settings import InstanceRefreshSetting

log = structlog.get_logger("kiln.consumers")

DONE = ("Successful",)
FAILED = ("Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed")


@dataclass
class Refresh:
    asg: str
    region: str
    refresh_id: str
    status: str = "Pending"
    percentage_complete: int = 0


def groups(provider: Any, name: str) -> dict[str, dict[str, Any]]:
    """region -> the Auto Scaling group ``name`` there (regions without it are left out)."""
    found = {}
    for region in provider.settings.regions:
        try:
            rows = provider.client("autoscaling", region).describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
                "AutoScalingGroups"
            ]
        except ClientError as exc:
            raise ConsumerError(f"looking up Auto Scaling group {name} in {region} failed: {exc}") from exc
        if rows:
            found[region] = rows[0]
    return found


def template_of(group: dict[str, Any]) -> dict[str, Any]:
    """The group's launch template specification (plain, or inside a mixed instances policy); {} if none."""
    if group.get("LaunchTemplate"):
        return group["LaunchTemplate"]
    mixed = group.get("MixedInstancesPolicy") or {}
    return (mixed.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification") or {}


def template_name(provider: Any, region: str, spec: dict[str, Any]) -> str:
    if spec.get("LaunchTemplateName"):
        return spec["LaunchTemplateName"]
    rows = provider.ec2(region).describe_launch_templates(LaunchTemplateIds=[spec["LaunchTemplateId"]])
    return rows["LaunchTemplates"][0]["LaunchTemplateName"]


def problems_before_launch(provider: Any, setting: InstanceRefreshSetting, updated: list[str]) -> list[str]:
    """Why the refresh could not roll the group onto kiln's image; [] when it can. Nothing is changed."""
    found = groups(provider, setting.asg)
    if not found:
        return [
            f"Auto Scaling group {setting.asg} exists in none of the regions {', '.join(provider.settings.regions)}"
        ]
    problems = []
    for region, group in found.items():
        spec = template_of(group)
        if not spec:
            what = (
                f"launch configuration {group['LaunchConfigurationName']}"
                if group.get("LaunchConfigurationName")
                else "no launch template"
            )
            problems.append(
                f"asg {setting.asg} in {region} uses {what}; kiln updates launch templates only: "
                "move the group to a launch template and list it in publish.launch_templates"
            )
            continue
        name = template_name(provider, region, spec)
        if name not in updated:
            problems.append(
                f"asg {setting.asg} uses launch template {name}, which kiln does not update; "
                "add it to publish.launch_templates"
            )
    return problems


def start(provider: Any, setting: InstanceRefreshSetting, made: list[TemplateVersion]) -> list[Refresh]:
    """Start the refresh in each region where the group is, onto the version kiln made there."""
    refreshes = []
    for region, group in groups(provider, setting.asg).items():
        spec = template_of(group)
        version = next(
            (v for v in made if v.region == region and v.template_id == spec.get("LaunchTemplateId")), None
        ) or next((v for v in made if v.region == region and v.name == spec.get("LaunchTemplateName")), None)
        if version is None:
            raise ConsumerError(
                f"asg {setting.asg} in {region} uses launch template "
                f"{spec.get('LaunchTemplateName') or spec.get('LaunchTemplateId')}, which kiln "
                "did not update there"
            )
        refreshes.append(_start_one(provider, region, group, setting, version))
    if setting.wait:
        wait(provider, setting, refreshes)
    return refreshes


def desired_configuration(group: dict[str, Any], version: TemplateVersion) -> dict[str, Any] | None:
    """None when the group already follows the new version ($Latest, or $Default made default); else the
    version pinned, which the group keeps once the refresh succeeds."""
    spec = template_of(group)
    follows = spec.get("Version") in ("$Latest", None) or (spec.get("Version") == "$Default" and version.made_default)
    if follows:
        return None
    pinned = {"LaunchTemplateId": version.template_id, "Version": str(version.version)}
    if group.get("LaunchTemplate"):
        return {"LaunchTemplate": pinned}
    mixed = copy.deepcopy(group["MixedInstancesPolicy"])
    mixed["LaunchTemplate"]["LaunchTemplateSpecification"] = pinned
    return {"MixedInstancesPolicy": mixed}


def _start_one(
    provider: Any, region: str, group: dict[str, Any], setting: InstanceRefreshSetting, version: TemplateVersion
) -> Refresh:
    kwargs: dict[str, Any] = {
        "AutoScalingGroupName": setting.asg,
        "Preferences": {"MinHealthyPercentage": setting.min_healthy_percentage},
    }
    desired = desired_configuration(group, version)
    if desired:
        kwargs["DesiredConfiguration"] = desired
    try:
        answer = provider.client("autoscaling", region).start_instance_refresh(**kwargs)
    except ClientError as exc:
        raise ConsumerError(f"starting an instance refresh of {setting.asg} in {region} failed: {exc}") from exc
    refresh = Refresh(asg=setting.asg, region=region, refresh_id=answer["InstanceRefreshId"])
    log.info(
        "instance refresh started",
        asg=setting.asg,
        region=region,
        refresh=refresh.refresh_id,
        template=version.name,
        version=version.version,
        min_healthy=setting.min_healthy_percentage,
        pinned=bool(desired),
        waiting=setting.wait,
    )
    return refresh


def wait(provider: Any, setting: InstanceRefreshSetting, refreshes: list[Refresh], clock: Any = time.monotonic) -> None:
    """Poll until every refresh is done or ``wait_timeout`` passes; a failed one raises, one still running
    when the time is up is said in the log (it goes on without kiln)."""
    deadline = clock() + setting.wait_timeout
    running = list(refreshes)
    while running:
        for refresh in list(running):
            _describe(provider, refresh)
            if refresh.status in FAILED:
                raise ConsumerError(
                    f"instance refresh {refresh.refresh_id} of {refresh.asg} in {refresh.region} ended {refresh.status}"
                )
            if refresh.status in DONE:
                log.info("instance refresh done", asg=refresh.asg, region=refresh.region, refresh=refresh.refresh_id)
                running.remove(refresh)
        if running and clock() >= deadline:
            for refresh in running:
                log.warning(
                    "instance refresh still running after the wait timeout; kiln stops waiting",
                    asg=refresh.asg,
                    region=refresh.region,
                    refresh=refresh.refresh_id,
                    status=refresh.status,
                    percentage_complete=refresh.percentage_complete,
                    wait_timeout=setting.wait_timeout,
                )
            return
        if running:
            time.sleep(max(0.0, min(setting.poll_interval, deadline - clock())))


def _describe(provider: Any, refresh: Refresh) -> None:
    rows = provider.client("autoscaling", refresh.region).describe_instance_refreshes(
        AutoScalingGroupName=refresh.asg, InstanceRefreshIds=[refresh.refresh_id]
    )["InstanceRefreshes"]
    if rows:
        refresh.status = rows[0].get("Status", refresh.status)
        refresh.percentage_complete = int(rows[0].get("PercentageComplete") or 0)
