"""Verify checks: one file each, found by name (no central registry to edit)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Dict


def discover() -> Dict[str, ModuleType]:
    """All checks by key: ``agent/checks/http.py`` is ``http``."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "SCHEMA"):
            found[getattr(mod, "NAME", info.name)] = mod
    return dict(sorted(found.items()))
