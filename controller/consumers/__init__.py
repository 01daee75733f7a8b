"""Consumers of a new image: launch templates, Auto Scaling instance refreshes, a git-ops variables file.

All optional, set in ``providers.aws.publish`` of kiln.yaml or ``publish:`` in a role's role.yml
(the role's keys override kiln.yaml's, key by key). docs/consumers.md describes each.

Entry points, in the order a bake uses them:

- :func:`parse_publish` / :func:`effective` — the settings (InvalidInput, exit 2, on bad ones);
- :func:`check_before_launch` — the refusals that need the cloud or the git tree (InvalidInput);
- :func:`publish` — after ``latest`` moved: templates, then the refresh, then the git-ops file;
  :func:`withdraw` undoes it when the bake fails afterwards;
- :func:`in_use` — image ids retention must spare;
- :func:`promote` — ``latest``, templates, refresh and git-ops back (or on) to a retained version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from kiln.controller.consumers import gitops, instance_refresh, launch_templates
from kiln.controller.consumers.common import DEFAULT_ARCH, ConsumerError, DiagFn, arch_of, by_region
from kiln.controller.consumers.gitops import GitopsWrite
from kiln.controller.consumers.instance_refresh import Refresh
from kiln.controller.consumers.launch_templates import TemplateVersion
from kiln.controller.declared import check_document
from kiln.controller.model import Diagnostic, Image, InvalidInput
from kiln.controller.publish_settings import (
    PUBLISH_SCHEMA,
    PUBLISH_SECTION,
    GitopsSetting,
    InstanceRefreshSetting,
    LaunchTemplateSetting,
    typed,
)
from kiln.controller.versions import sort_key

log = structlog.get_logger("kiln.consumers")

__all__ = [
    "ConsumerError",
    "ConsumerReport",
    "NotRetained",
    "PublishSettings",
    "check_before_launch",
    "effective",
    "in_use",
    "parse_publish",
    "promote",
    "publish",
    "withdraw",
]

KEYS = tuple(PUBLISH_SCHEMA["args"])
KILN_YAML_PATH = ("providers", "aws", "publish")
ROLE_YML_PATH = ("publish",)


class NotRetained(ValueError):
    """promote was asked for a version that does not exist (any more): invalid input, exit status 2."""


@dataclass
class PublishSettings:
    launch_templates: list[LaunchTemplateSetting] = field(default_factory=list)
    instance_refresh: InstanceRefreshSetting | None = None
    gitops: GitopsSetting | None = None
    #: key -> (diag, key path) of the file that set it: later refusals point there
    origin: dict[str, tuple[DiagFn, tuple[Any, ...]]] = field(default_factory=dict, repr=False)

    @property
    def any(self) -> bool:
        return bool(self.launch_templates or self.instance_refresh or self.gitops)

    def diagnostic(self, key: str, message: str, *subkeys: Any) -> Diagnostic:
        diag, path = self.origin.get(key, (_plain_diag, (*KILN_YAML_PATH, key)))
        return diag((*path, *subkeys), message)


def _plain_diag(keys: tuple[Any, ...], message: str) -> Diagnostic:
    return Diagnostic("kiln.yaml", 1, 1, message)


def parse_publish(raw: Any, diag: DiagFn, path: tuple[Any, ...] = KILN_YAML_PATH) -> PublishSettings:
    """Check one ``publish`` block (``path``: where it is, for ``diag``); InvalidInput lists every problem.

    The block is declared once (controller/publish_settings.py) and judged by the schema engine. A key
    present with a null value is kept as "off", so a role can turn off what kiln.yaml sets.
    """
    if raw is None:
        return PublishSettings()
    values, problems = check_document(PUBLISH_SECTION, raw, lambda where, message, _at_key: diag(where, message), path)
    if problems:
        raise InvalidInput(problems)
    settings = PublishSettings(**typed(values))
    settings.origin = {key: (diag, (*path, key)) for key in KEYS if key in raw}
    return settings


def effective(kiln_yaml: PublishSettings, role_yml: PublishSettings | None) -> PublishSettings:
    """kiln.yaml's settings with each key the role's ``publish:`` sets replaced by the role's."""
    if role_yml is None:
        return kiln_yaml
    merged = PublishSettings(origin=dict(kiln_yaml.origin))
    for key in KEYS:
        source = role_yml if key in role_yml.origin else kiln_yaml
        setattr(merged, key, getattr(source, key))
        if key in role_yml.origin:
            merged.origin[key] = role_yml.origin[key]
    return merged


def check_before_launch(provider: Any, settings: PublishSettings, base_dir: Path) -> None:
    """What would make publishing fail, found before anything is launched: InvalidInput (exit 2) naming it.

    Every launch template must exist in some region; the instance refresh's group must launch from one
    of them; the git-ops file's directory must exist (and, to commit, be a clean git tree).
    """
    problems = []
    for i, setting in enumerate(settings.launch_templates):
        if not launch_templates.find(provider, setting.name):
            problems.append(
                settings.diagnostic(
                    "launch_templates",
                    f"launch template {setting.name} exists in none of the regions "
                    f"{', '.join(provider.settings.regions)}",
                    i,
                    "name",
                )
            )
    if settings.instance_refresh:
        updated = [s.name for s in settings.launch_templates]
        for message in instance_refresh.problems_before_launch(provider, settings.instance_refresh, updated):
            problems.append(settings.diagnostic("instance_refresh", message, "asg"))
    if settings.gitops:
        for message in gitops.problems_before_write(settings.gitops, base_dir):
            problems.append(settings.diagnostic("gitops", message, "path"))
    if problems:
        raise InvalidInput(problems)


@dataclass
class ConsumerReport:
    """What the consumers did: every field is also what :func:`withdraw` needs to undo it."""

    role: str
    version: str
    templates: list[TemplateVersion] = field(default_factory=list)
    refreshes: list[Refresh] = field(default_factory=list)
    gitops: GitopsWrite | None = None
    latest: dict[str, str] = field(default_factory=dict)  # promote: parameter@region -> image id

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "version": self.version,
            "latest": self.latest,
            "launch_templates": [
                {
                    "name": t.name,
                    "template_id": t.template_id,
                    "region": t.region,
                    "version": t.version,
                    "image_id": t.image_id,
                    "default": t.made_default,
                }
                for t in self.templates
            ],
            "instance_refreshes": [
                {"asg": r.asg, "region": r.region, "refresh_id": r.refresh_id, "status": r.status}
                for r in self.refreshes
            ],
            "gitops": {"path": str(self.gitops.path), "commit": self.gitops.commit} if self.gitops else None,
        }


def publish(
    provider: Any,
    role: str,
    version: str,
    images: list[Image],
    settings: PublishSettings,
    base_dir: Path,
    report: ConsumerReport | None = None,
    description: str = "",
    message: str = "",
) -> ConsumerReport:
    """Point the configured consumers at ``images`` (one version of ``role``; every region, every arch).

    ``report`` (pass one to see partial progress) is filled as each change is made, so an undo
    finds what a failed or interrupted call did.
    """
    report = report or ConsumerReport(role=role, version=version)
    description = description or f"kiln {role} {version}"
    for setting in settings.launch_templates:
        report.templates += launch_templates.point_at(provider, setting, by_region(images, setting.arch), description)
    if settings.instance_refresh:
        report.refreshes += instance_refresh.start(provider, settings.instance_refresh, report.templates)
    if settings.gitops:
        report.gitops = gitops.write(settings.gitops, base_dir, role, version, images, message)
    return report


def withdraw(provider: Any, report: ConsumerReport, settings: PublishSettings) -> None:
    """Undo :func:`publish` after a later failure: cancel refreshes, restore templates and the git-ops file."""
    for refresh in report.refreshes:
        try:
            provider.client("autoscaling", refresh.region).cancel_instance_refresh(AutoScalingGroupName=refresh.asg)
            log.warning(
                "instance refresh cancelled; instances it already replaced keep the new image",
                asg=refresh.asg,
                region=refresh.region,
                refresh=refresh.refresh_id,
            )
        except Exception as exc:
            log.error(
                "could not cancel the instance refresh; cancel by hand",
                asg=refresh.asg,
                region=refresh.region,
                refresh=refresh.refresh_id,
                error=str(exc),
            )
    launch_templates.withdraw(provider, report.templates)
    if report.gitops and settings.gitops:
        gitops.withdraw(settings.gitops, report.gitops, report.role, report.version)


def in_use(provider: Any, role: str) -> set[str]:
    """Image ids retention must spare: what ``latest`` (every arch) names and every launch template's
    default version launches, in every region."""
    used: set[str] = set()
    name = f"/kiln/{role}/latest"
    for region in provider.settings.regions:
        ssm = provider.ssm(region)
        used |= {p["Value"] for p in ssm.get_parameters(Names=[name])["Parameters"]}
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=name, Recursive=True):
            used |= {p["Value"] for p in page["Parameters"]}
        used |= set(launch_templates.default_images(provider, region))
    return used


def promote(provider: Any, role: str, version: str, settings: PublishSettings, base_dir: Path) -> ConsumerReport:
    """Point ``latest``, the launch templates, the refresh and the git-ops file at ``version``, a retained one.

    Moving to an older version is a deliberate rollback: unlike a bake, ``latest`` may go backwards.
    """
    images = [i for i in provider.images(role) if i.status != "pending"]
    chosen = [i for i in images if i.version == version]
    retained = sorted({i.version for i in images}, reverse=True)
    if not chosen:
        raise NotRetained(
            f"{role} has no version {version} (never baked, or retired); retained: {', '.join(retained) or 'none'}"
        )
    missing = [r for r in provider.settings.regions if r not in {i.region for i in chosen}]
    if missing:
        raise NotRetained(
            f"{role} {version} is gone from {', '.join(missing)} (retired there); versions in every "
            f"region: {', '.join(_complete(images, provider.settings.regions)) or 'none'}"
        )
    report = ConsumerReport(role=role, version=version)
    # the bakes' publish mutex: a bake moving latest at the same moment never interleaves with this
    with provider.publishing(role, promote_owner(role, version)):
        current = [i for i in provider.images(role) if i.status != "pending"]  # read under the mutex
        _move_latest(provider, role, version, chosen, current, report)
    return publish(
        provider,
        role,
        version,
        chosen,
        settings,
        base_dir,
        report=report,
        description=f"kiln {role} {version} (promoted)",
        message=f"kiln: promote {role} to {version}",
    )


def promote_owner(role: str, version: str) -> str:
    """Who holds the publish mutex during a promote (said in a waiting bake's log)."""
    import datetime as dt
    import secrets

    return f"promote-{role}-{version}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _complete(images: list[Image], regions: list[str]) -> list[str]:
    versions = sorted({i.version for i in images}, reverse=True)
    return [v for v in versions if {i.region for i in images if i.version == v} >= set(regions)]


def _move_latest(
    provider: Any, role: str, version: str, chosen: list[Image], images: list[Image], report: ConsumerReport
) -> None:
    for image in chosen:
        arch = arch_of(image)
        name = f"/kiln/{role}/latest" + ("" if arch == DEFAULT_ARCH else f"/{arch}")
        current = next((i for i in images if i.region == image.region and i.latest and arch_of(i) == arch), None)
        if current and current.id == image.id:
            log.info("latest already names this version", role=role, version=version, region=image.region)
        elif current and sort_key(current.version) > sort_key(version):
            log.warning(
                "rollback: latest moves back to an older version",
                role=role,
                parameter=name,
                region=image.region,
                version=version,
                previous=current.version,
            )
        provider.ssm(image.region).put_parameter(
            Name=name,
            Value=image.id,
            Type="String",
            DataType="aws:ec2:image",
            Overwrite=True,
            Description=f"kiln: latest {role} ({version}, promoted)",
        )
        report.latest[f"{name}@{image.region}"] = image.id
        log.info("latest promoted", role=role, version=version, region=image.region, image=image.id)


def settings_for(config: Any, playbooks_dir: Path, role: str) -> PublishSettings:
    """kiln.yaml's ``providers.aws.publish`` overridden by ``publish:`` in the role's role.yml."""
    from kiln.controller.stepfiles.loader import load_yaml

    raw = (config.provider("aws") or {}).get("publish")
    settings = parse_publish(raw, config.diagnostic, KILN_YAML_PATH)
    role_file = Path(playbooks_dir) / "roles" / role / "role.yml"
    if not role_file.is_file():
        return settings
    doc = load_yaml(role_file)
    if not isinstance(doc.data, dict) or "publish" not in doc.data:
        return settings
    return effective(settings, parse_publish(doc.data["publish"], doc.diag, ROLE_YML_PATH))
