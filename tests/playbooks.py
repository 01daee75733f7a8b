"""Throwaway playbooks directories and the real `invoke` command line, for bake tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TINY_ROLE = """\
description: a tiny role for tests
base:
  local: localhost/kiln-base/debian:bookworm
"""


def make_playbooks(root: Path, files: dict[str, str], role: str = "tiny", kiln_yaml: str = "") -> Path:
    """``root/playbooks`` with one role made of ``files`` (steps.yml, verify.yml, templates/x, ...)."""
    playbooks = root / "playbooks"
    role_dir = playbooks / "roles" / role
    role_dir.mkdir(parents=True, exist_ok=True)
    (playbooks / "kiln.yaml").write_text(kiln_yaml or "retention:\n  keep: 3\n")
    files = {"role.yml": TINY_ROLE, **files}
    for name, text in files.items():
        path = role_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return playbooks


def invoke(
    cwd: Path, *args: str, playbooks: Path | None = None, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run ``invoke <args>`` with kiln's tasks.py from ``cwd`` (where playbooks/ and builds/ live)."""
    if playbooks is not None and not (cwd / "playbooks").exists():
        (cwd / "playbooks").symlink_to(playbooks)
    full_env = {**os.environ, "CI": "", **(env or {})}
    # the terminal view unless a test asks for JSON lines (CI=true would switch them on)
    full_env.setdefault("KILN_JSON", "")
    # versions, locks and build records of this test's bakes (the session's own one is shared)
    full_env["KILN_STATE_DIR"] = (env or {}).get("KILN_STATE_DIR") or str(cwd / "state")
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def kill9_bake(
    work: Path, argv: list[str], env: dict, until: Callable[[dict], bool], delay: float = 0.0
) -> dict[str, str]:
    """Run `invoke bake <argv>` (``env`` asks for JSON lines), kill -9 its process group ``delay`` seconds
    after the first event ``until`` accepts; what it announced: build_id, version, image, instance."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "bake", *argv],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = {"build_id": "", "version": "", "image": "", "instance": ""}
    announced = {"version": ("version", "version"), "image": ("image", "id"), "test machine": ("instance", "instance")}
    try:
        for line in proc.stderr:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            seen["build_id"] = event.get("build_id") or seen["build_id"]
            if event.get("event") in announced:
                name, field = announced[event["event"]]
                seen[name] = event[field]
            if until(event):
                time.sleep(delay)
                break
        else:
            raise AssertionError(f"the bake ended before the kill: {proc.wait()}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    assert seen["build_id"] and seen["version"], seen
    return seen


def build_ids(output: str) -> list[str]:
    """Build ids a bake announced (terminal: 'build <id>'; JSON: "build_id": "<id>")."""
    return sorted(
        set(re.findall(r"build (\d{8}T\d{6}-[0-9a-f]+)", output))
        | set(re.findall(r'"build_id": "(\d{8}T\d{6}-[0-9a-f]+)"', output))
    )


def left_behind(engine, output: str) -> list[str]:
    """Containers still there of the builds ``output`` announced (there must be one)."""
    ids = build_ids(output)
    assert ids, f"no build id announced in: {output[:500]}"
    return [row["Id"] for bid in ids for row in engine.containers(f"kiln.build-id={bid}")]


def image_repo(role: str) -> str:
    """Where this test session's bakes put ``role`` (conftest sets KILN_IMAGE_PREFIX)."""
    from kiln.controller.engine import image_prefix

    return f"{image_prefix()}/{role}"
