"""One bake, several architectures: the machine stages once per architecture, concurrently, under one version.

``stages_for`` gives the chain of one machine. For a provider that bakes several architectures
(``providers.aws.architectures: [x86_64, arm64]``) :func:`by_architecture` regroups it:

    resolve every architecture's base   (before anything is reserved or launched)
    -> allocate version                 (one, shared)
    -> per architecture, in parallel:   launch ... snapshot (and test the image), each in its own
                                        context (``ctx.variants``): own machine, keys, image
    -> publish ...                      (every architecture's image together, as before)

Each architecture's chain is an ordinary ``run_stages`` with its own unwinding: its machine is
removed when its chain ends, its image kept only if the chain succeeded. When one fails (or the
bake is interrupted) the others are cancelled (their SSH session closed, so a running agent stops
at once) and the group fails; its undo waits for every chain to finish unwinding and removes the
images of the chains that had succeeded, so nothing is published and ``latest`` never moves.
The pipeline and the stages stay provider-agnostic: a variant is a plain ``BakeContext`` whose
``arch`` the provider reads (base, instance types, names, tags).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from kiln.controller.context import BakeContext
from kiln.controller.pipeline import BakeFailed, Interrupted, Stage, run_stages
from kiln.controller.stages.allocate_version import AllocateVersion
from kiln.controller.stages.resolve_base import ResolveBase, resolve
from kiln.controller.stages.snapshot import Publish

log = structlog.get_logger("kiln.stage")

#: the architecture a context stands for when it must name one (``latest`` names its image)
PRIMARY = "x86_64"


def by_architecture(make_stages: Callable[[], list[Stage]], arches: list[str]) -> list[Stage]:
    """The bake's stages with everything between the version and publish run once per architecture.

    ``make_stages`` is called once more per architecture: stages may keep per-run state."""
    stages = make_stages()
    first, last = _machine_span(stages)
    groups = {arch: make_stages()[first:last] for arch in arches}
    resolved = [ResolveBases(arches) if isinstance(s, ResolveBase) else s for s in stages[:first]]
    return [*resolved, PerArchitecture(groups), *stages[last:]]


def _machine_span(stages: list[Stage]) -> tuple[int, int]:
    """From the stage after the version reservation up to publish (the end, in check mode)."""
    first = next(i for i, s in enumerate(stages) if isinstance(s, AllocateVersion)) + 1
    last = next((i for i, s in enumerate(stages) if isinstance(s, Publish)), len(stages))
    return first, last


def variant(ctx: BakeContext, arch: str) -> BakeContext:
    """A context for one architecture's machine and image: the bake's role, build id, deadline and options."""
    return BakeContext(
        role=ctx.role,
        compiled=ctx.compiled,
        provider=ctx.provider,
        options=ctx.options,
        build_id=ctx.build_id,
        started=ctx.started,
        arch=arch,
    )


def primary(ctx: BakeContext) -> BakeContext:
    return next((v for v in ctx.variants if v.arch == PRIMARY), ctx.variants[0])


class ResolveBases:
    """Every architecture's base (``{arch}`` templated by the provider), before anything is launched."""

    name = "resolve base images"

    def __init__(self, arches: list[str]) -> None:
        self.arches = arches

    def run(self, ctx: BakeContext) -> None:
        ctx.variants = [variant(ctx, arch) for arch in self.arches]
        for one in ctx.variants:
            resolve(one)
        ctx.base, ctx.inputs_hash = primary(ctx).base, primary(ctx).inputs_hash

    def undo(self, ctx: BakeContext) -> None:
        """Nothing was created."""


class PerArchitecture:
    """Each architecture's machine stages in its own thread; all succeed or the bake keeps nothing."""

    name = "build each architecture"

    def __init__(self, groups: dict[str, list[Stage]]) -> None:
        self.groups = groups
        self.cancel = threading.Event()
        self.threads: list[threading.Thread] = []
        self.failures: list[tuple[str, BaseException]] = []  # in the order they happened
        self.variants: list[BakeContext] = []

    def run(self, ctx: BakeContext) -> None:
        context = structlog.contextvars.get_contextvars()
        self.variants = list(ctx.variants)
        for one in ctx.variants:
            one.version = ctx.version
            thread = threading.Thread(target=self._chain, args=(one, context), name=f"kiln-{one.arch}", daemon=True)
            self.threads.append(thread)
            thread.start()
        try:
            for thread in self.threads:
                while thread.is_alive():
                    thread.join(0.5)  # short waits: a signal reaches the main thread at once
        except BaseException:  # noqa: B036 - interrupted: stop every chain, undo waits for their unwinding
            self.stop()
            raise
        if self.failures:
            raise BakeFailed(self.reason())
        self.adopt(ctx)

    def _chain(self, one: BakeContext, context: dict) -> None:
        structlog.contextvars.bind_contextvars(**context, arch=one.arch)
        try:
            run_stages(self.groups[one.arch], one, cancel=self.cancel)
        except BaseException as exc:  # noqa: B036 - reported by the group, in the main thread
            self.failures.append((one.arch, exc))
            self.stop(failed=one)
        log.info(
            "architecture done",
            result="ok" if one.succeeded else "failed",
            failure=one.failure or None,
            **{k.replace(" ", "_"): v for k, v in one.timings.items()},
        )

    def stop(self, ctx: BakeContext | None = None, failed: BakeContext | None = None) -> None:
        """Cancel every chain at its next stage and close the others' SSH sessions: an agent run in
        progress ends now instead of at its time limit."""
        self.cancel.set()
        for one in self.variants:
            if one is not failed and one.session is not None:
                one.session.close()

    def reason(self) -> str:
        """The first real failure (the others were cancelled because of it)."""
        real = [(arch, exc) for arch, exc in self.failures if not isinstance(exc, Interrupted)] or self.failures
        arch, exc = real[0]
        return f"{arch}: {exc}"

    def adopt(self, ctx: BakeContext) -> None:
        """The bake's own fields from the primary architecture (recap, manifest, package inventory)."""
        main = primary(ctx)
        ctx.image, ctx.apply_counts, ctx.rerun_counts = main.image, main.apply_counts, main.rerun_counts
        ctx.checks, ctx.packages, ctx.facts, ctx.step_events = main.checks, main.packages, main.facts, main.step_events
        log.info("every architecture baked", images={v.arch: v.image.id for v in ctx.variants if v.image})

    def undo(self, ctx: BakeContext) -> None:
        """Wait for every chain's unwinding (each is bounded), then, unless the bake succeeded, remove the
        images of the chains that had succeeded (a failed chain removed its own)."""
        started = time.monotonic()
        for thread in self.threads:
            thread.join()
        if time.monotonic() - started > 1:
            log.info("every architecture's machine removed", seconds=round(time.monotonic() - started, 1))
        if ctx.succeeded:
            return
        for one in ctx.variants:
            if one.succeeded and one.image is not None:
                ctx.provider.discard(one.image)
                log.info("image of another architecture removed", arch=one.arch, image=one.image.name)
