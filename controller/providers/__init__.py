"""The providers kiln knows, by the name kiln.yaml and ``--provider`` use.

Adding a provider is one package under controller/providers/ and one line in :data:`REGISTRY`
(docs/internals.md, "Adding a provider"). A factory gets the provider's kiln.yaml settings
(``providers.<name>``, maybe empty) and builds the provider, raising ``InvalidInput`` (exit 2,
file:line:column from ``config``) for bad settings before anything is launched; it imports its
own package lazily, so a command pays only for the provider it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _local(settings: dict[str, Any], config: Any, builds_dir: Path, sandbox: bool) -> Any:
    from kiln.controller.providers.local import make_local_provider

    return make_local_provider(settings, config=config, state_dir=builds_dir)


def _aws(settings: dict[str, Any], config: Any, builds_dir: Path, sandbox: bool) -> Any:
    from kiln.controller.providers.aws import make_aws_provider

    return make_aws_provider(settings, sandbox=sandbox, state_dir=builds_dir, config=config)


def _ssh(settings: dict[str, Any], config: Any, builds_dir: Path, sandbox: bool) -> Any:
    from kiln.controller.providers.ssh import make_ssh_provider

    return make_ssh_provider(settings, config=config)


#: name -> factory(settings, config, builds_dir, sandbox)
REGISTRY: dict[str, Callable[[dict[str, Any], Any, Path, bool], Any]] = {
    "local": _local,
    "aws": _aws,
    "ssh": _ssh,
}
