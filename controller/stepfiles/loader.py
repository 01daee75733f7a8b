"""Load YAML keeping where every key and value came from.

ruamel.yaml's round-trip loader (YAML 1.2: ``yes``/``no``/``on``/``off`` are
strings, ``0644`` is the integer 644) with ``preserve_quotes``, so the validator can
tell ``mode: 644`` from ``mode: "644"`` and ``state: yes`` from ``state: "yes"``.

:func:`load_yaml` returns a :class:`Document`: the data as plain Python values
(dict, list, str, int, float, bool, None; dates as ISO strings) and, per path
(a tuple of keys and indexes from the root), the 1-based line:column of the key and
the value, and the scalar style. A file that cannot be read or parsed raises
:class:`~controller.model.InvalidInput` with a positioned diagnostic; nothing in
here lets another exception escape.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)

from kiln.controller.model import Diagnostic, InvalidInput

Path_ = tuple[Any, ...]
MAX_DEPTH = 100

PLAIN, SINGLE, DOUBLE, LITERAL, FOLDED = "plain", "'", '"', "|", ">"


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


@dataclass
class RoleTree:
    """A role's directory as kiln may read it: every file that stays inside the role.

    ``files`` maps a path relative to the role (``files/motd``, ``templates/conf/a.j2``) to
    the real file to read. A symlink that leads out of the role (to an absolute path, up
    with ``..``, through a chain, to another role) is in ``refused`` with a problem naming
    it, and nothing is ever read through it. Links that stay inside the role are followed,
    as Ansible does.
    """

    dir: Path
    root: str
    files: dict[str, Path] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    problems: list[Diagnostic] = field(default_factory=list)

    def within(self, real: str) -> bool:
        return os.path.commonpath([real, self.root]) == self.root

    def shown(self, rel: str) -> str:
        """How a diagnostic names ``rel``: the link itself, never where it leads."""
        return f"{display_path(self.dir)}/{rel}"

    def refuse(self, rel: str, message: str) -> None:
        self.refused.add(rel)
        self.problems.append(Diagnostic(self.shown(rel), 1, 1, message))

    def under(self, folder: str) -> dict[str, Path]:
        """The files below ``folder`` (``templates``), by their path relative to it."""
        prefix = folder + "/"
        return {rel[len(prefix) :]: path for rel, path in self.files.items() if rel.startswith(prefix)}


def scan_role(role_dir: Path) -> RoleTree:
    """Walk ``role_dir`` without leaving it (see :class:`RoleTree`); reads no file's content."""
    root = os.path.realpath(role_dir)
    tree = RoleTree(dir=Path(role_dir), root=root)
    _scan(tree, root, "", (root,))
    return tree


def _scan(tree: RoleTree, real_dir: str, rel_dir: str, ancestors: tuple[str, ...]) -> None:
    try:
        names = sorted(os.listdir(real_dir))
    except OSError as exc:
        tree.refuse(rel_dir or ".", f"cannot read: {exc.strerror or exc}")
        return
    for name in names:
        rel = f"{rel_dir}/{name}" if rel_dir else name
        entry = os.path.join(real_dir, name)
        real = os.path.realpath(entry) if os.path.islink(entry) else entry
        if not tree.within(real):
            tree.refuse(
                rel,
                f"{name} is a symlink that leads out of the role (-> {os.readlink(entry)}): "
                "a role may ship and read only its own files",
            )
        elif os.path.isdir(real):
            if real in ancestors:
                tree.refuse(rel, f"{name} is a symlink loop (it leads to a directory that contains it)")
            else:
                _scan(tree, real, rel, ancestors + (real,))
        elif os.path.isfile(real):  # sockets, FIFOs, devices and dangling links are nothing to ship
            tree.files[rel] = Path(real)


class Document:
    """Plain data plus the position and style of every key and value in one YAML file."""

    def __init__(self, path: Path | None, display: str, text: str) -> None:
        self.path = path
        self.display = display
        self.text = text
        self.lines = text.splitlines()
        self.data: Any = None
        self._vpos: dict[Path_, tuple[int, int]] = {(): (1, 1)}
        self._kpos: dict[Path_, tuple[int, int]] = {}
        self._style: dict[Path_, str] = {}
        self.vaulted: set[Path_] = set()  # values tagged !vault (Ansible Vault ciphertext)
        self.octal: set[Path_] = set()  # integers written 0644 (YAML 1.1, as Ansible reads its files)
        self.yaml11 = False  # read as Ansible reads its files (set by load_text)

    # --- positions ------------------------------------------------------------
    def value_pos(self, path: Iterable[Any] = ()) -> tuple[int, int]:
        """1-based (line, column) of the value at ``path`` (or of its nearest known parent)."""
        path = tuple(path)
        while path not in self._vpos:
            path = path[:-1]
        return self._vpos[path]

    def key_pos(self, path: Iterable[Any]) -> tuple[int, int]:
        """1-based (line, column) of the key of the mapping entry at ``path``."""
        path = tuple(path)
        if path in self._kpos:
            return self._kpos[path]
        return self.value_pos(path)

    def style(self, path: Iterable[Any]) -> str | None:
        """How the scalar at ``path`` was written: plain, ', ", | or > (None: not a scalar)."""
        return self._style.get(tuple(path))

    def source_line(self, line: int) -> str:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""

    def line_comment(self, path: Iterable[Any]) -> str:
        """The ``# comment`` ending the line of the value at ``path`` ("" when none)."""
        line, col = self.value_pos(path)
        text = self.source_line(line)
        # the first '#' after the value that starts a comment (preceded by a blank)
        for match in re.finditer(r"(^|\s)#", text[col - 1 :]):
            return text[col - 1 + match.end() :].strip()
        return ""

    def diag(self, path: Iterable[Any], message: str, *, key: bool = False) -> Diagnostic:
        line, col = self.key_pos(path) if key else self.value_pos(path)
        return self.diag_at(line, col, message)

    def diag_at(self, line: int, col: int, message: str) -> Diagnostic:
        return Diagnostic(self.display, line, col, message, self.source_line(line))

    # --- building -------------------------------------------------------------
    def _convert(self, node: Any, path: Path_, stack: tuple[int, ...]) -> Any:
        if len(path) > MAX_DEPTH:
            raise _Problem(path, f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, CommentedMap):
            if id(node) in stack:
                raise _Problem(path, "a recursive alias (an anchor that contains itself)")
            out: dict[str, Any] = {}
            for key, value in node.items():
                name = _key_name(key)
                child = path + (name,)
                self._record(node, key, child)
                if name in out:
                    raise _Problem(child, f"duplicate key '{name}'", key=True)
                out[name] = self._convert(value, child, stack + (id(node),))
            return out
        if isinstance(node, CommentedSeq):
            if id(node) in stack:
                raise _Problem(path, "a recursive alias (an anchor that contains itself)")
            items = []
            for index, value in enumerate(node):
                child = path + (index,)
                try:
                    line, col = node.lc.item(index)
                    self._vpos[child] = (line + 1, col + 1)
                except (KeyError, IndexError, TypeError, AttributeError):
                    pass
                items.append(self._convert(value, child, stack + (id(node),)))
            return items
        if isinstance(node, dict):  # plain dicts (e.g. from merges): no positions
            return {_key_name(k): self._convert(v, path + (_key_name(k),), stack) for k, v in node.items()}
        if isinstance(node, (list, tuple, set)):
            return [self._convert(v, path + (i,), stack) for i, v in enumerate(node)]
        return self._scalar(node, path)

    def _record(self, mapping: CommentedMap, key: Any, child: Path_) -> None:
        try:
            kline, kcol = mapping.lc.key(key)
            self._kpos[child] = (kline + 1, kcol + 1)
            vline, vcol = mapping.lc.value(key)
            self._vpos[child] = (vline + 1, vcol + 1)
        except (KeyError, IndexError, TypeError, AttributeError):
            pass  # merged (<<) keys have no position of their own

    def _scalar(self, node: Any, path: Path_) -> Any:
        if isinstance(node, TaggedScalar):
            self._style[path] = PLAIN
            if str(node.tag.value if hasattr(node.tag, "value") else node.tag) == "!vault":
                self.vaulted.add(path)
            return str(node.value) if node.value is not None else None
        if isinstance(node, DoubleQuotedScalarString):
            self._style[path] = DOUBLE
            return str(node)
        if isinstance(node, SingleQuotedScalarString):
            self._style[path] = SINGLE
            return str(node)
        if isinstance(node, LiteralScalarString):
            self._style[path] = LITERAL
            return str(node)
        if isinstance(node, FoldedScalarString):
            self._style[path] = FOLDED
            return str(node)
        self._style[path] = PLAIN
        if isinstance(node, bool) or node is None:
            return node if node is None else bool(node)
        if isinstance(node, int):
            if type(node).__name__ == "OctalInt":
                self.octal.add(path)
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            return str(node)
        if isinstance(node, (datetime.date, datetime.datetime)):
            return node.isoformat()
        if isinstance(node, bytes):
            return node.decode("utf-8", "replace")
        return str(node)


class _Problem(Exception):
    def __init__(self, path: Path_, message: str, key: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.key = key


def _key_name(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (tuple, list)):
        return "[" + ", ".join(_key_name(k) for k in key) + "]"
    return str(key)


def _mark_position(mark: Any) -> tuple[int, int] | None:
    if mark is None:
        return None
    try:
        return int(mark.line) + 1, int(mark.column) + 1
    except (AttributeError, TypeError, ValueError):
        return None


def _offset_position(text: str, offset: int) -> tuple[int, int]:
    before = text[: max(offset, 0)]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


def _syntax_diagnostic(doc: Document, exc: BaseException) -> Diagnostic:
    if isinstance(exc, ReaderError):
        line, col = _offset_position(doc.text, getattr(exc, "position", 0) or 0)
        return doc.diag_at(
            line,
            col,
            f"YAML syntax error: unacceptable character {getattr(exc, 'character', '')!r}"
            " (control characters are not allowed)",
        )
    if isinstance(exc, MarkedYAMLError):
        where = _mark_position(exc.problem_mark) or _mark_position(exc.context_mark) or (1, 1)
        problem = (exc.problem or "").strip()
        duplicate = re.match(r'found duplicate key "(.*)" with value', problem, re.S)
        if duplicate:
            first = _mark_position(exc.context_mark)
            message = f"duplicate key '{duplicate.group(1)}'"
            if first:
                message += f" in the mapping starting at line {first[0]}"
            return doc.diag_at(*where, message)
        context = (exc.context or "").strip()
        message = "YAML syntax error: " + (problem or context or "invalid YAML")
        context_at = _mark_position(exc.context_mark)
        if problem and context and context_at and context_at != where:
            message += f" ({context} at line {context_at[0]}, column {context_at[1]})"
        return doc.diag_at(*where, message)
    if isinstance(exc, RecursionError):
        return doc.diag_at(1, 1, "YAML nesting too deep")
    return doc.diag_at(1, 1, f"YAML syntax error: {str(exc).strip() or type(exc).__name__}")


def load_text(text: str, display: str, path: Path | None = None, yaml11: bool = False) -> Document:
    """Parse ``text``; raise InvalidInput (never anything else) when it is not valid YAML.

    ``yaml11``: read it as Ansible does (YAML 1.1: ``yes`` is true, ``0644`` is octal), for
    the files of a role in Ansible's layout.
    """
    doc = Document(path, display, text)
    doc.yaml11 = yaml11
    yaml = YAML(typ="rt")
    source = text
    if yaml11:
        yaml.version = (1, 1)
        # ruamel goes back to YAML 1.2 at a '---' line: blank the opening one (the lines keep their numbers)
        source = re.sub(r"\A((?:[ \t]*(?:#[^\n]*)?\n)*)---[ \t]*(?=\n|\Z)", r"\1", text, count=1)
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    try:
        node = yaml.load(source)
    except Exception as exc:  # ruamel raises more than YAMLError on hostile input; never a traceback
        raise InvalidInput([_syntax_diagnostic(doc, exc)]) from None
    try:
        doc._vpos[()] = (node.lc.line + 1, node.lc.col + 1)  # where the root collection starts
    except (AttributeError, TypeError):
        pass
    try:
        doc.data = doc._convert(node, (), ())
    except _Problem as problem:
        raise InvalidInput([doc.diag(problem.path, problem.message, key=problem.key)]) from None
    except RecursionError:
        raise InvalidInput([doc.diag_at(1, 1, "YAML nesting too deep")]) from None
    return doc


def load_yaml(path: Path, display: str | None = None, yaml11: bool = False) -> Document:
    """Read and parse one YAML file (see :func:`load_text`)."""
    path = Path(path)
    shown = display or display_path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput([Diagnostic(shown, 1, 1, f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8", "replace")
        line, col = _offset_position(before, len(before))
        raise InvalidInput([Diagnostic(shown, line, col, "not UTF-8 text")]) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return load_text(text, shown, path, yaml11)


def kind_of(value: Any) -> str:
    """How an error message names a YAML value's type ("got a list")."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"
