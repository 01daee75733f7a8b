"""``playbooks/kiln.yaml``: providers, retention and global variables.

::

    providers:
      local: {engine: auto, runtime: auto}
      aws: {regions: [us-east-1, eu-west-1]}
    retention: {keep: 5}
    vars: {}

A missing file is an empty configuration (every default). Provider sections are kept
as raw mappings for the providers to read; :meth:`Config.position` and
:meth:`Config.diagnostic` let them report a bad value at its file:line:column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.schema import did_you_mean
from controller.model import Diagnostic, InvalidInput
from controller.stepfiles.loader import Document, display_path, kind_of, load_yaml

KNOWN_KEYS = ("providers", "retention", "vars", "build")
BUILD_DEFAULTS = {
    "ssh_timeout": 180.0,
    "deadline_hours": 3.0,
    "step_timeout": 3600.0,
    "ssh_keepalive": 15.0,
    "ssh_keepalive_misses": 3,
    "test_image": True,
}
#: build settings that count something: whole numbers
WHOLE_BUILD_SETTINGS = ("ssh_keepalive_misses",)
#: build settings that switch something on or off
BOOLEAN_BUILD_SETTINGS = ("test_image",)
PROVIDERS = ("local", "aws")
RETENTION_KEYS = ("keep",)
DEFAULT_KEEP = 5
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Config:
    """The parsed kiln.yaml; ``raw`` is the whole file as plain data."""

    path: Path
    raw: dict[str, Any] = field(default_factory=dict)
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

    def position(self, *keys: Any) -> tuple[int, int]:
        """1-based (line, column) of the value at ``keys`` (e.g. ``"providers", "aws", "regions", 0``)."""
        if self.document is None:
            return 1, 1
        return self.document.value_pos(keys)

    def diagnostic(self, keys: tuple[Any, ...] | list[Any], message: str) -> Diagnostic:
        """A diagnostic pinned to the value at ``keys``, for providers validating their section."""
        if self.document is None:
            return Diagnostic(self.display, 1, 1, message)
        return self.document.diag(tuple(keys), message)

    def provider(self, name: str) -> dict[str, Any]:
        return self.providers.get(name) or {}


def _build_setting_problem(key: Any, value: Any) -> str:
    """What is wrong with ``build.<key>: <value>`` ("" when nothing)."""
    if key not in BUILD_DEFAULTS:
        return f"unknown build setting '{key}'{did_you_mean(key, list(BUILD_DEFAULTS))}"
    if key in BOOLEAN_BUILD_SETTINGS:
        return "" if isinstance(value, bool) else f"build.{key} must be true or false, got {value!r}"
    if key in WHOLE_BUILD_SETTINGS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"build.{key} must be a whole number >= 1, got {value!r}"
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        return f"build.{key} must be a positive number, got {kind_of(value)}"
    return ""


def load_config(path: Path) -> Config:
    """Load and check kiln.yaml; raise InvalidInput with every problem at once."""
    path = Path(path)
    if not path.exists():
        return Config(path=path)
    doc = load_yaml(path)
    data = doc.data
    problems: list[Diagnostic] = []
    config = Config(path=path, document=doc)
    if data is None:
        return config
    if not isinstance(data, dict):
        raise InvalidInput(
            [doc.diag((), f"kiln.yaml must be a mapping of {', '.join(KNOWN_KEYS)}; got {kind_of(data)}")]
        )
    config.raw = data
    for key in data:
        if key not in KNOWN_KEYS:
            problems.append(doc.diag((key,), f"unknown setting '{key}'{did_you_mean(key, list(KNOWN_KEYS))}", key=True))

    providers = data.get("providers")
    if providers is not None:
        if not isinstance(providers, dict):
            problems.append(doc.diag(("providers",), f"providers must be a mapping, got {kind_of(providers)}"))
        else:
            for name, section in providers.items():
                if name not in PROVIDERS:
                    problems.append(
                        doc.diag(
                            ("providers", name),
                            f"unknown provider '{name}'{did_you_mean(name, list(PROVIDERS))}",
                            key=True,
                        )
                    )
                    continue
                if section is None:
                    section = {}
                if not isinstance(section, dict):
                    problems.append(
                        doc.diag(("providers", name), f"providers.{name} must be a mapping, got {kind_of(section)}")
                    )
                    continue
                config.providers[name] = section

    retention = data.get("retention")
    if retention is not None:
        if isinstance(retention, int) and not isinstance(retention, bool):
            retention = {"keep": retention}
            keep_path: tuple[Any, ...] = ("retention",)
        else:
            keep_path = ("retention", "keep")
        if not isinstance(retention, dict):
            problems.append(
                doc.diag(("retention",), f"retention must be a mapping like {{keep: 5}}, got {kind_of(retention)}")
            )
        else:
            for key in retention:
                if key not in RETENTION_KEYS:
                    problems.append(
                        doc.diag(
                            ("retention", key),
                            f"unknown retention setting '{key}'{did_you_mean(key, list(RETENTION_KEYS))}",
                            key=True,
                        )
                    )
            keep = retention.get("keep", DEFAULT_KEEP)
            if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
                problems.append(doc.diag(keep_path, f"retention.keep must be a whole number >= 1, got {keep!r}"))
            else:
                config.retention = keep

    build = data.get("build")
    if build is not None:
        if not isinstance(build, dict):
            problems.append(
                doc.diag(("build",), f"build must be a mapping like {{ssh_timeout: 180}}, got {kind_of(build)}")
            )
        else:
            for key, value in build.items():
                problem = _build_setting_problem(key, value)
                if problem:
                    problems.append(doc.diag(("build", key), problem, key=key not in BUILD_DEFAULTS))
                else:
                    exact = key in WHOLE_BUILD_SETTINGS or key in BOOLEAN_BUILD_SETTINGS
                    setattr(config, key, value if exact else float(value))

    variables = data.get("vars")
    if variables is not None:
        if not isinstance(variables, dict):
            problems.append(doc.diag(("vars",), f"vars must be a mapping, got {kind_of(variables)}"))
        else:
            for name in variables:
                if not IDENTIFIER.match(name):
                    problems.append(
                        doc.diag(
                            ("vars", name),
                            f"variable name '{name}' is not an identifier (letters, digits, _)",
                            key=True,
                        )
                    )
                elif name in ("facts", "kiln"):
                    problems.append(doc.diag(("vars", name), f"'{name}' is reserved", key=True))
            config.vars = dict(variables)
    if problems:
        raise InvalidInput(problems)
    return config
