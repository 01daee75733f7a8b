"""Check an HTTP(S) URL: its status and, optionally, substrings of its body.

Example::

    - http: http://127.0.0.1/
    - http: {url: "http://127.0.0.1/health", status: 200, body: ["ok"]}
"""

from __future__ import annotations

import ssl
from typing import Any, Dict, Tuple

from ..api import Context, as_list

SCHEMA = {
    "description": "An HTTP(S) URL answers with the wanted status and its body contains the given strings.",
    "free_form": "url",
    "args": {
        "url": {"type": "str", "required": True, "description": "http:// or https:// URL."},
        "status": {"type": "int", "default": 200, "description": "Expected HTTP status."},
        "body": {"type": "list", "elements": "str", "description": "Substrings the body must contain."},
        "timeout": {"type": "int", "default": 10, "description": "Seconds before giving up."},
        "no_follow_redirects": {
            "type": "bool",
            "default": False,
            "description": "Report a redirect's own status instead of following it.",
        },
        "insecure": {"type": "bool", "default": False, "description": "Do not verify the TLS certificate."},
        "headers": {"type": "dict", "description": "Extra request headers."},
    },
    "example": '- http: http://127.0.0.1/\n- http: {url: "http://127.0.0.1/health", body: [ok]}',
}

MAX_BODY = 1 << 20


def _no_redirect() -> Any:
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
            return None

    return NoRedirect()


def probe(params: Dict[str, Any], ctx: Context) -> Tuple[bool, str]:
    # here, not with the module: the controller imports it for its SCHEMA when a role's checks name it, and
    # urllib.request (http.client, email) was ~15 ms of every such compile
    import urllib.error
    import urllib.request

    url = params["url"]
    if not url.startswith(("http://", "https://")):
        return False, f"not an http(s) URL: {url!r}"
    handlers = []
    if params["no_follow_redirects"]:
        handlers.append(_no_redirect())
    if params["insecure"]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(
        url, headers={"User-Agent": "kiln-verify", **{str(k): str(v) for k, v in (params.get("headers") or {}).items()}}
    )
    try:
        with opener.open(request, timeout=params["timeout"]) as response:
            status, body = response.status, response.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(MAX_BODY) if exc.fp else b""
    except (urllib.error.URLError, OSError) as exc:
        return False, f"no response from {url}: {getattr(exc, 'reason', exc)}"
    text = body.decode("utf-8", errors="replace")
    ok = status == params["status"]
    seen = [f"status {status}" + ("" if ok else f" (wanted {params['status']})")]
    missing = [s for s in as_list(params.get("body")) if s not in text]
    if missing:
        seen.append("body did not contain " + ", ".join(repr(s) for s in missing))
    if not ok or missing:
        return False, ", ".join(seen)
    found = f", body contained {', '.join(repr(s) for s in as_list(params.get('body')))}" if params.get("body") else ""
    return True, f"status {status}{found}"
