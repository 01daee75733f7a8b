"""What every AWS resource of kiln's shares: the settings, cached clients, waiters, the data plane, SSM helpers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import structlog
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from kiln.controller.providers.aws.data_plane import CloudDataPlane, DataPlane
from kiln.controller.providers.aws.settings import AwsSettings
from kiln.controller.providers.aws.tags import ARCH, BUILD_ID, EXPIRES, ROLE, TEMPORARY, error_code, iso, kiln_version
from kiln.controller.providers.base import MachineSpec

log = structlog.get_logger("kiln.aws")


class AwsApi:
    """One account's clients per service and region, shared by the resource managers (key pairs, instances, AMIs...)."""

    name = "aws"

    def __init__(
        self,
        settings: AwsSettings,
        session: boto3.Session,
        state_dir: Path = Path("builds"),
        data_plane: DataPlane | None = None,
        endpoint_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.session = session
        self.state_dir = Path(state_dir)
        self.data_plane: DataPlane = data_plane or CloudDataPlane()
        self.endpoint_url = endpoint_url  # None: boto3's own resolution (which honours AWS_ENDPOINT_URL)
        self.sleep = sleep
        self.boto_config = BotoConfig(
            retries={"mode": settings.retry_mode, "max_attempts": settings.retry_max_attempts},
            user_agent_extra=f"kiln/{kiln_version()}",
            connect_timeout=10,
            read_timeout=120,
        )
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._given_up: dict[tuple[str, str], list[list[str]]] = {}  # (role, version) -> AMIs still pending

    @property
    def build_region(self) -> str:
        return self.settings.build_region

    def client(self, service: str, region: str | None = None) -> Any:
        """A cached client per service and region (creating clients is not thread-safe; using them is)."""
        key = (service, region or self.build_region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self.session.client(
                    service, region_name=key[1], endpoint_url=self.endpoint_url, config=self.boto_config
                )
            return self._clients[key]

    def ec2(self, region: str | None = None) -> Any:
        return self.client("ec2", region)

    def ssm(self, region: str | None = None) -> Any:
        return self.client("ssm", region)

    def _instance_waiter(self, region: str, name: str, ids: list[str], max_seconds: float = 600) -> None:
        delay = max(0, min(5.0, self.settings.waiter_delay))
        attempts = max(1, int(max_seconds / delay)) if delay else 40
        self.ec2(region).get_waiter(name).wait(InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})

    def _safely(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception as exc:  # the data plane must never stop the cleanup
            log.error("data plane hook failed", hook=getattr(hook, "__name__", str(hook)), error=str(exc))

    def temporary_tags(self, spec: MachineSpec) -> dict[str, str]:
        """The tags of everything temporary made for a machine (sweep reads ``kiln:expires``)."""
        return {
            **self.settings.tags,
            TEMPORARY: "true",
            BUILD_ID: spec.build_id,
            EXPIRES: iso(spec.expires),
            ROLE: spec.role,
            **({ARCH: spec.arch} if spec.arch else {}),  # which of the bake's machines, with its name
        }

    def _read_parameter(self, name: str) -> str | None:
        try:
            return self.ssm().get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return None
            raise

    def _delete_if_unchanged(self, name: str, value: str) -> None:
        """Delete a stale claim unless someone replaced it meanwhile (SSM has no conditional delete:
        the re-read narrows the window in which two takers could both win to one round trip)."""
        if self._read_parameter(name) == value:
            self._delete_parameter(self.ssm(), name)

    @staticmethod
    def _delete_parameter(ssm: Any, name: str) -> None:
        try:
            ssm.delete_parameter(Name=name)
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
