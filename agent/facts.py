"""Read-only facts about the box: what step files see under ``facts.``."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import sys
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
    for family, members in (
        ("debian", {"debian", "ubuntu"}),
        ("redhat", {"rhel", "fedora", "centos", "amzn", "rocky", "almalinux"}),
        ("suse", {"suse", "opensuse", "sles"}),
        ("alpine", {"alpine"}),
        ("arch", {"arch"}),
    ):
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
    facts: Dict[str, Any] = {
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
    facts["ansible"] = ansible_facts(facts)
    return facts


# --- Ansible's names and values (``ansible_facts`` and ``ansible_<name>``) -----------------------
DISTRIBUTION_NAMES = {
    "debian": "Debian",
    "ubuntu": "Ubuntu",
    "rhel": "RedHat",
    "centos": "CentOS",
    "fedora": "Fedora",
    "amzn": "Amazon",
    "rocky": "Rocky",
    "almalinux": "AlmaLinux",
    "ol": "OracleLinux",
    "alpine": "Alpine",
    "arch": "Archlinux",
    "opensuse-leap": "openSUSE Leap",
    "opensuse-tumbleweed": "openSUSE Tumbleweed",
    "sles": "SLES",
    "raspbian": "Raspbian",
    "linuxmint": "Linux Mint",
    "devuan": "Devuan",
}
OS_FAMILIES = {
    "RedHat": {"RedHat", "CentOS", "Fedora", "Amazon", "Rocky", "AlmaLinux", "OracleLinux"},
    "Debian": {"Debian", "Ubuntu", "Raspbian", "Linux Mint", "Devuan"},
    "Suse": {"SLES", "openSUSE Leap", "openSUSE Tumbleweed"},
    "Archlinux": {"Archlinux"},
    "Alpine": {"Alpine"},
}
PACKAGE_MANAGERS = (
    ("apt-get", "apt"),
    ("dnf", "dnf"),
    ("yum", "yum"),
    ("zypper", "zypper"),
    ("apk", "apk"),
    ("pacman", "pacman"),
)


def distribution_version(release: Dict[str, str], name: str) -> str:
    """Debian's point release lives in /etc/debian_version (Ansible reads it there, as ``distro`` does)."""
    version = release.get("VERSION_ID", "")
    if name == "Debian":
        try:
            with open("/etc/debian_version") as handle:
                found = re.match(r"(\d+\.\d+)", handle.read().strip())
            if found and found.group(1).split(".")[0] == version.split(".")[0]:
                return found.group(1)
        except OSError:
            pass
    return version


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def service_manager() -> str:
    if _read("/proc/1/comm").strip() == "systemd" or os.path.isdir("/run/systemd/system"):
        return "systemd"
    return _read("/proc/1/comm").strip() or "service"


def processors() -> Dict[str, Any]:
    """Counted the way Ansible's Linux hardware facts count /proc/cpuinfo."""
    sockets: Dict[str, int] = {}
    cores: Dict[str, int] = {}
    models: list = []
    count = 0
    physical = "0"
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            count += 1
            models += [str(count - 1)]
        elif key in ("model name", "Processor", "vendor_id", "cpu", "Vendor"):
            models.append(value)
        elif key == "physical id":
            physical = value
            sockets.setdefault(physical, 0)
        elif key == "siblings":
            cores[physical] = int(value)
        elif key == "cpu cores":
            sockets[physical] = int(value)
    count = count or (os.cpu_count() or 1)
    if sockets:
        socket_count = len(sockets)
        core_count = list(sockets.values())[0] or 1
        threads = (list(cores.values())[0] // core_count) if cores else 1
        vcpus = threads * core_count * socket_count
    else:
        socket_count, core_count, threads, vcpus = count, 1, 1, count
    return {
        "processor": models,
        "processor_count": socket_count,
        "processor_cores": core_count,
        "processor_threads_per_core": threads,
        "processor_vcpus": vcpus,
        "processor_nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else count,
    }


def memory() -> Dict[str, int]:
    values: Dict[str, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            values[key] = int(rest.split()[0]) // 1024
    return {
        "memtotal_mb": values.get("MemTotal", 0),
        "memfree_mb": values.get("MemFree", 0),
        "swaptotal_mb": values.get("SwapTotal", 0),
        "swapfree_mb": values.get("SwapFree", 0),
    }


def _ipv4_of(interface: str) -> Dict[str, str]:
    """Address and netmask of ``interface`` (the SIOCGIFADDR/SIOCGIFNETMASK ioctls: no `ip` needed)."""
    import fcntl
    import struct

    out: Dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = struct.pack("256s", interface.encode()[:15])
        for key, request in (("address", 0x8915), ("netmask", 0x891B), ("broadcast", 0x8919)):
            try:
                out[key] = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), request, packed)[20:24])
            except OSError:
                pass
    return out


def default_ipv4() -> Dict[str, Any]:
    """The interface of the default route, as Ansible's ``default_ipv4`` (from /proc/net/route)."""
    for line in _read("/proc/net/route").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            interface, gateway = fields[0], socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
            facts: Dict[str, Any] = {"interface": interface, "alias": interface, "gateway": gateway}
            facts.update(_ipv4_of(interface))
            if "address" in facts and "netmask" in facts:
                address = int.from_bytes(socket.inet_aton(facts["address"]), "big")
                mask = int.from_bytes(socket.inet_aton(facts["netmask"]), "big")
                facts["network"] = socket.inet_ntoa((address & mask).to_bytes(4, "big"))
                facts["prefix"] = str(bin(mask).count("1"))
            mac = _read(f"/sys/class/net/{interface}/address").strip()
            if mac:
                facts["macaddress"] = mac
            mtu = _read(f"/sys/class/net/{interface}/mtu").strip()
            if mtu.isdigit():
                facts["mtu"] = int(mtu)
            facts["type"] = {"1": "ether", "772": "loopback"}.get(
                _read(f"/sys/class/net/{interface}/type").strip(), "unknown"
            )
            return facts
    return {}


def selinux_facts() -> Dict[str, Any]:
    """``selinux`` and ``selinux_python_present`` as Ansible's setup reads them: through libselinux
    (its ctypes binding), "disabled" where the library says so, as on Debian."""
    import ctypes

    try:
        lib = ctypes.CDLL("libselinux.so.1", use_errno=True)
    except OSError:
        return {"selinux": {"status": "Missing selinux Python library"}, "selinux_python_present": False}
    if lib.is_selinux_enabled() != 1:
        return {"selinux": {"status": "disabled"}, "selinux_python_present": True}
    config = dict(
        line.split("=", 1) for line in _read("/etc/selinux/config").splitlines() if "=" in line and line[:1] != "#"
    )
    modes = {1: "enforcing", 0: "permissive"}
    return {
        "selinux": {
            "status": "enabled",
            "policyvers": lib.security_policyvers(),
            "config_mode": config.get("SELINUX", "unknown").strip(),
            "mode": modes.get(lib.security_getenforce(), "unknown"),
            "type": config.get("SELINUXTYPE", "unknown").strip(),
        },
        "selinux_python_present": True,
    }


def python_facts() -> Dict[str, Any]:
    info = sys.version_info
    return {
        "version": {
            "major": info.major,
            "minor": info.minor,
            "micro": info.micro,
            "releaselevel": info.releaselevel,
            "serial": info.serial,
        },
        "version_info": [info.major, info.minor, info.micro, info.releaselevel, info.serial],
        "executable": sys.executable,
        "has_sslcontext": True,
        "type": sys.implementation.name,
    }


def ansible_facts(kiln: Dict[str, Any]) -> Dict[str, Any]:
    """What Ansible's ``setup`` module reports under these names (``ansible_facts.<name>``)."""
    release = os_release()
    distribution = DISTRIBUTION_NAMES.get(release.get("ID", ""), release.get("ID", "NA").capitalize())
    version = distribution_version(release, distribution)
    family = next((f for f, members in OS_FAMILIES.items() if distribution in members), distribution)
    node = platform.node()
    fqdn = socket.getfqdn()
    facts: Dict[str, Any] = {
        "os_family": family,
        "distribution": distribution,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0] or "NA",
        "distribution_release": release.get("VERSION_CODENAME") or "NA",
        "architecture": platform.machine(),
        "machine": platform.machine(),
        "system": platform.system(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "hostname": node.split(".")[0],
        "nodename": node,
        "fqdn": fqdn,
        "domain": ".".join(fqdn.split(".")[1:]),
        "service_mgr": service_manager(),
        "pkg_mgr": kiln["pkg_mgr"] if kiln["pkg_mgr"] != "unknown" else "unknown",
        "python": python_facts(),
        "python_version": platform.python_version(),
        "default_ipv4": default_ipv4(),
        "machine_id": _read("/etc/machine-id").strip(),
        "userspace_bits": str(struct_bits()),
        "os_release": release,
    }
    if "." in version:
        facts["distribution_minor_version"] = version.split(".")[1]
    facts.update(processors())
    facts.update(memory())
    facts.update(selinux_facts())
    facts.pop("os_release")
    return facts


def struct_bits() -> int:
    import struct

    return struct.calcsize("P") * 8


def variables(kiln: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """The names Ansible puts in a play's scope: ``ansible_facts`` and each fact as ``ansible_<name>``."""
    gathered = kiln.get("ansible") or ansible_facts(kiln)
    names: Dict[str, Any] = {f"ansible_{name}": value for name, value in gathered.items()}
    names["ansible_facts"] = dict(gathered)
    names["ansible_check_mode"] = check_mode
    return names
