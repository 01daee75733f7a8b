"""kiln's names on AWS: tags, parameter paths, error codes, times, and the claims SSM parameters hold."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError

from kiln.controller.ownership import BuildClaim

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
