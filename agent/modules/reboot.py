"""Reboot the machine; the controller reconnects and the agent continues with the next step.

How it works: the agent saves its run state (registered results, notified handlers,
counts, where it is) in the bundle directory, schedules the reboot a second later,
reports ``{"event": "reboot"}`` and exits with status 3. The controller closes its SSH
session, lets the provider bring the machine back, reconnects (the pinned host key is
unchanged) and runs ``agent apply --resume``, which reports this step as changed and
goes on with the step after it.

**Idempotence** (Ansible's ``reboot`` always reboots; kiln's does not): the step
reboots unless the machine has already rebooted *for this step* since it last booted.
After the reboot, the resumed agent writes ``/run/kiln/rebooted-<key>`` (``<key>``: a
hash of the step's role, name and arguments); ``/run`` is a tmpfs, so the marker lives
exactly as long as the boot. The bake's idempotence check (and a second ``converge``)
therefore reports ``ok``; a machine that was restarted since, or a changed reboot step,
reboots again. Guard it further with ``when`` (e.g. on a registered kernel upgrade).

Example::

    - name: Reboot into the new kernel
      reboot: {msg: "kernel upgrade"}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from typing import Any, Dict

from ..api import Context, ModuleError, Result
from ..protocol import REBOOT_REQUESTED

SCHEMA = {
    "description": "Reboot the machine once; the controller reconnects and the next step runs after the boot.",
    "args": {
        "reboot_timeout": {
            "type": "int",
            "default": 300,
            "description": "Seconds the controller waits for the machine to come back.",
        },
        "msg": {"type": "str", "description": "Why (shown in the log and in the system's shutdown message)."},
    },
    "check_mode": "full",
    "diff": False,
    "example": '- reboot: {msg: "kernel upgrade", reboot_timeout: 600}',
}

MARKER_DIR = "/run/kiln"


def step_key(ctx: Context) -> str:
    """The reboot step's identity: its role, name and (unrendered) arguments."""
    ident = {k: ctx.step.get(k) for k in ("role", "name", "args")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def done_marker(key: str) -> str:
    return os.path.join(MARKER_DIR, f"rebooted-{key}")


def pending_marker(key: str) -> str:
    return os.path.join(MARKER_DIR, f"reboot-pending-{key}")


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    key = step_key(ctx)
    return {"key": key, "rebooted": os.path.exists(done_marker(key))}


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if state["rebooted"]:
        return Result(False, "already rebooted for this step since the machine booted", data={"rebooted": False})
    why = f" ({params['msg']})" if params.get("msg") else ""
    if ctx.check_mode:
        return Result(True, f"would reboot{why}", data={"rebooted": False})
    # The runner saves its state, then calls schedule(); the reboot happens after the agent exits.
    return Result(
        True,
        f"rebooting{why}",
        data={REBOOT_REQUESTED: True, "key": state["key"], "reboot_timeout": params["reboot_timeout"]},
    )


# The hooks of a rebooting module (agent.protocol.RebootingModule): schedule, then confirm after the boot.
def schedule(result: Dict[str, Any], ctx: Context) -> None:
    """Reboot a moment from now, detached from the agent (which exits first)."""
    os.makedirs(MARKER_DIR, exist_ok=True)
    with open(pending_marker(result["key"]), "w") as handle:
        handle.write(str(time.time()))
    if shutil.which("systemd-run") and ctx.facts.get("init", "systemd") == "systemd":
        done = ctx.run(
            [
                "systemd-run",
                "--unit",
                f"kiln-reboot-{result['key']}",
                "--on-active=1",
                "--timer-property=AccuracySec=100ms",
                "systemctl",
                "reboot",
            ],
            check=False,
        )
        if done.rc == 0:
            return
    command = "sleep 1; systemctl reboot || shutdown -r now || reboot"
    try:
        subprocess.Popen(
            ["sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise ModuleError(f"could not schedule the reboot: {exc}") from None


def confirm(result: Dict[str, Any], ctx: Context) -> str:
    """After the boot (``apply --resume``): check the machine really rebooted; mark it done."""
    if os.path.exists(pending_marker(result["key"])):
        raise ModuleError("the machine did not reboot (its /run survived): is the reboot blocked?")
    os.makedirs(MARKER_DIR, exist_ok=True)
    with open(done_marker(result["key"]), "w") as handle:
        handle.write(str(time.time()))
    return "rebooted"
