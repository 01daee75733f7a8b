"""What a bake reports and what its image holds: RECAP counts, the machine's hygiene."""

from __future__ import annotations

import json

import pytest

from tests.playbooks import invoke, left_behind, make_playbooks

pytestmark = pytest.mark.slow


def recap_of(output: str) -> dict:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return next(e for e in lines if e.get("event") == "recap")


def test_recap_counts_the_failed_step(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": '- name: fine\n  command: {cmd: "true"}\n  changed_when: false\n'
            '- name: breaks\n  shell: {cmd: "exit 3"}\n',
        },
    )
    proc = invoke(tmp_path, "bake", "--role", "tiny", "--json", playbooks=playbooks)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    recap = recap_of(proc.stdout + proc.stderr)
    assert recap["failed"] == 1 and recap["ok"] == 1 and recap["result"] == "failed", recap
    assert not left_behind(engine, proc.stdout + proc.stderr)


def test_the_image_keeps_no_temporary_files_dotfiles_included(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path,
        {
            "steps.yml": "- name: leave litter\n"
            '  shell: {cmd: "touch /tmp/visible /tmp/.hidden /var/tmp/.dot && mkdir -p /var/tmp/.cache/x",'
            " creates: /tmp/.hidden}\n",
        },
    )
    proc = invoke(tmp_path, "bake", "--role", "tiny", playbooks=playbooks)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = json.loads((tmp_path / "builds" / "manifest.json").read_text())[-1]
    listing = engine.run(
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        entry["image_id"],
        "ls",
        "-A",
        "/tmp",
        "/var/tmp",
    )
    for litter in ("visible", ".hidden", ".dot", ".cache"):
        assert litter not in listing, listing
