"""Small pieces of the AWS provider: tags, errors, console fingerprints, user data, the data plane.

The **data plane** is what turns an EC2 instance into a machine kiln can reach: on real
AWS the cloud itself (:class:`CloudDataPlane` only finds the controller's address for the
security group); in the sandbox (controller/sandbox.py) local containers. The provider
calls the same hooks on both, so the AWS code path does not branch on the sandbox.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import socket
import urllib.request
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any, Protocol

from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError

from controller.ownership import BuildClaim
from controller.ssh import fingerprint_of

TEMPORARY = "kiln:temporary"
BUILD_ID = "kiln:build-id"
EXPIRES = "kiln:expires"
ROLE = "kiln:role"
VERSION = "kiln:version"
ARCH = "kiln:arch"
DEFAULT_ARCH = "x86_64"  # the architecture ``/kiln/<role>/latest`` names; the others have ``latest/<arch>``

# Errors that mean "this instance type cannot be had here now": try the next one.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "Unsupported",
        "InstanceLimitExceeded",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "UnfulfillableCapacity",
        "InsufficientCapacityOnOutpost",
    }
)


def kiln_version() -> str:
    try:
        from importlib.metadata import version

        return version("kiln")
    except Exception:  # not installed (a source checkout)
        return "0.1.0"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def latest_parameter(role: str, arch: str = "") -> str:
    """``/kiln/<role>/latest`` for x86_64 (as it always was), ``/kiln/<role>/latest/<arch>`` for the others."""
    return f"/kiln/{role}/latest" + ("" if arch in ("", DEFAULT_ARCH) else f"/{arch}")


def versions_path(role: str) -> str:
    return f"/kiln/{role}/versions"


def lock_parameter(role: str) -> str:
    return f"/kiln/{role}/lock"


def publishing_parameter(role: str) -> str:
    """The short-lived mutex around moving ``latest``: one publish of a role compares and moves at a time."""
    return f"/kiln/{role}/publishing"


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": str(v)[:256]} for k, v in tags.items()]


def tag_spec(resource_type: str, tags: dict[str, str]) -> dict[str, Any]:
    return {"ResourceType": resource_type, "Tags": tag_list(tags)}


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def unimplemented(exc: BaseException) -> bool:
    """The endpoint does not implement the call: moto raises NotImplementedError in-process and
    answers HTTP 500 (unparseable) as a server; a real endpoint may say NotImplemented."""
    if isinstance(exc, (NotImplementedError, ResponseParserError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in ("NotImplemented", "InvalidAction", "UnsupportedOperation") or status == 501
    return False


def expired(tags: dict[str, str], now: dt.datetime) -> dt.datetime | None:
    """The resource's ``kiln:expires`` if it has passed, else None (missing or unreadable: None)."""
    try:
        expires = dt.datetime.fromisoformat(tags.get(EXPIRES, "").replace("Z", "+00:00"))
    except ValueError:
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    return expires if expires <= now else None


# --- host keys printed by cloud-init ----------------------------------------------------
FINGERPRINTS_BEGIN = "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
FINGERPRINTS_END = "-----END SSH HOST KEY FINGERPRINTS-----"
KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
KEYS_END = "-----END SSH HOST KEY KEYS-----"
# cloud-init writes through the console with prefixes such as "ec2: " or a kernel timestamp.
_PREFIX = re.compile(r"^(?:\[\s*[\d.]+\]\s*)?(?:[A-Za-z0-9_.-]+:\s+)?(?=\S)")
_FP_LINE = re.compile(r"^\d+\s+(SHA256:[A-Za-z0-9+/]+)=*\s")
_KEY_LINE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|ssh-dss)\s+([A-Za-z0-9+/]+=*)")


def _last_block(lines: list[str], begin: str, end: str) -> list[str]:
    block: list[str] = []
    current: list[str] | None = None
    for line in lines:
        if begin in line:
            current = []
        elif end in line:
            if current is not None:
                block = current
            current = None
        elif current is not None:
            current.append(line.strip())
    return block


def _match(pattern: re.Pattern[str], line: str) -> re.Match[str] | None:
    return pattern.match(line) or pattern.match(_PREFIX.sub("", line, count=1))


def console_fingerprints(console: str) -> set[str]:
    """SHA256 host key fingerprints from cloud-init's blocks on the console (the last boot's).

    Reads the ``SSH HOST KEY FINGERPRINTS`` block (``256 SHA256:xxx root@host (ED25519)``)
    and the ``SSH HOST KEY KEYS`` block (full public keys), whichever were printed.
    """
    lines = console.replace("\r", "").split("\n")
    found: set[str] = set()
    for line in _last_block(lines, FINGERPRINTS_BEGIN, FINGERPRINTS_END):
        if m := _match(_FP_LINE, line):
            found.add(m.group(1))
    for line in _last_block(lines, KEYS_BEGIN, KEYS_END):
        if m := _match(_KEY_LINE, line):
            try:
                found.add(fingerprint_of(base64.b64decode(m.group(2))))
            except (binascii.Error, ValueError):
                continue
    return found


def console_block(host_public_keys: list[str], hostname: str) -> str:
    """What cloud-init prints for these host keys (used by the sandbox, and by tests)."""
    kinds = {"ssh-ed25519": ("256", "ED25519"), "ssh-rsa": ("3072", "RSA"), "ecdsa-sha2-nistp256": ("256", "ECDSA")}
    fps, keys = [], []
    for public in host_public_keys:
        kind, blob = public.split()[:2]
        bits, label = kinds.get(kind, ("256", kind.upper()))
        fps.append(f"ec2: {bits} {fingerprint_of(base64.b64decode(blob))} root@{hostname} ({label})")
        keys.append(f"{kind} {blob} root@{hostname}")
    return "\n".join(
        [
            "ec2: ",
            "ec2: " + FINGERPRINTS_BEGIN,
            *fps,
            "ec2: " + FINGERPRINTS_END,
            "ec2: ",
            KEYS_BEGIN,
            *keys,
            KEYS_END,
            "",
        ]
    )


# --- user data -------------------------------------------------------------------------
def deadline_cloud_config(expires_epoch: int) -> str:
    """A cloud-config that halts the machine at the build deadline (an absolute time).

    With instance-initiated shutdown = terminate, the halt removes the instance, so a
    controller killed mid-bake cannot leave a paid machine running past ``kiln:expires``.
    bootcmd runs at every boot: the minutes left are worked out from the absolute
    deadline each time, so a reboot step does not push the deadline later.
    """
    return (
        "#cloud-config\n"
        "# kiln build machine: halt (= terminate) at the build deadline, even if the controller died\n"
        "bootcmd:\n"
        f'  - [sh, -c, "left=$(( ({expires_epoch} - $(date +%s)) / 60 )); [ $left -ge 1 ] || left=1; '
        'shutdown -h +$left >/dev/null 2>&1 || true"]\n'
    )


def user_data(expires_epoch: int, extra: str = "") -> str:
    """kiln's cloud-config, plus the user's own user data as a second MIME part when given."""
    ours = deadline_cloud_config(expires_epoch)
    if not extra.strip():
        return ours
    message = MIMEMultipart()
    message.attach(MIMEText(ours, "cloud-config"))
    subtype = (
        "x-shellscript"
        if extra.startswith("#!")
        else ("cloud-config" if extra.startswith("#cloud-config") else "x-shellscript")
    )
    message.attach(MIMEText(extra, subtype))
    return message.as_string()


def cloud_config_parts(data: str) -> list[str]:
    """The cloud-config documents of user data (plain, or a MIME multipart)."""
    if data.startswith("Content-Type: multipart") or data.startswith("MIME-Version"):
        import email

        message = email.message_from_string(data)
        return [
            part.get_payload(decode=True).decode(errors="replace")
            for part in message.walk()
            if part.get_content_type() == "text/cloud-config"
        ]
    return [data] if data.startswith("#cloud-config") else []


# --- the data plane --------------------------------------------------------------------
class DataPlane(Protocol):
    """Hooks the provider calls as instances and images come and go."""

    def source_cidrs(self, address: str) -> list[str]:
        """Where the controller's SSH comes from, for the temporary security group."""

    def launched(self, region: str, instance_ids: list[str]) -> None:
        """Instances were created (and may be booting)."""

    def address(self, region: str, instance_id: str) -> tuple[str, int] | None:
        """An explicit SSH host/port for the instance, or None to use the instance's own."""

    def image_created(self, region: str, instance_id: str, image_id: str) -> None:
        """An AMI is being made from the instance."""

    def image_copied(self, source_region: str, source_id: str, region: str, image_id: str) -> None:
        """An AMI was copied to another region."""

    def image_removed(self, region: str, image_id: str) -> None:
        """An AMI was deregistered."""

    def terminated(self, region: str, instance_ids: list[str]) -> None:
        """Instances were terminated."""

    def rebooting(self, region: str, instance_id: str, timeout: float) -> None:
        """The instance went down for a reboot it started itself (its SSH stopped answering).

        EC2 brings it back by itself; a data plane whose machines stop instead (the sandbox's
        containers) starts it again here, keeping its address and keys. Raise on failure.
        """

    def sweep(self, apply: bool) -> list[str]:
        """What the data plane made that outlived its owner (removed when ``apply``); part of ``sweep``."""


class CloudDataPlane:
    """Real AWS: the cloud runs the machines; kiln only needs its own address."""

    def __init__(self, checkip_url: str = "https://checkip.amazonaws.com") -> None:
        self.checkip_url = checkip_url
        self._cidrs: dict[str, list[str]] = {}

    def source_cidrs(self, address: str) -> list[str]:
        kind = "private" if address.startswith("private") else "public"
        if kind not in self._cidrs:
            try:
                if kind == "public":
                    with urllib.request.urlopen(self.checkip_url, timeout=10) as resp:  # noqa: S310 - fixed https URL
                        ip = resp.read().decode().strip()
                else:  # the address this host would use towards a VPC
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                        sock.connect(("10.255.255.254", 22))
                        ip = sock.getsockname()[0]
                network = f"{ip}/32"
                import ipaddress

                ipaddress.ip_network(network)
            except (OSError, ValueError) as exc:
                from controller.providers.base import ProviderError

                raise ProviderError(
                    f"could not find this controller's {kind} address for the temporary "
                    f"security group ({exc}); set providers.aws.ssh.cidrs"
                ) from exc
            self._cidrs[kind] = [network]
        return self._cidrs[kind]

    def launched(self, region: str, instance_ids: list[str]) -> None:
        pass

    def address(self, region: str, instance_id: str) -> tuple[str, int] | None:
        return None

    def image_created(self, region: str, instance_id: str, image_id: str) -> None:
        pass

    def image_copied(self, source_region: str, source_id: str, region: str, image_id: str) -> None:
        pass

    def image_removed(self, region: str, image_id: str) -> None:
        pass

    def terminated(self, region: str, instance_ids: list[str]) -> None:
        pass

    def rebooting(self, region: str, instance_id: str, timeout: float) -> None:
        pass  # EC2 reboots the instance in place

    def sweep(self, apply: bool) -> list[str]:
        return []  # the cloud's own resources are all swept through the API


def ssh_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether an SSH server greets on ``host:port`` within ``timeout`` (a TCP connect and the banner)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


# --- claims stored in SSM parameters (version reservations, locks, the publish mutex) ---------
def read_claim(value: str) -> tuple[BuildClaim | None, bool]:
    """The claim a parameter holds and whether its build said it ended (gave its version up).

    An older kiln's value (``{"owner"|"reserved", "expires"}``) is a claim held by nobody, so only
    its deadline counts; anything unreadable is no claim at all (None): never proof of anything.
    """
    try:
        data = json.loads(value)
    except ValueError:
        return None, False
    if not isinstance(data, dict):
        return None, False
    claim = BuildClaim.from_json(value)
    if claim is None and "expires" in data:
        claim = BuildClaim(
            build_id=str(data.get("build_id") or data.get("owner") or ""),
            expires=str(data["expires"]),
            host="",
            pid=0,
            pid_started="",
        )
    return claim, bool(data.get("ended"))


def claim_value(claim: BuildClaim, **extra: Any) -> str:
    return json.dumps({**json.loads(claim.to_json()), **extra}, sort_keys=True)


def stale_reason(claim: BuildClaim | None, now: dt.datetime | None = None) -> str:
    """Why a lock's holder no longer holds it ("dead", "expired", "unreadable"), or "" while it does."""
    if claim is None:
        return "unreadable"
    if claim.holder_alive() is False:
        return "dead"
    return "expired" if claim.expired(now) else ""


def snapshot_ids(image: dict[str, Any]) -> list[str]:
    return [
        m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings") or [] if m.get("Ebs", {}).get("SnapshotId")
    ]
