"""``invoke sweep``: temporary resources whose ``kiln:expires`` passed, and reservations of builds that are over."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import WaiterError

from kiln.controller.providers.aws.instance import LIVE_STATES
from kiln.controller.providers.aws.tags import (
    BUILD_ID,
    ROLE,
    TEMPORARY,
    expired,
    iso,
    now_utc,
    tags_of,
)

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi

log = structlog.get_logger("kiln.aws")


class Sweeper:
    def __init__(self, api: AwsApi) -> None:
        self.api = api

    def sweep(self, apply: bool) -> list[str]:
        """Temporary resources whose ``kiln:expires`` passed (instances, key pairs, security groups,
        volumes) in every region, plus expired version reservations; removed when ``apply``."""
        now = now_utc()
        found: list[str] = []
        temporary = [{"Name": f"tag:{TEMPORARY}", "Values": ["true"]}]
        for region in self.api.settings.regions:
            ec2 = self.api.ec2(region)

            def note(
                kind: str, ident: str, tags: dict[str, str], when: dt.datetime, extra: str = "", region: str = region
            ) -> None:
                found.append(
                    f"{kind} {ident} in {region} (build {tags.get(BUILD_ID, '?')}, role "
                    f"{tags.get(ROLE, '?')}, expired {iso(when)}){extra}"
                )

            rows = ec2.describe_instances(Filters=temporary + [{"Name": "instance-state-name", "Values": LIVE_STATES}])
            instances = [(i, expired(tags_of(i), now)) for r in rows["Reservations"] for i in r["Instances"]]
            ids = []
            for inst, when in instances:
                if when:
                    note("instance", inst["InstanceId"], tags_of(inst), when)
                    ids.append(inst["InstanceId"])
            if apply and ids:
                ec2.terminate_instances(InstanceIds=ids)
                self.api._safely(self.api.data_plane.terminated, region, ids)
                try:
                    self.api._instance_waiter(region, "instance_terminated", ids, max_seconds=300)
                except WaiterError as exc:
                    log.warning("instances still terminating", instances=ids, error=str(exc))
            for pair in ec2.describe_key_pairs(Filters=temporary)["KeyPairs"]:
                if when := expired(tags_of(pair), now):
                    note("key pair", pair["KeyName"], tags_of(pair), when)
                    if apply:
                        ec2.delete_key_pair(KeyName=pair["KeyName"])
            for group in ec2.describe_security_groups(Filters=temporary)["SecurityGroups"]:
                if when := expired(tags_of(group), now):
                    ok = self.api.security_groups._delete_group(region, group["GroupId"], attempts=6) if apply else True
                    note(
                        "security group",
                        group["GroupId"],
                        tags_of(group),
                        when,
                        "" if ok else " - still in use, retry later",
                    )
            for volume in ec2.describe_volumes(Filters=temporary + [{"Name": "status", "Values": ["available"]}])[
                "Volumes"
            ]:
                if when := expired(tags_of(volume), now):
                    note("volume", volume["VolumeId"], tags_of(volume), when)
                    if apply:
                        ec2.delete_volume(VolumeId=volume["VolumeId"])
        found += self.api.versions._sweep_reservations(apply)
        found += self.api.data_plane.sweep(apply)
        return found
