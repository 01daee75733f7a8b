"""Shared pieces of the AWS tests: a context, a recording data plane, botocore hooks that inject
faults (throttling, capacity errors) or record every API call, and the IAM policy checker."""

from __future__ import annotations

import datetime as dt
import fnmatch
import http.client
import http.server
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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


class HeldRequests:
    """An HTTP relay in front of the moto server that holds requests from a chosen one on, until
    :meth:`release`: a test can then act (send a signal) while a bake is provably inside a stage.

    ``hold_from(operation, body)`` picks the first request to hold (its operation: ``CopyImage``,
    ``DeleteParameter``, ...); ``including=False`` holds only the requests after it. A held request
    waits at most ``bound`` seconds."""

    def __init__(self, upstream: str, hold_from: Any, including: bool = True, bound: float = 120.0) -> None:
        self.released = threading.Event()
        self.holding = threading.Event()
        target = urlsplit(upstream)
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
                operation = operation or parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
                if not relay.holding.is_set() and hold_from(operation, body):
                    relay.holding.set()
                    if including:
                        relay.released.wait(bound)
                elif relay.holding.is_set():
                    relay.released.wait(bound)
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                answer = upstream_conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream_conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="held-requests").start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
