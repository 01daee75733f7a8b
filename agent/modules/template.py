"""Render a Jinja2 template from the role's ``templates/`` on the box and put it at ``dest``.

The template sees the role's vars, ``facts``, registered results and ``kiln``.
Written like ``copy``: only when the rendered content differs, atomically, validated.

Example::

    - template: {src: site.conf.j2, dest: /etc/nginx/sites-available/default, mode: "0644"}
"""

from __future__ import annotations

import os
from typing import Any, Dict

from ..api import Context, ModuleError, Result
from ..modules import copy as copymod
from ..templating import render_file

# the arguments template shares with copy (only some descriptions differ)
_COPY_ARGS = copymod.SCHEMA["args"]

SCHEMA = {
    "description": "Render a Jinja2 template from the role's templates/ and write it to dest when it differs.",
    "args": {
        "src": {
            "type": "path",
            "relative": True,
            "required": True,
            "description": "Template in the role's templates/ directory.",
        },
        "dest": dict(
            _COPY_ARGS["dest"],
            description="Destination path; a directory (or a path ending in /) gets src's name without .j2.",
        ),
        **{key: dict(_COPY_ARGS[key]) for key in ("mode", "owner", "group", "backup")},
        "validate": dict(
            _COPY_ARGS["validate"],
            description="Command run on the rendered file before it replaces "
            'dest; %s is the temp file (e.g. "nginx -t -c %s").',
        ),
        "force": dict(_COPY_ARGS["force"]),
    },
    "check_mode": "full",
    "diff": True,
    "example": '- template: {src: site.conf.j2, dest: /etc/nginx/sites-available/default, mode: "0644"}',
}


def _dest(params: Dict[str, Any]) -> str:
    src = params["src"]
    name = src[:-3] if src.endswith(".j2") else src
    return copymod.resolve_dest(params["dest"], name)


def check(params: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    return copymod.dest_state(_dest(params), ctx)


def apply(params: Dict[str, Any], state: Dict[str, Any], ctx: Context) -> Result:
    path = ctx.source_path(params["src"], "templates")
    if not os.path.isfile(path):
        raise ModuleError(f"template {params['src']} not found in the role's templates/ ({path})")
    if os.path.isabs(params["src"]):
        text = render_file(os.path.dirname(path), os.path.basename(path), ctx.variables)
    else:
        text = render_file(ctx.templates_dir, params["src"], ctx.variables)
    return copymod.put_content(params, text.encode("utf-8"), state, ctx)
