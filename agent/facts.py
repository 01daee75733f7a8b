"""Read-only facts about the box: what step files see under ``facts.``."""

from __future__ import annotations

import os
import platform
import shutil
import socket
from typing import Any, Dict


def os_release(path: str = "/etc/os-release") -> Dict[str, str]:
    values: Dict[str, str] = {}
    try:
        with open(path) as handle:
            for line in handle:
                if "=" in line:
                    key, _, value = line.strip().partition("=")
                    values[key] = value.strip().strip('"')
    except OSError:
        pass
    return values


def os_family(release: Dict[str, str]) -> str:
    ids = [release.get("ID", "")] + release.get("ID_LIKE", "").split()
    for family, members in (("debian", {"debian", "ubuntu"}),
                            ("redhat", {"rhel", "fedora", "centos", "amzn", "rocky", "almalinux"}),
                            ("suse", {"suse", "opensuse", "sles"}), ("alpine", {"alpine"}),
                            ("arch", {"arch"})):
        if members.intersection(ids):
            return family
    return ids[0] or "unknown"


def package_manager() -> str:
    for name in ("apt-get", "dnf", "yum", "zypper", "apk", "pacman"):
        if shutil.which(name):
            return "apt" if name == "apt-get" else name
    return "unknown"


def memory_mb() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def gather() -> Dict[str, Any]:
    release = os_release()
    return {
        "os_family": os_family(release),
        "distribution": release.get("ID", "unknown"),
        "distribution_version": release.get("VERSION_ID", ""),
        "distribution_codename": release.get("VERSION_CODENAME", ""),
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "memory_mb": memory_mb(),
        "hostname": socket.gethostname(),
        "pkg_mgr": package_manager(),
        "init": "systemd" if os.path.isdir("/run/systemd/system") else "other",
        "python_version": platform.python_version(),
    }
