"""The provider boundary, split by concern; the pipeline never asks which provider it has.

* :class:`Machines`: launch a machine from a typed :class:`MachineSpec`, give its SSH host key, wait for its
  reboot, remove it. Enough for the developer loop (``converge``/``verify``): the ssh provider is only this.
* :class:`Images`: snapshot a machine (an :class:`ImageSpec`) into a version, discard it, publish a
  :class:`PublishSpec` (a :class:`Publication` records what it did) and unpublish it, list and retire versions.
* :class:`Coordination`: version reservations, the per-role lock, sweep of what over builds left.

A provider that bakes implements all three (:class:`Provider`); one that only reaches machines says
``makes_images = False`` and ``invoke bake`` refuses it before anything runs (exit 2).

Providers take typed specs and return typed records; they never see the bake's context. What a
provider makes is handed to the caller the moment it exists (``on_created``, ``on_started``), so the
caller's undo removes it even when the call is interrupted half way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kiln.controller.model import BaseImage, Image, Machine, Publication, PublishSpec
from kiln.controller.ownership import BuildClaim

if TYPE_CHECKING:
    from kiln.controller.ssh import HostKeyExpectation, KeyPair


class ProviderError(RuntimeError):
    """The engine or the cloud failed (exit status 1)."""


class ImageLeftToSweep(ProviderError):
    """The image exists but cannot be removed yet (e.g. an AMI whose snapshots are still being made); the
    provider recorded it so the next bake of the role or ``sweep`` removes it: the caller owns it no longer."""


class UnknownBase(ProviderError):
    """The role's base names something that does not exist (e.g. a misspelt SSM parameter): invalid input
    (exit status 2), found before anything is launched. ``written`` is the name as role.yml has it."""

    def __init__(self, message: str, written: str) -> None:
        super().__init__(message)
        self.written = written


@dataclass(frozen=True)
class Lock:
    """The answer to ``acquire_lock``: truthy when held; ``took_over`` names a stale holder replaced."""

    acquired: bool
    took_over: str = ""  # e.g. "nightly-... (pid 123 on host, dead)": said in the log and the report

    def __bool__(self) -> bool:
        return self.acquired


@dataclass(frozen=True)
class MachineSpec:
    """Everything a provider needs to launch one machine; nothing else of the bake reaches it."""

    role: str
    build_id: str
    base: BaseImage
    client_key: KeyPair  # authorised for ssh_user
    host_key: KeyPair  # the host key to place when the provider can (local); else the console's is pinned
    expires: dt.datetime  # the deadline of everything temporary made for it
    machine: str = "build"  # which of the bake's machines: ``build``, or ``test`` (a fresh one from the new image)
    arch: str = ""  # "" : the provider's only architecture
    version: str = ""  # the reserved version whose build record notes the machine ("dev": the developer loop's)

    @property
    def name(self) -> str:
        """The machine's name (and its key pair's and security group's): unique per build, machine and arch."""
        return f"kiln-{self.machine}-{self.build_id}" + (f"-{self.arch}" if self.arch not in ("", "x86_64") else "")


@dataclass(frozen=True)
class ImageSpec:
    """Everything a provider needs to capture one machine as one version of a role."""

    role: str
    version: str
    build_id: str
    machine: Machine
    base: BaseImage
    inputs_hash: str
    labels: dict[str, str]  # the build metadata, written as labels or ``kiln:*`` tags (see BakeContext.labels)
    description: str  # the role's
    started: dt.datetime  # when the bake started (a record of an image left pending says it)
    arch: str = ""  # "": the provider's only architecture


class Machines(Protocol):
    """Machines kiln reaches over SSH."""

    name: str
    #: False: a provider that reaches existing hosts only (``invoke bake`` refuses it, exit 2)
    makes_images: bool

    def resolve_base(self, spec: Any) -> BaseImage:
        """Turn the role's base spec into a concrete image id (building or looking it up)."""

    def launch(self, spec: MachineSpec) -> Machine:
        """Start a machine from ``spec.base`` with ``spec.client_key`` authorised, and return it.

        Either the machine is returned, or everything made for it (key pair, security group,
        instance, container) was removed before the error (or interrupt) is raised again."""

    def host_key_expectation(self, machine: Machine) -> HostKeyExpectation:
        """What the machine's SSH host key must be (pinned key or console fingerprints)."""

    def reboot_wait(self, machine: Machine, timeout: float = 300) -> None:
        """The agent scheduled a reboot of ``machine`` and exited; the SSH session is closed.

        Return once the machine has really gone down and is booting again (raise
        ``ProviderError`` after ``timeout`` seconds). The caller then reconnects over SSH,
        host key pinned as before, so the machine must keep its address, host key and
        authorised key across the reboot. Local: the container's systemd exits on reboot;
        wait for it to stop and start it again. A cloud VM reboots by itself: wait for SSH
        to stop answering.
        """

    def machine_status(self, machine: Machine) -> str:
        """``running``, another state the provider can ``start`` it from, or "" when it is gone (dev loop)."""

    def start(self, machine: Machine) -> None:
        """Start a stopped machine again (the developer loop's kept one)."""

    def hygiene_script(self) -> str:
        """Provider-specific shell lines run when cleaning the machine (e.g. cloud-init clean)."""

    def keep_build(self, spec: MachineSpec) -> None:
        """The build machine stays for debugging (--keep-on-error): its record is held by nobody
        (``claim.keep()``), so only its deadline or ``invoke destroy`` ends it."""

    def terminate(self, machine: Machine) -> None:
        """Remove the machine and every temporary resource made for it; never raises, says what is left."""


class Images(Protocol):
    """Versions of a role's image: made from a machine, distributed, pointed to by ``latest``, retired."""

    def prepare_snapshot(self, machine: Machine) -> None:
        """Quiesce the machine before the snapshot (e.g. stop an EC2 instance)."""

    def snapshot(self, spec: ImageSpec, on_created: Callable[[Image], None]) -> Image:
        """Capture ``spec.machine`` as ``spec.version`` of ``spec.role``, with ``spec.labels``.

        ``on_created`` gets the image the moment it exists (or is about to), before any wait: from then
        on the caller owns it and its undo removes it (``discard``), interrupted or not. An image that
        cannot be removed yet raises :class:`ImageLeftToSweep`: the caller owns it no longer."""

    def discard(self, image: Image) -> None:
        """Remove an image this build made (``image.build_id``) that must not survive (undo of snapshot)."""

    def publish(self, spec: PublishSpec, on_started: Callable[[Publication], None]) -> Publication:
        """Distribute ``spec.images`` and move each one's ``latest`` to it, only forward, under the role's
        publish mutex; the version's reservation is released once the images hold it.

        ``on_started`` gets the :class:`Publication` before anything is made; it records each copy the
        moment it exists and each ``latest`` moved, so ``unpublish`` can undo a publish cut short."""

    def unpublish(self, publication: Publication) -> None:
        """Undo a publish that did not complete: ``latest`` back where it was (where it still names this
        publication's image), the copies removed (the originals are the snapshot's)."""

    def images(self, role: str) -> list[Image]:
        """Every version of ``role``, newest first."""

    def retire(self, role: str, keep: int) -> list[Image]:
        """Remove versions beyond the newest ``keep``; never the one ``latest`` points to."""


class Coordination(Protocol):
    """What concurrent bakes and schedulers agree through: versions, locks, the records sweep reads."""

    def allocate_version(self, role: str, claim: BuildClaim) -> str:
        """Reserve the next ``YYYYMMDD.N`` for ``role``; unique even under concurrent bakes.

        The reservation records ``claim``: after a crash, sweep proves from it which build an
        unpublished image or a build machine belongs to, and that the build is over.
        """

    def release_version(self, role: str, version: str) -> None:
        """Give back a reserved version that was never published (undo of allocate)."""

    def acquire_lock(self, role: str, owner: str, wait: bool, ttl: float = 4 * 3600) -> Lock:
        """Take the per-role bake lock (falsy: another live scheduler holds it and ``wait`` is off).

        A lock whose holder is dead or whose ``ttl`` expired is taken over, and the answer says so.
        """

    def release_lock(self, role: str, owner: str) -> None:
        """Give the per-role lock back."""

    def sweep(self, apply: bool) -> list[str]:
        """What builds that are over left behind (their machine, unpublished image, version reservation),
        proven by the build's record: the holder is dead, or the deadline passed. Removed when ``apply``."""


def ssh_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether an SSH server greets on ``host:port`` within ``timeout`` (a TCP connect and the banner):
    how a provider whose machines reboot by themselves sees one go down."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


class Provider(Machines, Images, Coordination, Protocol):
    """A provider that bakes: machines, images and coordination."""
