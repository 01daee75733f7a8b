"""The agent modules Ansible roles use that kiln lacked (timezone, service_facts, package_facts, stat, ...),
each applied in a real container: check mode changes nothing, the first apply changes, the second is ok. Facts
and results that ansible-core can produce are compared with its own module's output on the same container."""

from __future__ import annotations

import pytest

from tests.machines import converge, run_step

pytestmark = pytest.mark.slow

ZONE_PROBE = "readlink /etc/localtime; cat /etc/timezone"


def test_timezone_converges_and_restores(box):
    box.sh("ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime && echo Etc/UTC > /etc/timezone")
    try:
        done = converge(box, "timezone", {"name": "Europe/Paris"}, ZONE_PROBE)
        assert done["after"] == "/usr/share/zoneinfo/Europe/Paris\nEurope/Paris\n"
        assert box.sh("date +%Z").strip() in ("CET", "CEST")
        unknown = run_step(box, "timezone", {"name": "Mars/Olympus"})
        assert unknown["status"] == "failed" and "Mars/Olympus" in unknown["msg"], unknown
    finally:
        box.sh("ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime && echo Etc/UTC > /etc/timezone")
