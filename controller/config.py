"""``playbooks/kiln.yaml``: providers, retention and global variables.

::

    providers:
      local: {engine: auto, runtime: auto}
      aws: {regions: [us-east-1, eu-west-1]}
    retention: {keep: 5}
    vars: {}

A missing file is an empty configuration (every default). Provider sections are kept
as raw mappings for the providers to read; :meth:`Config.diagnostic` lets them report a
bad value at its file:line:column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.controller.declared import check_document
from kiln.controller.model import Diagnostic, InvalidInput
from kiln.controller.providers import REGISTRY  # each provider declares its own section
from kiln.controller.stepfiles.loader import Document, display_path, kind_of, load_yaml

BUILD_DEFAULTS = {
    "ssh_timeout": 180.0,
    "deadline_hours": 3.0,
    "step_timeout": 3600.0,
    "ssh_keepalive": 15.0,
    "ssh_keepalive_misses": 3,
    "test_image": True,
}
PROVIDERS = tuple(REGISTRY)
DEFAULT_KEEP = 5
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _positive(description: str, default: float) -> dict[str, Any]:
    return {
        "type": "number",
        "exclusive_minimum": 0,
        "templated": False,
        "default": default,
        "expect": "a positive number",
        "show": "kind",
        "description": description,
    }


BUILD_SCHEMA: dict[str, Any] = {
    "key_noun": "build setting",
    "description": "How long builds may take and how a lost machine is noticed.",
    "args": {
        "ssh_timeout": _positive("Seconds a new machine's SSH may take to answer.", 180.0),
        "deadline_hours": _positive(
            "Hours after which a build's temporaries expire (an AWS build machine halts itself).", 3.0
        ),
        "step_timeout": _positive("Seconds a step may run unless it says `timeout:`.", 3600.0),
        "ssh_keepalive": _positive("Seconds between SSH keepalive probes.", 15.0),
        "ssh_keepalive_misses": {
            "type": "int",
            "strict": True,
            "templated": False,
            "minimum": 1,
            "default": 3,
            "expect": "a whole number >= 1",
            "description": "Unanswered probes in a row before the machine is lost.",
        },
        "test_image": {
            "type": "bool",
            "strict": True,
            "templated": False,
            "default": True,
            "expect": "true or false",
            "description": "Launch a fresh machine from the new image and run the checks there before publishing.",
        },
    },
}
CONFIG_SCHEMA: dict[str, Any] = {
    "key_noun": "setting",
    "description": "playbooks/kiln.yaml: providers, retention, build settings and global variables.",
    "args": {
        "providers": {
            "type": "object",
            "key_noun": "provider",
            "expect": "a mapping",
            "description": "Each provider's settings.",
            "args": {name: registration.settings_section() for name, registration in REGISTRY.items()},
        },
        "retention": {
            "type": "object",
            "free_form": "keep",
            "key_noun": "retention setting",
            "expect": "a mapping like {keep: 5}",
            "show": "kind",
            "description": "How many versions of each role are kept (`retention: 5` is short for `{keep: 5}`).",
            "args": {
                "keep": {
                    "type": "int",
                    "strict": True,
                    "templated": False,
                    "minimum": 1,
                    "default": DEFAULT_KEEP,
                    "expect": "a whole number >= 1",
                    "description": "Versions kept per role; older ones are retired.",
                },
            },
        },
        "build": {
            "type": "object",
            "expect": "a mapping like {ssh_timeout: 180}",
            "show": "kind",
            **BUILD_SCHEMA,
        },
        "vars": {
            "type": "map",
            "key_pattern": IDENTIFIER,
            "reserved_keys": ["facts", "kiln"],
            "expect": "a mapping",
            "show": "kind",
            "key_message": "variable name '{key}' is not an identifier (letters, digits, _)",
            "description": "Variables for every role: above role defaults and vars, below `--var`.",
        },
    },
}


@dataclass
class Config:
    """The parsed kiln.yaml."""

    path: Path
    vars: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=lambda: {"local": {}, "aws": {}})
    retention: int = DEFAULT_KEEP
    #: seconds to wait for a new machine's SSH; hours after which a build's temporaries expire
    ssh_timeout: float = BUILD_DEFAULTS["ssh_timeout"]
    deadline_hours: float = BUILD_DEFAULTS["deadline_hours"]
    #: seconds a step may run unless it says ``timeout:``
    step_timeout: float = BUILD_DEFAULTS["step_timeout"]
    #: seconds between SSH keepalive probes; unanswered probes in a row before the machine counts as lost
    ssh_keepalive: float = BUILD_DEFAULTS["ssh_keepalive"]
    ssh_keepalive_misses: int = BUILD_DEFAULTS["ssh_keepalive_misses"]
    #: launch a fresh machine from the new image and run the checks there before publishing it
    test_image: bool = BUILD_DEFAULTS["test_image"]
    document: Document | None = field(default=None, repr=False, compare=False)

    @property
    def display(self) -> str:
        return self.document.display if self.document else display_path(self.path)

    def diagnostic(self, keys: tuple[Any, ...] | list[Any], message: str) -> Diagnostic:
        """A diagnostic pinned to the value at ``keys``, for providers validating their section."""
        if self.document is None:
            return Diagnostic(self.display, 1, 1, message)
        return self.document.diag(tuple(keys), message)

    def provider(self, name: str) -> dict[str, Any]:
        return self.providers.get(name) or {}


def load_config(path: Path) -> Config:
    """Load and check kiln.yaml against CONFIG_SCHEMA; raise InvalidInput with every problem at once."""
    path = Path(path)
    if not path.exists():
        return Config(path=path)
    doc = load_yaml(path)
    data = doc.data
    config = Config(path=path, document=doc)
    if data is None:
        return config
    if not isinstance(data, dict):
        known = ", ".join(CONFIG_SCHEMA["args"])
        raise InvalidInput([doc.diag((), f"kiln.yaml must be a mapping of {known}; got {kind_of(data)}")])
    values, problems = check_document(
        CONFIG_SCHEMA, data, lambda where, message, key: doc.diag(where, message, key=key)
    )
    if problems:
        raise InvalidInput(problems)
    providers = data.get("providers") or {}  # as written: each provider applies its own defaults
    config.providers = {name: dict(providers.get(name) or {}) for name in PROVIDERS}
    config.retention = values["retention"]["keep"] if "retention" in values else DEFAULT_KEEP
    build = values.get("build") or {}
    for key, default in BUILD_DEFAULTS.items():
        value = build.get(key, default)
        setattr(config, key, float(value) if isinstance(default, float) else value)
    config.vars = dict(values.get("vars") or {})
    return config
