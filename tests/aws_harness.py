"""Shared pieces of the AWS tests: a context, a recording data plane, botocore hooks that inject
faults (throttling, capacity errors) or record every API call, and the IAM policy checker."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import threading
from pathlib import Path
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from botocore.awsrequest import AWSResponse

from kiln.controller.context import BakeContext, BakeOptions
from kiln.controller.model import CompiledRole
from kiln.controller.providers.aws import AwsProvider, make_aws_provider
from kiln.controller.ssh import KeyPair

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "docs" / "iam-policy.json"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


_LOADER = botocore.loaders.create_loader()  # service models parsed once per test run, not per session


def session(region: str = "us-east-1") -> boto3.Session:
    """A fresh session (its own event hooks) sharing the parsed service models."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return boto3.Session(
        botocore_session=core, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


class RecordingPlane:
    """The data plane of real AWS (nothing to run), recording the hooks it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def source_cidrs(self, address: str) -> list[str]:
        return ["203.0.113.7/32"]

    def address(self, region: str, instance_id: str) -> tuple[str, int] | None:
        return None

    def sweep(self, apply: bool) -> list[str]:
        self.calls.append(("sweep", (apply,)))
        return []

    def __getattr__(self, name: str) -> Any:
        if name in ("launched", "image_created", "image_copied", "image_removed", "terminated"):
            return lambda *args: self.calls.append((name, args))
        raise AttributeError(name)


def provider(tmp_path: Path, sess: boto3.Session | None = None, plane: Any = None, **settings: Any) -> AwsProvider:
    raw = {
        "regions": ["us-east-1", "eu-west-1"],
        "ssh": {"console_timeout": 0},
        "waiter": {"delay": 0, "max_attempts": 3},
    }
    raw.update(settings)
    prov = make_aws_provider(
        raw, state_dir=tmp_path / "builds", session=sess or session(), data_plane=plane or RecordingPlane()
    )
    prov.sleep = lambda seconds: None
    return prov


def compiled(role: str, base: Any = None) -> CompiledRole:
    return CompiledRole(
        role=role,
        chain=[role],
        description=f"{role} for tests",
        steps=[],
        handlers=[],
        checks=[],
        variables={},
        files={},
        base={"aws": base or {"ssm_parameter": AL2023}},
        content_hash="0" * 32,
    )


def context(
    prov: Any, tmp_path: Path, role: str, base: Any = None, build_id: str = "", started: dt.datetime | None = None
) -> BakeContext:
    """A bake's context; ``started`` long enough ago puts its deadline (``kiln:expires``) in the past."""
    ctx = BakeContext(
        role=role,
        compiled=compiled(role, base),
        provider=prov,
        options=BakeOptions(builds_dir=tmp_path / "builds", playbooks_dir=tmp_path),
        build_id=build_id or f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{role[:6]}",
        **({"started": started} if started else {}),
    )
    ctx.client_key = KeyPair.generate(comment=f"kiln-build-{ctx.build_id}")
    ctx.host_key = KeyPair.generate()
    return ctx


# --- botocore hooks ----------------------------------------------------------------------
class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any):
        yield self.body


THROTTLED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>'
    b"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>kiln-test</RequestID></Response>"
)


class Throttle:
    """Answer every ``every``-th EC2 request (attempts included) with RequestLimitExceeded, before it is
    sent: botocore's retry handler sees a real throttling response."""

    def __init__(self, every: int = 3) -> None:
        self.every = every
        self.attempts = 0
        self.throttled = 0
        self._lock = threading.Lock()

    def install(self, sess: boto3.Session) -> Throttle:
        sess.events.register_first("before-send.ec2", self)
        return self

    def __call__(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        with self._lock:
            self.attempts += 1
            if self.attempts % self.every:
                return None
            self.throttled += 1
        url = request.url
        # botocore gives before-send to every handler and takes the first answer: in-process moto's
        # handler would still execute the request. A reserved host makes it pass, as AWS never saw it.
        request.url = "https://throttled.kiln.invalid/"
        return AWSResponse(url, 503, {"Content-Type": "text/xml"}, _Raw(THROTTLED))


class ApiCalls:
    """Every API call (``ec2:RunInstances``) made through a session, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def install(self, sess: boto3.Session) -> ApiCalls:
        sess.events.register("before-call", self)
        return self

    def __call__(self, model: Any, **kwargs: Any) -> None:
        self.calls.append(f"{model.service_model.signing_name}:{model.name}")

    @property
    def actions(self) -> set[str]:
        return set(self.calls)


def fail_call(sess: boto3.Session, operation: str, code: str, times: int = 1, when: Any = None) -> list[dict[str, Any]]:
    """Make ``operation`` fail with ``code`` (the first ``times`` calls for which ``when(query)`` holds);
    returns the query parameters of every call."""
    seen: list[dict[str, Any]] = []
    failed = [0]

    def handler(params: dict[str, Any], **kwargs: Any) -> Any:
        body = params.get("body") or {}  # the serialized request: EC2's query parameters
        seen.append(dict(body) if isinstance(body, dict) else {})
        if (when is None or when(seen[-1])) and failed[0] < times:
            failed[0] += 1
            http = AWSResponse("https://ec2.amazonaws.com/", 500, {}, _Raw(b""))
            return http, {
                "Error": {"Code": code, "Message": f"injected {code}"},
                "ResponseMetadata": {"HTTPStatusCode": 500},
            }
        return None

    sess.events.register_first(f"before-call.ec2.{operation}", handler)
    return seen


# --- the IAM policy ----------------------------------------------------------------------
def policy_allows() -> list[str]:
    policy = json.loads(POLICY.read_text())
    allowed: list[str] = []
    for statement in policy["Statement"]:
        if statement.get("Effect") != "Allow":
            continue
        actions = statement.get("Action", [])
        allowed += [actions] if isinstance(actions, str) else actions
    return allowed


def not_in_policy(actions: set[str]) -> set[str]:
    allowed = [a.lower() for a in policy_allows()]
    return {a for a in actions if not any(fnmatch.fnmatchcase(a.lower(), pattern) for pattern in allowed)}
