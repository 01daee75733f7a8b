"""Ansible's ``uri``: one HTTP request, its status, headers and (with ``return_content``) body registered.

The request is made with the standard library's urllib, as ansible-core's ``uri`` makes it:
``method``, ``headers``, ``body`` (``body_format: json`` sends a value as JSON with its Content-Type;
``form-urlencoded`` a mapping or list of pairs), basic auth with ``url_username``/``url_password``,
redirects as ``follow_redirects`` says (``safe``: GET and HEAD only). A status not in
``status_code`` fails the step. The registered value has ``status``, ``url``, ``msg``
(``OK (N bytes)``), ``redirected``, ``elapsed``, each response header lowercased with ``_`` for
``-`` (``content_type``), ``content`` with ``return_content``, and ``json`` when the response is
JSON. ``dest`` saves the body (changed, as in ansible-core). ``timeout`` is bounded by the step's
limit. Like ansible-core's, it does nothing in check mode.

Example::

    - uri: {url: "http://127.0.0.1:8080/health", status_code: [200, 204], return_content: true}
      register: health
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from ..api import Context, ModuleError, Result, atomic_write

JSON_TYPES = ("json", "javascript")

SCHEMA = {
    "description": "Ansible's uri: make one HTTP request and register its status, headers and content.",
    "args": {
        "url": {"type": "str", "required": True, "description": "The URL (http or https)."},
        "method": {"type": "str", "default": "GET", "description": "The HTTP method, one uppercase word."},
        "body": {"type": "raw", "description": "What to send: text, or a value with body_format json/form."},
        "body_format": {
            "type": "str",
            "choices": ["raw", "json", "form-urlencoded"],
            "default": "raw",
            "description": "How body is sent.",
        },
        "headers": {"type": "dict", "default": {}, "description": "Request headers."},
        "status_code": {
            "type": "raw",
            "default": [200],
            "description": "The status (or list of statuses) that means success.",
        },
        "return_content": {"type": "bool", "default": False, "description": "Register the body as content."},
        "timeout": {
            "type": "int",
            "default": 30,
            "description": "Seconds before giving up (the step's limit bounds it).",
        },
        "follow_redirects": {
            "type": "str",
            "choices": ["all", "no", "none", "safe", "urllib2", "yes"],
            "default": "safe",
            "description": "Which redirects to follow (safe: GET and HEAD).",
        },
        "validate_certs": {"type": "bool", "default": True, "description": "Check the server's certificate."},
        "url_username": {"type": "str", "aliases": ["user"], "description": "Basic auth user."},
        "url_password": {"type": "str", "aliases": ["password"], "description": "Basic auth password."},
        "force_basic_auth": {"type": "bool", "default": False, "description": "Send basic auth without a 401 first."},
        "dest": {"type": "path", "description": "Save the body in this file."},
        "creates": {"type": "path", "description": "Do nothing when this path exists."},
        "removes": {"type": "path", "description": "Do nothing unless this path exists."},
    },
    "check_mode": "none",
    "diff": False,
    "example": '- uri: {url: "http://127.0.0.1:8080/health", return_content: true}',
}


class Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects as follow_redirects says; a redirect not followed is the response."""

    def __init__(self, follow: str) -> None:
        self.follow = follow

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if self.follow in ("no", "none"):
            return None
        if self.follow == "safe" and req.get_method() not in ("GET", "HEAD"):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def form_urlencoded(body: Any) -> Any:
    if isinstance(body, str) or not isinstance(body, (dict, list, tuple)):
        return body
    pairs = list(body.items()) if isinstance(body, dict) else list(body)
    found: List[Tuple[str, str]] = []
    for key, values in pairs:
        for value in values if isinstance(values, (list, tuple, dict)) else [values]:
            if value is not None:
                found.append((str(key), str(value)))
    return urllib.parse.urlencode(found, doseq=True)


def request_body(params: Dict[str, Any], headers: Dict[str, str]) -> Optional[bytes]:
    """The body as sent, and its Content-Type added to ``headers`` as ansible-core adds it."""
    body, kind = params.get("body"), params["body_format"]
    given = [name.lower() for name in headers]
    if kind == "json":
        body = body if isinstance(body, str) else json.dumps(body)
        if "content-type" not in given:
            headers["Content-Type"] = "application/json"
    elif kind == "form-urlencoded":
        body = form_urlencoded(body)
        if "content-type" not in given:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
    if body is None:
        return None
    return body.encode() if isinstance(body, str) else str(body).encode()


def send(params: Dict[str, Any], timeout: float) -> Tuple[int, str, Any, bytes, str]:
    """(status, reason, headers, body, final url); an HTTP error status is a response too."""
    headers = {str(k): str(v) for k, v in (params.get("headers") or {}).items()}
    data = request_body(params, headers)
    if params.get("url_username") is not None and params["force_basic_auth"]:
        token = f"{params['url_username']}:{params.get('url_password') or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
    if params.get("dest") and os.path.isfile(params["dest"]):
        stamp = os.stat(params["dest"]).st_mtime
        headers["If-Modified-Since"] = email.utils.formatdate(stamp, usegmt=True)
    handlers: List[Any] = [Redirects(params["follow_redirects"])]
    if not params["validate_certs"]:
        import ssl

        handlers.append(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
    if params.get("url_username") is not None and not params["force_basic_auth"]:
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, params["url"], params["url_username"], params.get("url_password") or "")
        handlers.append(urllib.request.HTTPBasicAuthHandler(manager))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(params["url"], data=data, headers=headers, method=params["method"].upper())
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.reason, response.headers, response.read(), response.geturl()
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP Error {exc.code}: {exc.reason}", exc.headers, exc.read() or b"", exc.geturl()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return -1, f"Request failed: {exc}", {}, b"", params["url"]


def statuses(given: Any) -> List[int]:
    """A status or a list of them (or "200,201"), as Ansible's list of int reads it."""
    items = given.split(",") if isinstance(given, str) else given if isinstance(given, list) else [given]
    try:
        return [int(item) for item in items]
    except (TypeError, ValueError):
        raise ModuleError(f"status_code: {given!r} is not a list of HTTP statuses") from None


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    params["status_code"] = statuses(params["status_code"])
    if not re.match(r"^[A-Z]+$", params["method"].upper()) or params["method"] != params["method"].upper():
        raise ModuleError("Parameter 'method' needs to be a single word in uppercase, like GET or POST.")
    if params.get("creates") and os.path.exists(params["creates"]):
        return {"skip": f"skipped, since '{params['creates']}' exists"}
    if params.get("removes") and not os.path.exists(params["removes"]):
        return {"skip": f"skipped, since '{params['removes']}' does not exist"}
    return {}


def response_data(params: Dict[str, Any], status: int, reason: str, headers: Any, url: str) -> Dict[str, Any]:
    data: Dict[str, Any] = {"redirected": url != params["url"], "url": url, "status": status, "cookies": {}}
    for name, value in headers.items() if headers else []:
        data[name.replace("-", "_").lower()] = value
    if "location" in data:
        data["location"] = urllib.parse.urljoin(params["url"], data["location"])
    ok = status >= 0 and reason and not reason.startswith("HTTP Error")
    data["msg"] = f"OK ({data.get('content_length', 'unknown')} bytes)" if ok else reason
    return data


def save(dest: str, body: bytes) -> None:
    if os.path.isfile(dest):
        with open(dest, "rb") as handle:
            if hashlib.sha1(handle.read()).digest() == hashlib.sha1(body).digest():
                return
    atomic_write(dest, body)


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    if "skip" in state:
        return Result(False, "", data={"stdout": state["skip"], "stdout_lines": [state["skip"]]})  # as ansible-core
    if ctx.check_mode:
        return Result(False, "uri sends nothing in check mode (as ansible-core's)", predicted=False)
    left = ctx.clock.left() if ctx.clock else None
    timeout = params["timeout"] if left is None else max(0.1, min(params["timeout"], left))
    started = time.monotonic()
    status, reason, headers, body, url = send(params, timeout)
    data = response_data(params, status, reason, headers, url)
    data["elapsed"] = int(time.monotonic() - started)
    content_type = (data.get("content_type") or "").split(";")[0].strip().lower()
    subtype = content_type.partition("/")[2]
    maybe_json = (subtype.partition("+")[2] or subtype) in JSON_TYPES
    text = body.decode(errors="replace")
    if maybe_json:
        try:
            data["json"] = json.loads(text)
        except ValueError:
            pass
    if params["return_content"]:
        data["content"] = text
    changed = False
    if params.get("dest") and status in params["status_code"] and status != 304:
        dest = params["dest"]
        if os.path.isdir(dest):
            dest = os.path.join(dest, os.path.basename(urllib.parse.urlparse(url).path) or "index.html")
        save(dest, body)
        data["path"], changed = dest, True
    if status not in params["status_code"]:
        data["msg"] = f"Status code was {status} and not {params['status_code']}: {data['msg']}"
        raise ModuleError(data.pop("msg"), **data)
    return Result(changed, data.pop("msg"), data=data)
