"""The installed packages (name -> version), read-only, for the image's inventory."""

from __future__ import annotations

import shutil
import subprocess
from typing import Dict


def installed_packages() -> Dict[str, str]:
    if shutil.which("dpkg-query"):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"], capture_output=True, text=True
        ).stdout
        return {
            name: version
            for status, name, version in (line.split("\t") for line in out.splitlines() if line.count("\t") == 2)
            if status.startswith("ii")
        }
    if shutil.which("rpm"):
        out = subprocess.run(
            ["rpm", "-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n"], capture_output=True, text=True
        ).stdout
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return {}
