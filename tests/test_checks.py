"""Verify checks run by the real agent in a real container: each check passing and failing,
and `observed` saying what was actually seen."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow

PORT = 8766


@pytest.fixture(scope="module")
def checked_box(box):
    box.put(
        {
            "/srv/chk/www/index.html": (b"<h1>kiln web</h1>\n", 0o644),
            "/srv/chk/www/sub/index.html": (b"sub\n", 0o644),
            "/srv/chk/f": (b"hello kiln\n", 0o640),
        }
    )
    box.sh("chown nobody:nogroup /srv/chk/f && ln -sfn /srv/chk/f /srv/chk/link && groupadd -f -g 3301 kt-chk")
    box.sh(
        f"cd /srv/chk/www && setsid nohup python3 -m http.server {PORT} --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null &"
    )
    for _ in range(50):
        if f":{PORT:04X} " in box.sh("cat /proc/net/tcp"):
            break
        time.sleep(0.1)
    yield box
    box.sh(f"pkill -f 'http[.]server {PORT}' || true", check=False)


URL = f"http://127.0.0.1:{PORT}"

CASES = [
    # package
    ("package-installed", "package", "bash", "passed", "bash 5."),
    ("package-missing", "package", {"name": "kt-nopkg"}, "failed", "kt-nopkg not installed"),
    ("package-wanted-absent", "package", {"name": "bash", "installed": False}, "failed", "bash 5."),
    ("package-absent", "package", {"name": "kt-nopkg", "installed": False}, "passed", "not installed"),
    ("package-version", "package", {"name": "bash", "versions": ["5.2*"]}, "passed", "installed"),
    ("package-wrong-version", "package", {"name": "bash", "versions": ["0.1*"]}, "failed", "not one of 0.1*"),
    # service
    ("service-running", "service", {"name": "ssh", "enabled": True}, "passed", "ssh: active, enabled"),
    ("service-wanted-stopped", "service", {"name": "ssh", "running": False}, "failed", "is active (wanted stopped)"),
    ("service-wanted-disabled", "service", {"name": "ssh", "enabled": False}, "failed", "is enabled (wanted disabled)"),
    ("service-missing", "service", "kt-nosuch", "failed", "no such unit"),
    ("service-missing-ok", "service", {"name": "kt-nosuch", "running": False}, "passed", "no such unit"),
    # port
    ("port-int", "port", 22, "passed", "listening on 0.0.0.0"),
    ("port-tcp6", "port", {"port": "tcp6:22", "ip": "::"}, "passed", "tcp6 port 22 listening on ::"),
    ("port-ip", "port", {"port": f"tcp:{PORT}", "ip": "127.0.0.1"}, "passed", "127.0.0.1"),
    ("port-wrong-ip", "port", {"port": f"tcp:{PORT}", "ip": "0.0.0.0"}, "failed", "not on 0.0.0.0"),
    ("port-closed", "port", 9, "failed", "nothing listening on tcp/tcp6 port 9"),
    ("port-closed-ok", "port", {"port": 9, "listening": False}, "passed", "nothing listening"),
    ("port-wanted-closed", "port", {"port": 22, "listening": False}, "failed", "listening on"),
    ("port-bad", "port", "foo:1", "failed", "port must be"),
    # http
    ("http-body", "http", {"url": f"{URL}/", "body": ["kiln web"]}, "passed", "status 200, body contained 'kiln web'"),
    (
        "http-body-missing",
        "http",
        {"url": f"{URL}/", "body": ["nope"]},
        "failed",
        "status 200, body did not contain 'nope'",
    ),
    ("http-404", "http", f"{URL}/missing", "failed", "status 404 (wanted 200)"),
    ("http-404-wanted", "http", {"url": f"{URL}/missing", "status": 404}, "passed", "status 404"),
    (
        "http-no-follow",
        "http",
        {"url": f"{URL}/sub", "status": 301, "no_follow_redirects": True},
        "passed",
        "status 301",
    ),
    ("http-follow", "http", {"url": f"{URL}/sub", "body": ["sub"]}, "passed", "status 200"),
    ("http-refused", "http", "http://127.0.0.1:9/", "failed", "no response from http://127.0.0.1:9/"),
    # command
    ("command-ok", "command", "true", "passed", "exit 0"),
    ("command-exit", "command", "echo boom >&2; exit 3", "failed", "exit 3 (wanted 0): boom"),
    (
        "command-output",
        "command",
        {"cmd": "echo hi; echo err >&2", "stdout": ["hi"], "stderr": ["err"]},
        "passed",
        "exit 0",
    ),
    (
        "command-output-missing",
        "command",
        {"cmd": "echo hi", "stdout": ["bye"]},
        "failed",
        "stdout did not contain 'bye'",
    ),
    ("command-exit-wanted", "command", {"cmd": "exit 2", "exit_status": 2}, "passed", "exit 2"),
    # file
    (
        "file-all",
        "file",
        {
            "path": "/srv/chk/f",
            "filetype": "file",
            "mode": "0640",
            "owner": "nobody",
            "group": "nogroup",
            "contains": ["kiln"],
        },
        "passed",
        "/srv/chk/f: file 0640 nobody:nogroup",
    ),
    ("file-missing", "file", "/srv/chk/none", "failed", "/srv/chk/none does not exist"),
    ("file-absent-ok", "file", {"path": "/srv/chk/none", "exists": False}, "passed", "does not exist"),
    ("file-wanted-absent", "file", {"path": "/srv/chk/f", "exists": False}, "failed", "wanted absent"),
    ("file-type", "file", {"path": "/srv/chk/f", "filetype": "directory"}, "failed", "is a file, not a directory"),
    ("file-mode", "file", {"path": "/srv/chk/f", "mode": "0600"}, "failed", "mode 0640 (wanted 0600)"),
    ("file-owner", "file", {"path": "/srv/chk/f", "owner": "root"}, "failed", "owner nobody (wanted root)"),
    ("file-contains", "file", {"path": "/srv/chk/f", "contains": ["nginx"]}, "failed", "does not contain 'nginx'"),
    (
        "file-symlink",
        "file",
        {"path": "/srv/chk/link", "filetype": "symlink", "linked_to": "/srv/chk/f"},
        "passed",
        "symlink 0777 root:root -> /srv/chk/f",
    ),
    ("file-dir", "file", {"path": "/srv/chk/www", "filetype": "directory"}, "passed", "directory"),
    # user
    (
        "user-root",
        "user",
        {"name": "root", "uid": 0, "home": "/root", "shell": "/bin/bash", "groups": ["root"]},
        "passed",
        "user root: uid 0",
    ),
    ("user-missing", "user", "kt-nouser", "failed", "user kt-nouser does not exist"),
    ("user-absent-ok", "user", {"name": "kt-nouser", "exists": False}, "passed", "does not exist"),
    ("user-groups", "user", {"name": "nobody", "groups": ["kt-chk"]}, "failed", "not in group(s) kt-chk"),
    ("user-uid", "user", {"name": "root", "uid": 5}, "failed", "uid 0 (wanted 5)"),
    # group
    ("group-gid", "group", {"name": "kt-chk", "gid": 3301}, "passed", "group kt-chk: gid 3301"),
    ("group-wrong-gid", "group", {"name": "kt-chk", "gid": 5}, "failed", "gid 3301 (wanted gid 5)"),
    ("group-missing", "group", "kt-nogroup", "failed", "group kt-nogroup does not exist"),
    ("group-absent-ok", "group", {"name": "kt-nogroup", "exists": False}, "passed", "does not exist"),
    # kernel_param
    ("kernel-param", "kernel_param", {"name": "kernel.ostype", "value": "Linux"}, "passed", "kernel.ostype = Linux"),
    (
        "kernel-param-wrong",
        "kernel_param",
        {"name": "kernel.ostype", "value": "BSD"},
        "failed",
        "kernel.ostype = Linux (wanted BSD)",
    ),
    (
        "kernel-param-missing",
        "kernel_param",
        {"name": "kernel.kt_nope", "value": "1"},
        "failed",
        "no such kernel parameter",
    ),
    # the harness
    ("unknown-check", "kt_nosuch", {}, "failed", "unknown check 'kt_nosuch'"),
    ("bad-args", "file", {"path": "/srv/chk/f", "colour": "red"}, "failed", "unknown argument 'colour'"),
]


@pytest.fixture(scope="module")
def results(checked_box):
    """All cases in one verify run (one agent start), by case id."""
    entries = [{"check": kind, "args": args, "name": case_id} for case_id, kind, args, _, _ in CASES]
    events = checked_box.verify(entries)
    checks = [e for e in events if e["event"] == "check"]
    summary = next(e for e in events if e["event"] == "summary")
    assert len(checks) == len(CASES)
    return {e["name"]: e for e in checks}, summary


@pytest.mark.parametrize("case_id, kind, args, status, observed", CASES, ids=[c[0] for c in CASES])
def test_check(results, case_id, kind, args, status, observed):
    event = results[0][case_id]
    assert event["status"] == status, event
    assert observed in event["observed"], event


def test_summary_counts(results):
    summary = results[1]
    wanted_failed = sum(1 for c in CASES if c[3] == "failed")
    assert summary["failed"] == wanted_failed
    assert summary["passed"] == len(CASES) - wanted_failed


def test_all_passing_run_exits_zero(checked_box):
    events = checked_box.verify([{"check": "file", "args": "/etc/passwd"}, {"check": "port", "args": 22}])
    assert [e["status"] for e in events if e["event"] == "check"] == ["passed", "passed"]
