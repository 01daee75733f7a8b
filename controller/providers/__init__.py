"""The providers kiln knows, by the name kiln.yaml and ``--provider`` use.

Adding a provider is one package under controller/providers/ and one line in :data:`REGISTRY`
(docs/internals.md, "Adding a provider"). A registration names two things, each imported only
when used, so a command pays only for the provider it uses:

- ``module``: the provider's module, whose ``make_provider(settings, config, builds_dir, sandbox)``
  gets the provider's kiln.yaml settings (``providers.<name>``, maybe empty) and builds the provider,
  raising ``InvalidInput`` (exit 2, file:line:column from ``config``) for bad settings before anything
  is launched;
- ``section``: ``"module:NAME"``, the declaration of ``providers.<name>`` for the schema engine
  (controller/config.py builds kiln.yaml's schema from these). Its module must be light: no cloud SDK,
  no SSH library, and it must not import controller/config.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Registration:
    module: str
    section: str

    def __call__(self, settings: dict[str, Any], config: Any, builds_dir: Path, sandbox: bool) -> Any:
        return importlib.import_module(self.module).make_provider(settings, config, builds_dir, sandbox)

    def settings_section(self) -> dict[str, Any]:
        module, _, name = self.section.partition(":")
        return getattr(importlib.import_module(module), name)


_HERE = __name__

#: name -> where the provider and its kiln.yaml section are
REGISTRY: dict[str, Registration] = {
    "local": Registration(f"{_HERE}.local", f"{_HERE}.local_settings:LOCAL_SECTION"),
    "aws": Registration(f"{_HERE}.aws", f"{_HERE}.aws_settings:AWS_SECTION"),
    "ssh": Registration(f"{_HERE}.ssh", f"{_HERE}.ssh_settings:SSH_SECTION"),
}
