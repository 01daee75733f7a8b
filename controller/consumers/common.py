"""What every consumer shares: typed reads of the ``publish`` block, the error kinds, image lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.agent.schema import did_you_mean
from kiln.controller.model import Diagnostic, Image
from kiln.controller.providers.base import ProviderError

DiagFn = Callable[[tuple[Any, ...], str], Diagnostic]
DEFAULT_ARCH = "x86_64"


class ConsumerError(ProviderError):
    """A consumer (launch template, Auto Scaling, git-ops tree) could not be updated (exit status 1)."""


class Reader:
    """Typed reads of one mapping at ``path``, collecting every problem instead of stopping at the first."""

    def __init__(
        self,
        data: Any,
        path: tuple[Any, ...],
        diag: DiagFn,
        problems: list[Diagnostic],
        known: tuple[str, ...],
        shape: str,
    ) -> None:
        self.path, self.diag, self.problems = path, diag, problems
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        if not isinstance(data, dict):
            problems.append(diag(path, f"{self.dotted()} must be a mapping like {shape}, got {data!r}"))
        for key in self.data:
            if key not in known:
                self.fail((key,), f"unknown setting '{self.dotted(key)}'{did_you_mean(str(key), list(known))}")

    def dotted(self, *keys: Any) -> str:
        return ".".join(str(k) if not isinstance(k, int) else f"[{k}]" for k in (*self.path, *keys)).replace(".[", "[")

    def fail(self, keys: tuple[Any, ...], message: str) -> None:
        self.problems.append(self.diag((*self.path, *keys), message))

    def get(self, key: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            self.fail((key,), f"{self.dotted(key)} must be {what}, got {value!r}")
            return default
        return value

    def string(self, key: str, default: str = "", required: bool = False) -> str:
        value = str(self.get(key, (str,), default, "a string"))
        if required and not value and key not in self.data:
            self.fail((), f"{self.dotted(key)} is required")
        elif required and not value.strip():
            self.fail((key,), f"{self.dotted(key)} must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, (bool,), default, "true or false"))

    def number(self, key: str, default: float, minimum: float, maximum: float | None = None) -> float:
        value = self.get(key, (int, float), default, "a number")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
            self.fail((key,), f"{self.dotted(key)} must be {bound}, got {value!r}")
            return default
        return value


def arch_of(image: Image) -> str:
    return image.arch or DEFAULT_ARCH


def by_region(images: list[Image], arch: str = DEFAULT_ARCH) -> dict[str, str]:
    """region -> image id of one architecture (a version has one AMI per region and architecture)."""
    return {image.region: image.id for image in images if arch_of(image) == arch}
