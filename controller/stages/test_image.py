"""Launch a fresh machine from the new image and run the role's checks there, before publishing it.

The build machine passed its checks before it was cleaned; this catches what cleaning and a
first boot break: host keys and machine-id regenerated, services that must start at boot,
files that lived only in /run or /tmp. The machine is launched by the provider's own launch
path (``ctx.base`` is the new image, ``ctx.machine`` is ``test``: its own names, keys, security
group and ownership record), the agent and the checks go over in one transfer (cleaning removed
the agent from the image), then it is removed. A failed check fails the bake: the snapshot
stage's undo removes the image, and ``latest`` never moved.
"""

from __future__ import annotations

import dataclasses
import time

import structlog

from kiln.controller.context import BakeContext, StepCounts
from kiln.controller.model import BaseImage
from kiln.controller.remote import BUNDLE, FreshPayload, agent_command, box_agent, fresh_payload
from kiln.controller.stages.connect import Connect, WhileBooting
from kiln.controller.stages.launch_instance import remove_while_testing
from kiln.controller.stages.push_bundle import extra_vars
from kiln.controller.stages.verify import checks_on, image_run_files, run_checks

log = structlog.get_logger("kiln.stage")


def machine_from_image(ctx: BakeContext) -> BakeContext:
    """A context for the test machine: the bake's role, version and deadline, the new image as its base."""
    from kiln.controller.ssh import KeyPair

    image = ctx.image
    return dataclasses.replace(
        ctx,
        machine="test",
        base=BaseImage(id=image.id, name=image.name, spec=f"the new image {image.name}"),
        client_key=KeyPair.generate(comment=f"kiln-test-{ctx.build_id}"),
        host_key=KeyPair.generate(comment=f"kiln-host-test-{ctx.build_id}"),
        instance=None,
        host_key_expectation=None,
        session=None,
        apply_counts=StepCounts(),
        step_events=[],
        checks={},
        timings={},
    )


def image_payload(ctx: BakeContext, checks: list[dict]) -> FreshPayload:
    """The test machine's one transfer: the agent (cleaning removed it from the image) with its byte code, and the
    checks with the variables they render with; made while the machine boots."""
    from kiln.controller.stepfiles.compile import bundle_json

    full = bundle_json(ctx.compiled, extra_vars(ctx))
    bundle = {key: full[key] for key in ("role", "vars", "var_sources", "role_vars")}  # each check's role's scope
    return fresh_payload(bundle, checks, image_run_files(ctx), python=box_python(ctx))


def box_python(ctx: BakeContext) -> str:
    """The python version of the image's machines, as the build machine reported it ("" when it did not, or its
    python is not CPython: its byte code is not this python's)."""
    facts = ctx.facts or {}
    implementation = (facts.get("ansible") or {}).get("python", {}).get("type", "")
    return str(facts.get("python_version", "")) if implementation == "cpython" else ""


class TestImage:
    name = "test image"
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.machine: BakeContext | None = None

    def run(self, ctx: BakeContext) -> None:
        checks = checks_on(ctx.compiled.checks, "image")
        if not checks:
            log.warning("no checks for the image (all are on: build): the fresh machine is not tested", role=ctx.role)
            return
        started = time.monotonic()
        remove_while_testing(ctx)
        self.machine = fresh = machine_from_image(ctx)
        fresh.instance = ctx.provider.launch(fresh.machine_spec())  # the machine, or nothing left of it
        log.info("test machine", image=ctx.image.name, instance=fresh.instance.id)
        preparing = WhileBooting(lambda: image_payload(ctx, checks))
        Connect().run(fresh)
        prepared = preparing.result()
        made = "while the machine booted" if prepared is not None else "now"
        prepared = prepared or image_payload(ctx, checks)
        box_agent(fresh).compiled = prepared.compiled
        command = agent_command(fresh, "verify", f"{BUNDLE}/checks.json")
        where = f" on a fresh machine from the image {ctx.image.name} ({fresh.instance.id})"
        summary = run_checks(fresh, command, "image", stdin=prepared.payload, where=where)
        ctx.checks["image_passed"] = summary.get("passed", 0)
        sent = box_agent(fresh)
        log.info(
            "image tested",
            passed=summary.get("passed", 0),
            instance=fresh.instance.id,
            seconds=round(time.monotonic() - started, 2),
            payload_made=made,
            bytes_sent=sent.bytes_sent,
            round_trips=sent.round_trips,
        )
        self.remove(ctx)

    def remove(self, ctx: BakeContext) -> None:
        fresh, self.machine = self.machine, None
        if fresh is None:
            return
        Connect().undo(fresh)
        if fresh.instance is not None:
            ctx.provider.terminate(fresh.instance)
            log.info("test machine removed", instance=fresh.instance.id)

    def undo(self, ctx: BakeContext) -> None:
        self.remove(ctx)
