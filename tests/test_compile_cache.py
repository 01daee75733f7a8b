"""The compile cache (converge's and the bake's): read back while the role is unchanged, never holding secrets."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kiln.controller.stepfiles.compile_cache import CompileCache, compile_cached
from tests.playbooks import make_playbooks

SECRET = "Zq-cache-s3cret-41"

NO_LOG_ROLE = {
    "steps.yml": (
        "- name: credentials\n"
        '  copy: {content: "password={{ db_password }}\\n", dest: /etc/kiln-app.conf, mode: "0600"}\n'
        "  no_log: true\n"
    )
}
PLAIN_ROLE = {"steps.yml": '- name: marker\n  copy: {content: "x\\n", dest: /etc/kiln-marker, mode: "0644"}\n'}


def settled(root: Path) -> None:
    """Every file older than the cache's settling window (a file written just now is not trusted whole)."""
    past = time.time() - 10
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), (past, past))


def compile_twice(tmp_path: Path, role: str, files: dict, overrides: dict) -> tuple[bool, bool, Path]:
    playbooks = make_playbooks(tmp_path, files, role=role)
    settled(playbooks)
    cache = CompileCache(tmp_path / "builds" / "cache" / "compile")
    hits = []
    for _ in range(2):
        _, compiled, hit = compile_cached(
            cache, playbooks, role, "local", overrides, None, None, False, False, summarize=lambda config: None
        )
        hits.append(hit)
    return hits[0], hits[1], cache.directory


def test_a_role_with_secrets_is_never_written_to_the_cache(tmp_path):
    first, second, directory = compile_twice(tmp_path, "secrets", NO_LOG_ROLE, {"db_password": SECRET})
    assert not first and not second, "a role using no_log values is compiled every time"
    for path in directory.rglob("*") if directory.exists() else []:
        assert SECRET.encode() not in path.read_bytes(), f"{path} holds the secret"


def test_an_unchanged_role_is_read_back_and_a_changed_one_compiled_again(tmp_path):
    first, second, directory = compile_twice(tmp_path, "plain", PLAIN_ROLE, {})
    assert (first, second) == (False, True)
    steps = tmp_path / "playbooks" / "roles" / "plain" / "steps.yml"
    steps.write_text(PLAIN_ROLE["steps.yml"].replace("x\\n", "y\\n"))
    settled(tmp_path / "playbooks")
    cache = CompileCache(directory)
    _, compiled, hit = compile_cached(
        cache, tmp_path / "playbooks", "plain", "local", {}, None, None, False, False, summarize=lambda config: None
    )
    assert not hit and compiled.steps[0]["args"]["content"] == "y\n", "a changed step file is compiled again"
