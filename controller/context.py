"""The typed context a bake's stages share (no bag of strings)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.controller.model import BaseImage, CompiledRole, Image, Instance, Publication, PublishSpec

if TYPE_CHECKING:
    from kiln.controller.providers.base import ImageSpec, MachineSpec, Provider
    from kiln.controller.ssh import HostKeyExpectation, KeyPair, Session


@dataclass
class BakeOptions:
    keep_on_error: bool = False
    check_mode: bool = False
    diff: bool = False
    idempotence_gate: bool = True
    ssh_timeout: float = 180.0  # seconds for a new machine's SSH to answer (kiln.yaml build.ssh_timeout)
    deadline_hours: float = 3.0  # temporaries expire after this (build.deadline_hours)
    step_timeout: float = 3600.0  # seconds a step may run unless it says `timeout:` (build.step_timeout)
    ssh_keepalive: float = 15.0  # seconds between keepalive probes (build.ssh_keepalive)
    ssh_keepalive_misses: int = 3  # unanswered probes before the machine counts as lost (build.ssh_keepalive_misses)
    test_image: bool = True  # run the checks on a fresh machine from the new image (build.test_image; --no-test)
    builds_dir: Path = Path("builds")
    playbooks_dir: Path = Path("playbooks")
    nightly_run: str = ""  # the nightly run that bakes (its --run-id), written on the image


@dataclass
class StepCounts:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    ignored: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class BakeContext:
    role: str
    compiled: CompiledRole
    provider: Provider
    options: BakeOptions
    build_id: str
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    #: which of the bake's machines this context launches: ``build``, or ``test`` (a fresh one from the new image)
    machine: str = "build"
    #: the architecture this context builds ("": the provider's only one); see ``variants``
    arch: str = ""
    # filled in by the stages, in order
    version: str = ""
    base: BaseImage | None = None
    inputs_hash: str = ""
    client_key: KeyPair | None = None
    host_key: KeyPair | None = None
    instance: Instance | None = None
    host_key_expectation: HostKeyExpectation | None = None
    session: Session | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    apply_counts: StepCounts = field(default_factory=StepCounts)
    rerun_counts: StepCounts | None = None
    step_events: list[dict[str, Any]] = field(default_factory=list)  # the first apply's, in order
    checks: dict[str, int] = field(default_factory=dict)
    #: what the apply set (registered results, set_fact values): the agent's run-vars.json, for the image's checks
    run_variables: bytes = b""
    packages: dict[str, str] = field(default_factory=dict)
    image: Image | None = None
    #: what publish did (copies, ``latest`` moved), held from its start so its undo finds a publish cut short
    publication: Publication | None = None
    retired: list[Image] = field(default_factory=list)
    #: a bake of several architectures: one context per architecture, each with its own machine and image,
    #: all under this context's one version (controller/stages/architectures.py)
    variants: list[BakeContext] = field(default_factory=list)
    # bookkeeping
    current_stage: str = ""
    succeeded: bool = False
    failure: str = ""
    interrupted: bool = False  # a signal or a cancel stopped the bake (not a failure of the machine)
    timings: dict[str, float] = field(default_factory=dict)
    finished: dt.datetime | None = None

    @property
    def expires(self) -> dt.datetime:
        """When a temporary resource of this bake may be swept even if the controller died."""
        return self.started + dt.timedelta(hours=self.options.deadline_hours)

    @property
    def machine_name(self) -> str:
        """The name of this bake's machine (and of its key pair and security group): unique per build and machine."""
        return f"kiln-{self.machine}-{self.build_id}" + (f"-{self.arch}" if self.arch not in ("", "x86_64") else "")

    @property
    def keep_instance(self) -> bool:
        return not self.succeeded and self.options.keep_on_error and not self.interrupted

    @property
    def published(self) -> list[Image]:
        """Every image of the version publish made available: the originals and their copies."""
        return self.publication.images if self.publication is not None else []

    def images_made(self) -> list[Image]:
        """The bake's new images: one, or one per architecture (``variants``)."""
        if self.variants:
            return [v.image for v in self.variants if v.image is not None]
        return [self.image] if self.image is not None else []

    def machine_spec(self) -> MachineSpec:
        """The spec of the machine this context stands for (its base, keys, names, deadline)."""
        from kiln.controller.providers.base import MachineSpec

        return MachineSpec(
            role=self.role,
            build_id=self.build_id,
            base=self.base,
            client_key=self.client_key,
            host_key=self.host_key,
            expires=self.expires,
            machine=self.machine,
            arch=self.arch,
            version=self.version,
        )

    def image_spec(self) -> ImageSpec:
        """The spec of the image this context's machine becomes."""
        from kiln.controller.providers.base import ImageSpec

        return ImageSpec(
            role=self.role,
            version=self.version,
            build_id=self.build_id,
            machine=self.instance,
            base=self.base,
            inputs_hash=self.inputs_hash,
            labels=self.labels(),
            description=self.compiled.description,
            started=self.started,
            arch=self.arch,
        )

    def publish_spec(self) -> PublishSpec:
        """The version to publish: the primary image first, then each other architecture's."""
        others = [image for image in self.images_made() if image is not self.image]
        return PublishSpec(self.role, self.version, self.build_id, [self.image, *others])

    def labels(self) -> dict[str, str]:
        """The build metadata every provider writes (as labels or tags) on the image."""
        return {
            "role": self.role,
            "version": self.version,
            "build-id": self.build_id,
            "inputs-hash": self.inputs_hash,
            "base-image": self.base.id if self.base else "",
            "git-commit": git_commit(self.options.playbooks_dir),
            # the package inventory artifact (builds/packages/<role>/<version>.json), by content
            "packages-sha256": packages_digest(self.packages) if self.packages else "",
            # a forced nightly bakes each role once per run, whichever runner reaches it first
            "nightly-run": self.options.nightly_run,
        }


def inventory_bytes(packages: dict[str, str]) -> bytes:
    """The package inventory artifact (builds/packages/<role>/<version>.json), byte for byte."""
    import json

    return (json.dumps(packages, indent=1, sort_keys=True) + "\n").encode()


def packages_digest(packages: dict[str, str]) -> str:
    """sha256 of the inventory artifact's bytes: ``sha256sum`` of the file gives the same."""
    import hashlib

    return hashlib.sha256(inventory_bytes(packages)).hexdigest()


def git_commit(path: Path) -> str:
    import subprocess

    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"
