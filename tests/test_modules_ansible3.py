"""The Ansible modules real roles use beyond the basics (hostname, apt_repository, get_url, wait_for, systemd's masked
and daemon_reload), each in a real container: check mode changes nothing, the first apply changes, the second is ok.
Their end states against ansible-core's are compared in tests/test_ansible_parity.py (group kiln_mods)."""

from __future__ import annotations

import time

import pytest

from tests.machines import converge, run_step, steps_of

pytestmark = pytest.mark.slow

PAYLOAD_SHA256 = "b4834fe819d26b4acae8c2252a32406f7741223e85ca9c2bc4c7e5b2641560fa"  # of "kiln payload\n"


def test_hostname_in_a_file_strategy_converges(box):
    box.sh("rm -f /etc/HOSTNAME")
    try:
        args = {"name": "kt-host.example.org", "use": "sles"}
        done = converge(box, "hostname", args, "cat /etc/HOSTNAME")
        assert done["after"] == "kt-host.example.org\n"
        said = [
            "named.name == 'kt-host.example.org'",
            "named.ansible_facts.ansible_hostname == 'kt-host'",
            # as Ansible files a module's facts: the variable keeps the prefix, the namespace drops it
            "ansible_hostname == 'kt-host' and ansible_facts.hostname == 'kt-host'",
            "'ansible_hostname' not in ansible_facts",
        ]
        steps = steps_of(
            box.apply(
                [
                    {"module": "hostname", "args": args, "register": "named"},
                    {"module": "assert", "args": {"that": said}},
                ]
            )
        )
        assert [s["status"] for s in steps] == ["ok", "ok"], steps
    finally:
        box.sh("rm -f /etc/HOSTNAME")


def test_hostname_with_systemd_fails_where_hostnamectl_cannot_reach_the_bus(box):
    if box.sh("test -S /run/dbus/system_bus_socket && echo bus", check=False).strip():
        pytest.skip("this box has D-Bus: hostnamectl works here")
    step = run_step(box, "hostname", {"name": "kt-host"})
    assert step["status"] == "failed" and "Failed to connect to bus" in step["msg"], step


def test_apt_repository_writes_ansibles_file_and_removes_it(box):
    repo = "deb http://deb.debian.org/debian bookworm-backports main"
    listing = "ls /etc/apt/sources.list.d; cat /etc/apt/sources.list.d/*.list 2>/dev/null"
    try:
        done = converge(box, "apt_repository", {"repo": repo, "update_cache": False}, listing)
        assert done["after"] == f"deb_debian_org_debian.list\n{repo}\n"
        assert box.sh("stat -c %a /etc/apt/sources.list.d/deb_debian_org_debian.list").strip() == "644"
        removed = converge(box, "apt_repository", {"repo": repo, "state": "absent", "update_cache": False}, listing)
        assert removed["after"] == ""
    finally:
        box.sh("rm -f /etc/apt/sources.list.d/deb_debian_org_debian.list")


def test_get_url_with_a_checksum_converges_and_refuses_a_mismatch(box):
    box.sh("mkdir -p /srv/kt && printf 'kiln payload\\n' > /srv/kt/payload.txt && rm -f /opt/kt-payload.txt")
    try:
        args = {
            "url": "file:///srv/kt/payload.txt",
            "dest": "/opt/kt-payload.txt",
            "checksum": f"sha256:{PAYLOAD_SHA256}",
        }
        done = converge(
            box, "get_url", dict(args, mode="0640"), "stat -c %a /opt/kt-payload.txt; cat /opt/kt-payload.txt"
        )
        assert done["after"] == "640\nkiln payload\n"
        wrong = run_step(box, "get_url", dict(args, dest="/opt/kt-wrong.txt", checksum="sha256:" + "0" * 64))
        assert wrong["status"] == "failed" and "did not match" in wrong["msg"], wrong
        assert box.sh("test -e /opt/kt-wrong.txt && echo there", check=False).strip() == ""
    finally:
        box.sh("rm -rf /srv/kt /opt/kt-payload.txt /opt/kt-wrong.txt")


def test_wait_for_finds_skips_in_check_mode_and_times_out_within_its_bound(box):
    box.sh("printf 'state: ready 42\\n' > /tmp/kt-ready")
    steps = steps_of(
        box.apply(
            [
                {"module": "wait_for", "args": {"port": 22, "timeout": 5}},
                {
                    "module": "wait_for",
                    "args": {"path": "/tmp/kt-ready", "search_regex": r"ready (\d+)"},
                    "register": "r",
                },
                {"module": "assert", "args": {"that": ["r.match_groups == ['42']", "not r.changed"]}},
            ]
        )
    )
    assert [s["status"] for s in steps] == ["ok", "ok", "ok"], steps
    checked = run_step(box, "wait_for", {"port": 9, "timeout": 30}, check=True)
    assert checked["status"] == "skipped", checked
    started = time.monotonic()
    late = run_step(box, "wait_for", {"port": 9, "timeout": 2})
    assert late["status"] == "failed" and late["msg"] == "Timeout when waiting for 127.0.0.1:9", late
    assert time.monotonic() - started < 15


def test_systemd_masks_and_reloads_without_a_name(box):
    try:
        done = converge(box, "service", {"name": "cron", "masked": True}, "systemctl is-enabled cron.service")
        assert done["after"].strip() == "masked"
        reload = run_step(box, "service", {"daemon_reload": True})
        assert reload["status"] == "ok", reload
    finally:
        box.sh("systemctl unmask cron.service")


def test_deb822_repository_converges_and_goes(box):
    args = {
        "name": "KT Backports",
        "uris": "http://deb.debian.org/debian",
        "suites": "bookworm-backports",
        "components": ["main"],
        "signed_by": "/usr/share/keyrings/debian-archive-keyring.gpg",
    }
    probe = "cat /etc/apt/sources.list.d/kt-backports.sources 2>/dev/null"
    try:
        done = converge(box, "deb822_repository", args, probe)
        assert done["after"] == (
            "Components: main\nX-Repolib-Name: KT Backports\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            "Suites: bookworm-backports\nTypes: deb\nURIs: http://deb.debian.org/debian\n"
        )
        gone = converge(box, "deb822_repository", {"name": "KT Backports", "state": "absent"}, probe)
        assert gone["after"] == ""
    finally:
        box.sh("rm -f /etc/apt/sources.list.d/kt-backports.sources")
