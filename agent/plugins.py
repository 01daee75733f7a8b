"""Find modules and checks by file name: no central registry to edit."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Dict, List


def discover(package_name: str, package_path: List[str]) -> Dict[str, ModuleType]:
    """Every file of the package that has a ``SCHEMA``, by name (``line_in_file.py`` is ``line_in_file``)."""
    found = {}
    for info in pkgutil.iter_modules(package_path):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{package_name}.{info.name}")
        if hasattr(mod, "SCHEMA"):
            found[getattr(mod, "NAME", info.name)] = mod
    return dict(sorted(found.items()))
