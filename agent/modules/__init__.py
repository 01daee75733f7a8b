"""Agent modules: one file each, found by name (see agent.plugins)."""

from __future__ import annotations

from types import ModuleType
from typing import Dict

from ..plugins import discover as _discover


def discover() -> Dict[str, ModuleType]:
    return _discover(__name__, __path__)
