"""The typed data passed between kiln's parts: diagnostics, compiled roles, images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.controller.ssh import KeyPair


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
class Machine:
    """A machine kiln reaches over SSH, as a provider knows it (providers add their own typed fields by
    subclassing: an EC2 instance knows its key pair and security group)."""

    id: str
    provider: str
    region: str = ""
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 22
    ssh_user: str = "root"
    #: False for a host kiln did not make (the ssh provider's): never terminated, started or stopped
    owned: bool = True
    #: the key to log in with when the provider has its own (an existing host); None: the spec's client key
    login_key: KeyPair | None = None
    #: the SSH host public key line the provider placed on the machine (local), pinned on connect; "": none placed
    host_public_key: str = ""


#: the name the stages and tests have always used for a build machine
Instance = Machine


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
    arch: str = ""  # "" on a provider with one architecture
    build_id: str = ""  # the build that made it (from its label or tag)
    nightly_run: str = ""  # the nightly run (--run-id) that baked it, if one did


@dataclass(frozen=True)
class PublishSpec:
    """One version to publish: the bake's new images, one per architecture, the primary architecture's first."""

    role: str
    version: str
    build_id: str
    images: list[Image]


@dataclass
class Publication:
    """What a publish did, recorded as it happens: the caller holds it from its start (``on_started``), so a
    publish that fails or is interrupted half way is undone from it (``unpublish``)."""

    spec: PublishSpec
    #: the originals, then each copy the moment it exists (after a whole publish: in region order)
    images: list[Image] = field(default_factory=list)
    #: image id -> what its ``latest`` named before publish moved it to that image ("": nothing)
    previous_latest: dict[str, str] = field(default_factory=dict)

    @property
    def latest_moved(self) -> bool:
        return bool(self.previous_latest)

    @property
    def copies(self) -> list[Image]:
        """The images publish made (the originals are the snapshot stage's)."""
        originals = {image.id for image in self.spec.images}
        return [image for image in self.images if image.id not in originals]
