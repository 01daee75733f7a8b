"""What ``publish:`` may say, declared once for the schema engine.

The same block is written in two places: ``providers.aws.publish`` of kiln.yaml and ``publish:``
of a role's role.yml (which overrides kiln.yaml key by key). Both are checked against
:data:`PUBLISH_SCHEMA` (validation with file:line:column, the kiln.yaml JSON Schema and the
reference docs come from it), and :func:`typed` turns accepted values into the settings the
consumers (controller/consumers/) act on. Light on purpose: controller/providers/aws_settings.py
embeds the schema, and config loading must not pull in the cloud SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_ARCH = "x86_64"
DEFAULT_GITOPS_KEY = "kiln_images"
TERRAFORM_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"


@dataclass(frozen=True)
class LaunchTemplateSetting:
    name: str
    set_default: bool = False
    arch: str = DEFAULT_ARCH  # which of the version's AMIs the template launches


@dataclass(frozen=True)
class InstanceRefreshSetting:
    asg: str
    min_healthy_percentage: int = 90
    wait: bool = False
    wait_timeout: float = 3600.0  # seconds
    poll_interval: float = 30.0


@dataclass(frozen=True)
class GitopsSetting:
    path: str
    commit: bool = False
    key: str = DEFAULT_GITOPS_KEY


def _setting(kind: str, description: str, expect: str, **spec: Any) -> dict[str, Any]:
    """A setting as YAML writes it: never templated, and a wrong kind is refused, not coerced."""
    return {"type": kind, "templated": False, "strict": True, "expect": expect, **spec, "description": description}


def _name(description: str, expect: str, **spec: Any) -> dict[str, Any]:
    """A required, non-blank name."""
    return _setting("str", description, expect, **{"required": True, "pattern": r"\S", **spec})


def _flag(description: str) -> dict[str, Any]:
    return _setting("bool", description, "true or false", default=False)


LAUNCH_TEMPLATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "args": {
        "name": _name("The launch template's name (in every region the image is copied to).", "a template name"),
        "set_default": _flag("Make the new version the template's default."),
        "arch": _setting(
            "str", "Which of the version's images the template launches.", "an architecture", default=DEFAULT_ARCH
        ),
    },
}

INSTANCE_REFRESH_SCHEMA: dict[str, Any] = {
    "args": {
        "asg": _name("The Auto Scaling group to refresh (it must launch from one of the templates).", "a group name"),
        "min_healthy_percentage": _setting(
            "int", "Healthy capacity kept during the refresh.", "between 0 and 100", minimum=0, maximum=100, default=90
        ),
        "wait": _flag("Wait for the refresh to end (and fail the bake if it fails)."),
        "wait_timeout": _setting(
            "number", "Seconds to wait when `wait` is true.", "a number >= 1", minimum=1, default=3600.0
        ),
        "poll_interval": _setting(
            "number", "Seconds between polls of the refresh.", "a number >= 0", minimum=0, default=30.0
        ),
    },
}

GITOPS_SCHEMA: dict[str, Any] = {
    "args": {
        "path": _name(
            "The JSON file (Terraform variables) to write the image ids into; relative to the playbooks' parent.",
            "a JSON file (e.g. images.auto.tfvars.json)",
            pattern=r"\.json$",
        ),
        "commit": _flag("Commit the file in its git tree (which must be clean)."),
        "key": _setting(
            "str",
            "The variable the file holds.",
            "a Terraform variable name",
            pattern=TERRAFORM_NAME,
            default=DEFAULT_GITOPS_KEY,
        ),
    },
}


def _launch_template_rules(result: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    seen: set[str] = set()
    problems = []
    for index, item in enumerate(result.get("launch_templates") or []):
        name = item if isinstance(item, str) else item.get("name")
        if name in seen:
            problems.append((("launch_templates", index, "name"), f"launch template '{name}' is listed twice"))
        seen.add(name)
    return problems


PUBLISH_SCHEMA: dict[str, Any] = {
    "args": {
        "launch_templates": _setting(
            "list",
            "Launch templates that get a new version launching the new image (a name, or a mapping).",
            "a list like [{name: web-lt, set_default: true}]",
            nullable=True,
            items={
                "type": "any_of",
                "expect": "a template name or a mapping like {name: web-lt, set_default: true}",
                "options": [
                    {"type": "str", "templated": False, "strict": True, "pattern": r"\S"},
                    LAUNCH_TEMPLATE_SCHEMA,
                ],
            },
        ),
        "instance_refresh": _setting(
            "object",
            "Start an Auto Scaling instance refresh once the templates moved.",
            "a mapping like {asg: web-asg, min_healthy_percentage: 90}",
            nullable=True,
            **INSTANCE_REFRESH_SCHEMA,
        ),
        "gitops": _setting(
            "object",
            "Write (and commit) the image ids into a Terraform variables file.",
            "a mapping like {path: ../infra/images.auto.tfvars.json, commit: true}",
            nullable=True,
            **GITOPS_SCHEMA,
        ),
    },
    "rules": [_launch_template_rules],
}

#: ``publish`` as a setting of a mapping (providers.aws's, role.yml's): null is "nothing to publish"
PUBLISH_SECTION: dict[str, Any] = _setting(
    "object",
    "The new image's consumers: launch templates, an instance refresh, a git-ops file (docs/aws.md).",
    "a mapping like {launch_templates: [...], instance_refresh: {...}, gitops: {...}}",
    nullable=True,
    **PUBLISH_SCHEMA,
)


def typed(values: dict[str, Any]) -> dict[str, Any]:
    """The typed settings of accepted ``publish`` values, by key (a key given as null stays None: "off")."""
    templates = [
        LaunchTemplateSetting(name=t) if isinstance(t, str) else LaunchTemplateSetting(**t)
        for t in values.get("launch_templates") or []
    ]
    refresh, gitops = values.get("instance_refresh"), values.get("gitops")
    return {
        "launch_templates": templates,
        "instance_refresh": InstanceRefreshSetting(
            **dict(refresh, wait_timeout=float(refresh["wait_timeout"]), poll_interval=float(refresh["poll_interval"]))
        )
        if refresh
        else None,
        "gitops": GitopsSetting(**gitops) if gitops else None,
    }
