"""The one small interface every provider implements; the pipeline never asks which it has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from controller.model import BaseImage, Image, Instance
from controller.ownership import BuildClaim

if TYPE_CHECKING:
    from controller.context import BakeContext
    from controller.ssh import HostKeyExpectation


class ProviderError(RuntimeError):
    """The engine or the cloud failed (exit status 1)."""


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


class Provider(Protocol):
    name: str

    def resolve_base(self, spec: Any) -> BaseImage:
        """Turn the role's base spec into a concrete image id (building or looking it up)."""

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

    def launch(self, ctx: BakeContext) -> Instance:
        """Start a build machine from ``ctx.base`` with ``ctx.client_key`` authorised.

        Must set ``ctx.instance`` as soon as the resource exists (before waiting on it)
        so that an interrupt mid-launch still removes it.
        """

    def host_key_expectation(self, ctx: BakeContext) -> HostKeyExpectation:
        """What the instance's SSH host key must be (pinned key or console fingerprints)."""

    def reboot_wait(self, ctx: BakeContext, timeout: float = 300) -> None:
        """The agent scheduled a reboot of ``ctx.instance`` and exited; the SSH session is closed.

        Return once the machine has really gone down and is booting again (raise
        ``ProviderError`` after ``timeout`` seconds). The caller then reconnects over SSH,
        host key pinned as before, so the machine must keep its address, host key and
        authorised key across the reboot. Local: the container's systemd exits on reboot;
        wait for it to stop and start it again. A cloud VM reboots by itself: wait for SSH
        to stop answering.
        """

    def hygiene_script(self) -> str:
        """Provider-specific shell lines run when cleaning the machine (e.g. cloud-init clean)."""

    def prepare_snapshot(self, ctx: BakeContext) -> None:
        """Quiesce the machine before the snapshot (e.g. stop an EC2 instance)."""

    def snapshot(self, ctx: BakeContext) -> Image:
        """Capture ``ctx.instance`` as ``ctx.version`` of ``ctx.role``, with ``ctx.labels()``."""

    def discard(self, ctx: BakeContext, image: Image) -> None:
        """Remove an image this bake made that must not survive (undo of snapshot)."""

    def publish(self, ctx: BakeContext, image: Image) -> list[Image]:
        """Distribute and move the ``latest`` pointer to ``image``; return every copy."""

    def unpublish(self, ctx: BakeContext, images: list[Image]) -> None:
        """Undo a publish that did not complete: restore the previous ``latest``, drop copies."""

    def keep_build(self, ctx: BakeContext) -> None:
        """The build machine stays for debugging (--keep-on-error): its record is held by nobody
        (``claim.keep()``), so only its deadline or ``invoke destroy`` ends it."""

    def terminate(self, ctx: BakeContext, instance: Instance) -> None:
        """Remove the build machine and every temporary resource made for it."""

    def images(self, role: str) -> list[Image]:
        """Every version of ``role``, newest first."""

    def retire(self, role: str, keep: int) -> list[Image]:
        """Remove versions beyond the newest ``keep``; never the one ``latest`` points to."""

    def sweep(self, apply: bool) -> list[str]:
        """What builds that are over left behind (their machine, unpublished image, version reservation),
        proven by the build's record: the holder is dead, or the deadline passed. Removed when ``apply``."""
