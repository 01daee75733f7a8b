"""The build machine's key pair: the bake's client key, imported under the machine's name, temporary-tagged."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import ClientError

from kiln.controller.providers.aws.tags import error_code, tag_spec

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi
    from kiln.controller.providers.aws.instance import Launch

log = structlog.get_logger("kiln.aws")


class KeyPairStep:
    """Import the client key; its undo deletes it unless the launch succeeded (then the machine owns it)."""

    name = "key pair"

    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def run(self, launch: Launch) -> None:
        name = launch.spec.name
        launch.machine.key_pair = name  # owned before it exists: a lost answer still gets it removed
        try:
            self.api.ec2(launch.machine.region).import_key_pair(
                KeyName=name,
                PublicKeyMaterial=launch.spec.client_key.public_openssh.encode(),
                TagSpecifications=[tag_spec("key-pair", {**launch.tags, "Name": name})],
            )
        except ClientError as exc:  # the name is this bake's: a retried request whose answer was lost
            if error_code(exc) != "InvalidKeyPair.Duplicate":
                raise

    def undo(self, launch: Launch) -> None:
        if not launch.succeeded and launch.machine.key_pair:
            delete_key_pair(self.api, launch.machine.region, launch.machine.key_pair)


def delete_key_pair(api: AwsApi, region: str, name: str) -> None:
    """Never raises: a key pair left is said, with the command that removes it."""
    try:
        api.ec2(region).delete_key_pair(KeyName=name)
    except ClientError as exc:
        log.error(
            "could not delete the key pair; remove by hand",
            key_pair=name,
            error=str(exc),
            command=f"aws ec2 delete-key-pair --region {region} --key-name {name}",
        )
