"""The typed data passed between kiln's parts: diagnostics, compiled roles, images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Diagnostic:
    """One problem in the user's input, pinned to file:line:column (1-based)."""

    file: str
    line: int
    column: int
    message: str
    source_line: str = ""

    def render(self) -> str:
        head = f"{self.file}:{self.line}:{self.column}: error: {self.message}"
        if not self.source_line:
            return head
        caret = " " * max(self.column - 1, 0) + "^"
        return f"{head}\n    {self.source_line.rstrip()}\n    {caret}"


class InvalidInput(Exception):
    """Config, role or step files are invalid; nothing was launched (exit status 2)."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__(self.render())

    def render(self) -> str:
        lines = [d.render() for d in self.diagnostics]
        lines.append(f"{len(self.diagnostics)} error(s); nothing was launched")
        return "\n".join(lines)


@dataclass
class CompiledRole:
    """A role and its dependencies, validated and compiled into the agent's bundle format.

    ``steps`` / ``handlers`` are bundle steps (see docs/internals.md); ``files`` maps
    bundle-relative paths (``files/<role>/x``, ``templates/<role>/x.j2``) to bytes.
    """

    role: str
    chain: list[str]
    description: str
    steps: list[dict[str, Any]]
    handlers: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    variables: dict[str, Any]
    files: dict[str, bytes]
    base: dict[str, Any]  # provider name -> base image spec from role.yml (inherited along depends)
    content_hash: str  # hash of every input except the base image (files, vars, agent version)
    no_log_values: list[str] = field(default_factory=list)


@dataclass
class BaseImage:
    """The resolved base: a concrete id plus how it was found."""

    id: str
    name: str
    spec: str  # what the user asked for (ref, SSM parameter, filter)


@dataclass
class Instance:
    """A launched build machine, as a provider knows it."""

    id: str
    provider: str
    region: str = ""
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 22
    ssh_user: str = "root"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Image:
    """A baked image version in one place (a local image, or an AMI in one region)."""

    id: str
    role: str
    version: str
    provider: str
    region: str = ""
    name: str = ""
    created: str = ""
    base: str = ""
    inputs_hash: str = ""
    status: str = "available"
    latest: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
