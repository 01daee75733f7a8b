"""Find modules and checks by file name: no central registry to edit."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Set


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


class ByName(Mapping):
    """A package's plugins (its files with a ``SCHEMA``) by file name, each imported when first named: a run or a
    compile loads only what its steps and checks use (every module with its imports cost more than a small role's
    steps). Listing them (a did-you-mean) imports them all; they are then those :func:`discover` finds."""

    def __init__(self, package_name: str, package_path: List[str]) -> None:
        self.package_name, self.package_path = package_name, package_path
        self.loaded: Dict[str, ModuleType] = {}
        self._files: Optional[Set[str]] = None

    def __getitem__(self, name: str) -> ModuleType:
        if name in self.loaded:
            return self.loaded[name]
        if not name.isidentifier() or name.startswith("_"):
            raise KeyError(name)
        try:
            module = importlib.import_module(f"{self.package_name}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{self.package_name}.{name}":
                raise
            raise KeyError(name) from None
        if not hasattr(module, "SCHEMA"):
            raise KeyError(name)
        self.loaded[name] = module
        return module

    def files(self) -> Set[str]:
        if self._files is None:
            self._files = {i.name for i in pkgutil.iter_modules(self.package_path) if not i.name.startswith("_")}
        return self._files

    def __iter__(self) -> Iterator[str]:
        return (name for name in sorted(self.files()) if name in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)
