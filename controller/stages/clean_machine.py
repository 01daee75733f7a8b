"""Record the package inventory (the apply's run listed it, or the agent lists it now), then make the machine safe
to copy (hygiene)."""

from __future__ import annotations

from typing import Any

import structlog

from kiln.agent.protocol import Event, first
from kiln.controller.context import BakeContext
from kiln.controller.pipeline import BakeFailed
from kiln.controller.remote import RUN_DIR, agent_command, as_root, box_agent, run_agent

log = structlog.get_logger("kiln.stage")

# Each copy of the image must get its own identity and none of the bake's access.
HYGIENE = r"""
set -e
# the bake's key: named after the build, with its architecture beyond x86_64 (kiln-build-<id>-arm64); one sed for
# every file (each command here is a fork and exec on the bake's path): a missing file is skipped
sed -i -E '/ kiln-build-{build_id}(-[a-z0-9_]+)?$/d' /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys 2>/dev/null || true
rm -rf {run_dir}
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id
: > /etc/machine-id
if command -v apt-get >/dev/null; then apt-get clean; rm -rf /var/lib/apt/lists/*; fi
if command -v dnf >/dev/null; then dnf clean all >/dev/null 2>&1 || true; fi
# dotfiles too: a glob of * skips them
find /tmp /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +
find /var/log -type f \( -name '*.log' -o -name 'wtmp' -o -name 'lastlog' -o -name 'btmp' \) -exec truncate -s 0 {{}} +
rm -rf /root/.bash_history /root/.cache /var/log/journal/*
{extra}
{flush}
"""

#: the machine's disks flushed before its snapshot (a provider whose snapshot reads the files through the same
#: kernel, as a container engine's commit does, says it needs none: ``flushes_before_snapshot = False``)
FLUSH = "sync"


def hygiene_script(provider: Any, build_id: str) -> str:
    """The clean stage's script for a machine of ``provider`` and build ``build_id``."""
    return HYGIENE.format(
        build_id=build_id,
        run_dir=RUN_DIR,
        extra=provider.hygiene_script(),
        flush=FLUSH if getattr(provider, "flushes_before_snapshot", True) else "",
    )


def list_packages(ctx: BakeContext) -> dict[str, str]:
    """The installed packages, from an agent run of its own: through the bootstrap, as every run, since the box
    may hold only the agent's byte code (a base whose Python kiln knows is sent no source)."""
    rc, events, stderr = run_agent(
        ctx, agent_command(ctx, "packages"), lambda event: None, timeout=ctx.options.step_timeout
    )
    inventory = first(events, Event.PACKAGES)
    if rc != 0 or inventory is None:
        raise BakeFailed(f"listing the installed packages failed (exit {rc}): {stderr.strip()[-800:]}")
    return inventory["packages"]


class CleanMachine:
    name = "clean machine"

    def run(self, ctx: BakeContext) -> None:
        # the apply's run listed the packages as it ended (apply --packages); else the agent lists them here
        listed = box_agent(ctx).packages
        ctx.packages = listed if listed is not None else list_packages(ctx)
        script = hygiene_script(ctx.provider, ctx.build_id)
        done = ctx.session.run(as_root(ctx, "sh -s"), stdin=script.encode(), timeout=ctx.options.step_timeout)
        if done.rc != 0:
            raise BakeFailed(f"cleaning the machine failed (exit {done.rc}): {done.stderr.strip()[-800:]}")
        log.info("cleaned", packages=len(ctx.packages))

    def undo(self, ctx: BakeContext) -> None:
        """The instance is removed after the snapshot."""
