"""Verify checks: one file each, found by name (see agent.plugins)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict

from ..plugins import discover as _discover


def discover() -> Dict[str, ModuleType]:
    return _discover(__name__, __path__)


class ByName(dict):
    """The checks by name, each imported when a check first names it: a run loads only the kinds it uses (all nine
    took 16-28 ms of a fresh box's start). A name is its file's, as :func:`discover` names them."""

    def __missing__(self, name: str) -> ModuleType:
        if not name.isidentifier() or name.startswith("_"):
            raise KeyError(name)
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise KeyError(name) from None
        if not hasattr(module, "SCHEMA"):
            raise KeyError(name)
        self[name] = module
        return module

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default
