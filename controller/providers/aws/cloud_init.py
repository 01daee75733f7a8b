"""What cloud-init reads and prints: kiln's user data (the deadline halt) and the host key fingerprints
on the console, which the provider pins."""

from __future__ import annotations

import base64
import binascii
import re
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from kiln.controller.ssh import fingerprint_of

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
