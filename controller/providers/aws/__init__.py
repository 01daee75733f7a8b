"""The AWS provider: build machines are EC2 instances, images are AMIs, ``latest`` is an SSM parameter.

One file per resource it manages:

* key_pair.py, security_group.py, instance.py: the build machine, launched as a small pipeline
  (key pair -> security group -> instance), each resource with its own undo;
* base_image.py: the base AMI; image.py: the AMI made; copies.py: its copies in other regions;
  latest.py: the ``latest`` pointers and the publish mutex;
* versions.py: version reservations (each a build's record); locks.py: the per-role lock;
  sweep.py: what builds that are over left;
* api.py: settings, clients and waiters they share; tags.py, cloud_init.py, data_plane.py: small pieces.

Every temporary resource is tagged ``kiln:temporary=true``, ``kiln:build-id`` and ``kiln:expires`` for
``invoke sweep`` should the controller die, and the instance halts itself (= terminates) at the deadline.

``--sandbox`` runs this same code against moto with local containers as the data plane
(controller/sandbox.py); only the endpoint and the SSH address differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError

from kiln.controller.model import BaseImage, Diagnostic, Image, InvalidInput, Machine, Publication, PublishSpec
from kiln.controller.ownership import BuildClaim
from kiln.controller.providers.aws.api import AwsApi
from kiln.controller.providers.aws.base_image import BaseImages
from kiln.controller.providers.aws.copies import Copies
from kiln.controller.providers.aws.data_plane import DataPlane
from kiln.controller.providers.aws.image import Amis, ImageWaitTimeout
from kiln.controller.providers.aws.instance import HYGIENE, Instances
from kiln.controller.providers.aws.latest import Latest
from kiln.controller.providers.aws.locks import Locks
from kiln.controller.providers.aws.security_group import SecurityGroups
from kiln.controller.providers.aws.settings import parse_settings
from kiln.controller.providers.aws.sweep import Sweeper
from kiln.controller.providers.aws.versions import Versions
from kiln.controller.providers.base import ImageSpec, Lock, MachineSpec
from kiln.controller.ssh import HostKeyExpectation

__all__ = ["AwsProvider", "ImageWaitTimeout", "make_aws_provider"]


def make_provider(settings: dict[str, Any] | None, config: Any, builds_dir: Path, sandbox: bool) -> AwsProvider:
    """The registry's factory (controller/providers/__init__.py)."""
    return make_aws_provider(settings, sandbox=sandbox, state_dir=builds_dir, config=config)


def make_aws_provider(
    settings: dict[str, Any] | None,
    sandbox: bool = False,
    state_dir: Path = Path("builds"),
    config: Any = None,
    session: boto3.Session | None = None,
    data_plane: DataPlane | None = None,
) -> AwsProvider:
    """Check ``providers.aws`` (InvalidInput: nothing launched) and build the provider.

    ``sandbox``: moto (embedded, or ``AWS_ENDPOINT_URL``) with local containers as instances.
    """

    def diag(keys: tuple[Any, ...], message: str) -> Diagnostic:
        if config is not None:
            return config.diagnostic(keys, message)
        return Diagnostic("kiln.yaml", 1, 1, f"{'.'.join(str(k) for k in keys)}: {message}")

    parsed = parse_settings(settings, diag)
    if sandbox:
        from kiln.controller.sandbox import make_sandbox_provider

        return make_sandbox_provider(parsed, Path(state_dir))
    if session is None:
        try:
            session = boto3.Session(profile_name=parsed.profile or None, region_name=parsed.build_region)
        except BotoCoreError as exc:  # e.g. ProfileNotFound
            raise InvalidInput([diag(("providers", "aws", "profile"), str(exc))]) from exc
    return AwsProvider(parsed, session=session, state_dir=Path(state_dir), data_plane=data_plane)


class AwsProvider(AwsApi):
    """The provider protocol (controller/providers/base.py), each concern handed to the resource that owns it."""

    name = "aws"
    makes_images = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_images = BaseImages(self)
        self.instances = Instances(self)
        self.security_groups = SecurityGroups(self)
        self.amis = Amis(self)
        self.copies = Copies(self)
        self.latest_pointer = Latest(self)
        self.versions = Versions(self)
        self.locks = Locks(self)
        self.sweeper = Sweeper(self)
        self.sandbox: Any = None  # set by controller.sandbox

    def close(self) -> None:
        self.locks.stop()
        if self.sandbox is not None:
            self.sandbox.close()

    @property
    def architectures(self) -> list[str]:
        """What one bake makes an AMI of each (``providers.aws.architectures``)."""
        return list(self.settings.architectures)

    # --- machines --------------------------------------------------------------------------
    def resolve_base(self, spec: Any, arch: str = "") -> BaseImage:
        return self.base_images.resolve_base(spec, arch)

    def launch(self, spec: MachineSpec) -> Machine:
        return self.instances.launch(spec)

    def host_key_expectation(self, machine: Machine) -> HostKeyExpectation:
        return self.instances.host_key_expectation(machine)

    def reboot_wait(self, machine: Machine, timeout: float = 300) -> None:
        self.instances.reboot_wait(machine, timeout)

    def machine_status(self, machine: Machine) -> str:
        state = self.instances._instance_state(machine.region or self.build_region, machine.id)
        return "" if state in ("gone", "shutting-down", "terminated") else state

    def start(self, machine: Machine) -> None:
        self.ec2(machine.region).start_instances(InstanceIds=[machine.id])

    def hygiene_script(self) -> str:
        return HYGIENE

    def keep_build(self, spec: MachineSpec) -> None:
        """The instance's ``kiln:expires`` tag and its deadline halt end it; nothing more to note."""

    def terminate(self, machine: Machine) -> None:
        self.instances.terminate(machine)

    # --- images ----------------------------------------------------------------------------
    def prepare_snapshot(self, machine: Machine) -> None:
        self.amis.prepare_snapshot(machine)

    def snapshot(self, spec: ImageSpec, on_created: Callable[[Image], None]) -> Image:
        return self.amis.snapshot(spec, on_created)

    def discard(self, image: Image) -> None:
        self.amis.discard(image)

    def publish(self, spec: PublishSpec, on_started: Callable[[Publication], None]) -> Publication:
        return self.copies.publish(spec, on_started)

    def unpublish(self, publication: Publication) -> None:
        self.latest_pointer.unpublish(publication)

    def images(self, role: str) -> list[Image]:
        return self.amis.images(role)

    def retire(self, role: str, keep: int) -> list[Image]:
        return self.amis.retire(role, keep)

    def latest(self, region: str, role: str, arch: str = "") -> str:
        return self.latest_pointer.latest(region, role, arch)

    def publishing(self, role: str, build_id: str, ttl: float = 60.0) -> Iterator[None]:
        return self.latest_pointer.publishing(role, build_id, ttl)

    def remove_image(self, region: str, image_id: str) -> None:
        self.amis.remove_image(region, image_id)

    # --- coordination ----------------------------------------------------------------------
    def allocate_version(self, role: str, claim: BuildClaim) -> str:
        return self.versions.allocate_version(role, claim)

    def release_version(self, role: str, version: str) -> None:
        self.versions.release_version(role, version)

    def acquire_lock(self, role: str, owner: str, wait: bool, ttl: float = 4 * 3600) -> Lock:
        return self.locks.acquire_lock(role, owner, wait, ttl)

    def release_lock(self, role: str, owner: str) -> None:
        self.locks.release_lock(role, owner)

    def sweep(self, apply: bool) -> list[str]:
        return self.sweeper.sweep(apply)
