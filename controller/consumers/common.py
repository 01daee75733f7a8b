"""What every consumer shares: the error kind and image lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.controller.model import Diagnostic, Image
from kiln.controller.providers.base import ProviderError
from kiln.controller.publish_settings import DEFAULT_ARCH

DiagFn = Callable[[tuple[Any, ...], str], Diagnostic]


class ConsumerError(ProviderError):
    """A consumer (launch template, Auto Scaling, git-ops tree) could not be updated (exit status 1)."""


def arch_of(image: Image) -> str:
    return image.arch or DEFAULT_ARCH


def by_region(images: list[Image], arch: str = DEFAULT_ARCH) -> dict[str, str]:
    """region -> image id of one architecture (a version has one AMI per region and architecture)."""
    return {image.region: image.id for image in images if arch_of(image) == arch}
