"""The **data plane** is what turns an EC2 instance into a machine kiln can reach: on real
AWS the cloud itself (:class:`CloudDataPlane` only finds the controller's address for the
security group); in the sandbox (controller/sandbox.py) local containers. The provider
calls the same hooks on both, so the AWS code path does not branch on the sandbox.
"""

from __future__ import annotations

import socket
import urllib.request
from typing import Protocol

from kiln.controller.providers.base import ssh_answers  # noqa: F401 - the reboot wait's probe, here as ever


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
                from kiln.controller.providers.base import ProviderError

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
