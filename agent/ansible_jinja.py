"""Ansible's Jinja2 filters, tests and lookups, stdlib-only, for templates and expressions on the box.

Names and results follow ansible-core (tests/test_ansible_jinja.py renders the same expressions with
ansible's own environment and compares). YAML is written and read by a small stdlib emitter/reader:
block and flow collections, plain and quoted scalars; anchors, tags and multi-document streams are not
supported (a clear error says so).
"""

from __future__ import annotations

import base64
import collections.abc
import functools
import hashlib
import itertools
import json
import os
import random
import re
import shlex
from typing import Any, Callable, Dict, List, Optional

OMIT = "__omit_place_holder__kiln__"


class FilterError(Exception):
    pass


# --- filters ---------------------------------------------------------------------------------
def to_bool(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return value == 1


def regex_search(value: Any, pattern: str, *groups: str, ignorecase: bool = False, multiline: bool = False) -> Any:
    flags = (re.I if ignorecase else 0) | (re.M if multiline else 0)
    match = re.search(pattern, str(value), flags)
    if not match:
        return None
    if not groups:
        return match.group(0)
    picked = []
    for group in groups:
        if group.startswith("\\g<"):
            picked.append(match.group(group[3:-1]))
        elif group.startswith("\\"):
            picked.append(match.group(int(group[1:])))
        else:
            raise FilterError(f"regex_search: unknown group {group}")
    return picked


def regex_replace(
    value: Any,
    pattern: str = "",
    replacement: str = "",
    ignorecase: bool = False,
    multiline: bool = False,
    count: int = 0,
) -> str:
    flags = (re.I if ignorecase else 0) | (re.M if multiline else 0)
    return re.sub(pattern, replacement, str(value), count=count, flags=flags)


def regex_findall(value: Any, pattern: str, ignorecase: bool = False, multiline: bool = False) -> List[Any]:
    flags = (re.I if ignorecase else 0) | (re.M if multiline else 0)
    return re.findall(pattern, str(value), flags)


def combine(*dicts: Any, recursive: bool = False, list_merge: str = "replace") -> Dict[str, Any]:
    flat: List[Dict[str, Any]] = []
    for item in dicts:
        flat.extend(item if isinstance(item, list) else [item])
    result: Dict[str, Any] = {}
    for item in flat:
        result = _merge(result, item, recursive, list_merge)
    return result


def _merge(base: Dict[str, Any], other: Dict[str, Any], recursive: bool, list_merge: str) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in other.items():
        old = merged.get(key)
        if recursive and isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge(old, value, recursive, list_merge)
        elif isinstance(old, list) and isinstance(value, list) and list_merge != "replace":
            merged[key] = {
                "keep": old,
                "append": old + value,
                "prepend": value + old,
                "append_rp": [x for x in old if x not in value] + value,
                "prepend_rp": value + [x for x in old if x not in value],
            }[list_merge]
        else:
            merged[key] = value
    return merged


def dict2items(value: Dict[str, Any], key_name: str = "key", value_name: str = "value") -> List[Dict[str, Any]]:
    if not isinstance(value, dict):
        raise FilterError(f"dict2items requires a dictionary, got {type(value).__name__}")
    return [{key_name: k, value_name: v} for k, v in value.items()]


def items2dict(value: List[Dict[str, Any]], key_name: str = "key", value_name: str = "value") -> Dict[str, Any]:
    return {item[key_name]: item[value_name] for item in value}


def flatten(value: List[Any], levels: Optional[int] = None, skip_nulls: bool = True) -> List[Any]:
    out: List[Any] = []
    for item in value:
        if skip_nulls and item in (None, "None", "null"):
            continue
        if isinstance(item, (list, tuple)) and (levels is None or levels > 0):
            out.extend(flatten(list(item), None if levels is None else levels - 1, skip_nulls))
        else:
            out.append(item)
    return out


def unique(value: List[Any]) -> List[Any]:
    out: List[Any] = []
    for item in value:
        if item not in out:
            out.append(item)
    return out


def _set_op(a: List[Any], b: List[Any], op: str) -> List[Any]:
    """As ansible-core: a set operation (set order) when all items are hashable, else order kept."""
    try:
        left, right = set(a), set(b)
    except TypeError:
        both = unique(list(a) + list(b))
        keep = {
            "|": lambda x: True,
            "&": lambda x: x in a and x in b,
            "-": lambda x: x in a and x not in b,
            "^": lambda x: (x in a) != (x in b),
        }[op]
        return [x for x in both if keep(x)]
    return list({"|": left | right, "&": left & right, "-": left - right, "^": left ^ right}[op])


def union(a: List[Any], b: List[Any]) -> List[Any]:
    return _set_op(a, b, "|")


def intersect(a: List[Any], b: List[Any]) -> List[Any]:
    return _set_op(a, b, "&")


def difference(a: List[Any], b: List[Any]) -> List[Any]:
    return _set_op(a, b, "-")


def symmetric_difference(a: List[Any], b: List[Any]) -> List[Any]:
    return _set_op(a, b, "^")


def ternary(value: Any, true_val: Any, false_val: Any, none_val: Any = None) -> Any:
    if value is None and none_val is not None:
        return none_val
    return true_val if value else false_val


def mandatory(value: Any, msg: Optional[str] = None) -> Any:
    import jinja2

    if isinstance(value, jinja2.Undefined):
        raise FilterError(msg or f"Mandatory variable {getattr(value, '_undefined_name', '')!r} not defined.")
    return value


COMMENT_STYLES: Dict[str, Dict[str, str]] = {
    "plain": {"decoration": "# "},
    "erlang": {"decoration": "% "},
    "c": {"decoration": "// "},
    "cblock": {"beginning": "/*", "decoration": " * ", "end": " */"},
    "xml": {"beginning": "<!--", "decoration": " - ", "end": "-->"},
}


def comment(text: str, style: str = "plain", **kw: Any) -> str:
    """Ansible's ``comment``: the text as a comment block (prefix/postfix lines, decoration per line)."""
    if style not in COMMENT_STYLES:
        raise FilterError(f"Invalid style {style!r}. Available styles: {', '.join(COMMENT_STYLES)}")
    style_params = COMMENT_STYLES[style]
    prepostfix = kw.get("decoration", style_params["decoration"])
    p: Dict[str, Any] = {
        "newline": "\n",
        "beginning": "",
        "prefix": prepostfix.rstrip(),
        "prefix_count": 1,
        "decoration": "",
        "postfix": prepostfix.rstrip(),
        "postfix_count": 1,
        "end": "",
    }
    p.update(style_params)
    p.update(kw)
    newline, decoration = p["newline"], p["decoration"]
    beginning = f"{p['beginning']}{newline}" if p["beginning"] else ""
    prefix = ""
    if p["prefix"]:
        prefix = (newline if p["prefix"] == newline else f"{p['prefix']}{newline}") * int(p["prefix_count"])
    body = (decoration + text.replace(newline, newline + decoration)).replace(
        decoration + newline, decoration.rstrip() + newline
    )
    postfix = newline.join([""] + [p["postfix"]] * int(p["postfix_count"]))
    end = f"{newline}{p['end']}" if p["end"] else ""
    return beginning + prefix + body + postfix + end


def hash_filter(value: Any, algorithm: str = "sha1") -> str:
    data = value.encode() if isinstance(value, str) else bytes(value)
    return hashlib.new(algorithm, data).hexdigest()


def password_hash(
    password: str,
    hashtype: str = "sha512",
    salt: Optional[str] = None,
    salt_size: Optional[int] = None,
    rounds: Optional[int] = None,
    ident: Optional[str] = None,
) -> str:
    """sha256/sha512/md5 crypt through the stdlib ``crypt`` module (Python <= 3.12); 3.13 has none."""
    try:
        import crypt  # deprecated in 3.11, removed in 3.13
    except ImportError:
        raise FilterError(
            "password_hash needs the crypt module, which Python 3.13 removed: "
            "hash the password on the controller and pass the hash"
        ) from None
    prefix = {"sha512": "$6$", "sha256": "$5$", "md5": "$1$"}.get(hashtype)
    if prefix is None:
        raise FilterError(f"password_hash: unsupported hash type {hashtype} (sha512, sha256, md5)")
    if salt is None:
        alphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        salt = "".join(random.SystemRandom().choice(alphabet) for _ in range(salt_size or 16))
    spec = prefix + (f"rounds={rounds}$" if rounds and prefix != "$1$" else "") + salt
    return crypt.crypt(password, spec)


def b64decode(value: str, encoding: str = "utf-8") -> str:
    return base64.b64decode(value).decode(encoding)


def b64encode(value: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(value.encode(encoding)).decode("ascii")


def to_json(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, **kwargs)


def to_nice_json(value: Any, indent: int = 4, sort_keys: bool = True, **kwargs: Any) -> str:
    return json.dumps(value, indent=indent, sort_keys=sort_keys, separators=(",", ": "), **kwargs)


def zip_filter(*lists: Any) -> List[Any]:
    return [list(group) for group in zip(*lists)]  # noqa: B905 - no strict= on Python 3.9


def zip_longest(*lists: Any, fillvalue: Any = None) -> List[Any]:
    return [list(group) for group in itertools.zip_longest(*lists, fillvalue=fillvalue)]


def version_compare(value: Any, version: Any, operator: str = "eq", strict: bool = False) -> bool:
    ops = {
        "==": "eq",
        "=": "eq",
        "eq": "eq",
        "<": "lt",
        "lt": "lt",
        "<=": "le",
        "le": "le",
        ">": "gt",
        "gt": "gt",
        ">=": "ge",
        "ge": "ge",
        "!=": "ne",
        "<>": "ne",
        "ne": "ne",
    }
    if operator not in ops:
        raise FilterError(f"version: invalid operator {operator}")
    left, right = _loose_version(str(value)), _loose_version(str(version))
    return {
        "eq": left == right,
        "lt": left < right,
        "le": left <= right,
        "gt": left > right,
        "ge": left >= right,
        "ne": left != right,
    }[ops[operator]]


def _loose_version(text: str) -> List[Any]:
    """distutils' LooseVersion: numbers compare as numbers, words as words."""
    parts = [p for p in re.split(r"(\d+|[a-z]+|\.)", text) if p and p != "."]
    return [int(p) if p.isdigit() else p for p in parts]


def quote(value: Any) -> str:
    return shlex.quote(str(value))


def regex_escape(value: str, re_type: str = "python") -> str:
    if re_type == "posix_basic":
        return re.sub(r"([].[^$*\\])", r"\\\1", value)
    return re.escape(value)


def split_filter(value: str, sep: Optional[str] = None, maxsplit: int = -1) -> List[str]:
    return value.split(sep, maxsplit)


def human_to_bytes(value: Any) -> int:
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)i?B?\s*$", str(value), re.I)
    if not match:
        raise FilterError(f"human_to_bytes: cannot read {value!r}")
    return int(float(match.group(1)) * 1024 ** "BKMGTPE".index((match.group(2) or "B").upper()))


FILTERS: Dict[str, Callable[..., Any]] = {
    "bool": to_bool,
    "regex_search": regex_search,
    "regex_replace": regex_replace,
    "regex_findall": regex_findall,
    "regex_escape": regex_escape,
    "combine": combine,
    "dict2items": dict2items,
    "items2dict": items2dict,
    "flatten": flatten,
    "unique": unique,
    "union": union,
    "intersect": intersect,
    "difference": difference,
    "symmetric_difference": symmetric_difference,
    "ternary": ternary,
    "mandatory": mandatory,
    "comment": comment,
    "hash": hash_filter,
    "checksum": lambda v: hash_filter(v, "sha1"),
    "md5": lambda v: hash_filter(v, "md5"),
    "sha1": lambda v: hash_filter(v, "sha1"),
    "password_hash": password_hash,
    "b64decode": b64decode,
    "b64encode": b64encode,
    "to_json": to_json,
    "to_nice_json": to_nice_json,
    "from_json": json.loads,
    "basename": os.path.basename,
    "dirname": os.path.dirname,
    "expanduser": os.path.expanduser,
    "realpath": os.path.realpath,
    "splitext": lambda v: list(os.path.splitext(v)),
    "quote": quote,
    "shuffle": lambda v: random.sample(v, len(v)),
    "zip": zip_filter,
    "zip_longest": zip_longest,
    "version_compare": version_compare,
    "version": version_compare,
    "split": split_filter,
    "type_debug": lambda v: type(v).__name__,
    "human_to_bytes": human_to_bytes,
    "to_yaml": lambda v, **kw: to_yaml(v),
    "to_nice_yaml": lambda v, **kw: to_yaml(v, nice=True),
    "from_yaml": lambda v: from_yaml(v),
    "path_join": lambda v: os.path.join(*v),
    "extract": lambda key, container, morekeys=None: container[key],
    "strftime": lambda fmt, t=None: __import__("time").strftime(fmt, __import__("time").localtime(t)),
}


# --- tests -----------------------------------------------------------------------------------
def _result(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise FilterError("The 'failed'/'changed'/... tests only operate on a registered result (a dict)")
    return value


def _regex_test(mode: str) -> Callable[..., bool]:
    def test(value: Any, pattern: str = "", ignorecase: bool = False, multiline: bool = False) -> bool:
        flags = (re.I if ignorecase else 0) | (re.M if multiline else 0)
        return bool(getattr(re, mode)(pattern, str(value), flags))

    return test


def _subset(a: Any, b: Any) -> bool:
    return set(a) <= set(b)


TESTS: Dict[str, Callable[..., bool]] = {
    "failed": lambda r: bool(_result(r).get("failed")),
    "failure": lambda r: bool(_result(r).get("failed")),
    "succeeded": lambda r: not _result(r).get("failed"),
    "success": lambda r: not _result(r).get("failed"),
    "successful": lambda r: not _result(r).get("failed"),
    "changed": lambda r: bool(_result(r).get("changed")),
    "change": lambda r: bool(_result(r).get("changed")),
    "skipped": lambda r: bool(_result(r).get("skipped")),
    "skip": lambda r: bool(_result(r).get("skipped")),
    "match": _regex_test("match"),
    "search": _regex_test("search"),
    "regex": _regex_test("search"),
    "version": version_compare,
    "version_compare": version_compare,
    "truthy": lambda v, convert_bool=False: bool(to_bool(v) if convert_bool else v),
    "falsy": lambda v, convert_bool=False: not (to_bool(v) if convert_bool else v),
    "subset": _subset,
    "superset": lambda a, b: _subset(b, a),
    "contains": lambda seq, item: item in seq,
    "any": lambda seq: any(seq),
    "all": lambda seq: all(seq),
    "abs": os.path.isabs,
    "exists": os.path.exists,
    "file": os.path.isfile,
    "directory": os.path.isdir,
    "link": os.path.islink,
}


# --- YAML (a safe subset) --------------------------------------------------------------------
PLAIN_UNSAFE = re.compile(r"^[\s\-?:,\[\]{}#&*!|>'\"%@`]|:\s|\s#|\s$|^$")
SPECIAL_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "\n" in text or PLAIN_UNSAFE.search(text) or text.lower() in SPECIAL_WORDS or _number(text) is not None:
        return "'" + text.replace("'", "''") + "'" if "\n" not in text else json.dumps(text)
    return text


def to_yaml(value: Any, nice: bool = False) -> str:
    """YAML as ansible-core's to_yaml (PyYAML: sorted keys, flow style for collections of scalars) or
    to_nice_yaml (block style, indent 4)."""
    step = 4 if nice else 2
    if not isinstance(value, (dict, list)) or not value or (not nice and _flat(value)):
        return _inline(value) + "\n"
    return "".join(_block_lines(value, 0, step, not nice))


def _flat(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return all(not isinstance(item, (dict, list)) or not item for item in items)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_inline(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return _scalar(value)


def _nested(value: Any, flow: bool) -> bool:
    """A value written on lines of its own below its key or dash."""
    return isinstance(value, (dict, list)) and bool(value) and not (flow and _flat(value))


def _block_lines(value: Any, indent: int, step: int, flow: bool) -> List[str]:
    pad = " " * indent
    lines: List[str] = []
    if isinstance(value, dict):
        for key, item in sorted(value.items()):
            if not _nested(item, flow):
                lines.append(f"{pad}{_scalar(key)}: {_inline(item)}\n")
            else:
                lines.append(f"{pad}{_scalar(key)}:\n")
                lines += _block_lines(item, indent + step if isinstance(item, dict) else indent, step, flow)
        return lines
    for item in value:
        if not _nested(item, flow):
            lines.append(f"{pad}- {_inline(item)}\n")
            continue
        inner = _block_lines(item, indent + step, step, flow)
        lines.append(f"{pad}-{' ' * (step - 1)}{inner[0][indent + step :]}")
        lines += inner[1:]
    return lines


def _number(text: str) -> Any:
    if re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", text):
        return int(text)
    if re.fullmatch(r"0o[0-7]+", text):
        return int(text[2:], 8)
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", text):
        return float(text)
    return None


def _plain(text: str) -> Any:
    word = text.strip()
    lower = word.lower()
    if lower in ("true", "yes", "on"):
        return True
    if lower in ("false", "no", "off"):
        return False
    if lower in ("null", "~", ""):
        return None
    number = _number(word)
    return word if number is None else number


class YamlError(FilterError):
    pass


def from_yaml(text: str) -> Any:
    """Read the common subset of YAML roles use (see the module docstring for what is not read)."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = _strip_comment(raw).rstrip()
        if stripped.strip() in ("---", "...") or not stripped.strip():
            continue
        if re.match(r"^\s*[&*!]|:\s+[&*!]|^\s*-\s+[&*!]", stripped) or stripped.lstrip().startswith("%"):
            raise YamlError(f"YAML line {number}: anchors, aliases, tags and directives are not supported here")
        lines.append((len(stripped) - len(stripped.lstrip()), stripped.strip(), number))
    if not lines:
        return None
    value, position = _block(lines, 0, lines[0][0])
    if position != len(lines):
        raise YamlError(f"YAML line {lines[position][2]}: unexpected indentation")
    return value


def _strip_comment(line: str) -> str:
    quote_char = None
    for i, ch in enumerate(line):
        if quote_char:
            if ch == quote_char:
                quote_char = None
        elif ch in "'\"" and (i == 0 or line[i - 1] in " :-[{,"):
            quote_char = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _block(lines: List[Any], position: int, indent: int) -> Any:
    if lines[position][1].startswith("- ") or lines[position][1] == "-":
        items: List[Any] = []
        while position < len(lines) and lines[position][0] == indent and lines[position][1].startswith("-"):
            rest = lines[position][1][1:].strip()
            if not rest:
                value, position = _block(lines, position + 1, lines[position + 1][0])
            elif _key_of(rest) is not None:
                inner = indent + 2
                lines[position] = (inner, rest, lines[position][2])
                value, position = _block(lines, position, inner)
            else:
                value, position = _value(rest, lines, position)
            items.append(value)
        return items, position
    mapping: Dict[str, Any] = {}
    while position < len(lines) and lines[position][0] == indent:
        text = lines[position][1]
        key = _key_of(text)
        if key is None:
            if len(lines) == 1:
                return _flow_or_scalar(text), position + 1
            raise YamlError(f"YAML line {lines[position][2]}: expected 'key: value'")
        rest = text[len(key[1]) :].lstrip()[1:].strip()
        if rest:
            mapping[key[0]], position = _value(rest, lines, position)
        elif position + 1 < len(lines) and (
            lines[position + 1][0] > indent or (lines[position + 1][0] == indent and lines[position + 1][1][:1] == "-")
        ):
            mapping[key[0]], position = _block(lines, position + 1, lines[position + 1][0])
        else:
            mapping[key[0]], position = None, position + 1
    return mapping, position


def _key_of(text: str) -> Optional[tuple]:
    match = re.match(r"""^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^'"\[{][^:#]*?)\s*:(\s|$)""", text)
    if not match:
        return None
    raw = match.group(1)
    key = _flow_or_scalar(raw)
    return (key if not isinstance(key, str) or raw[:1] in "'\"" else raw.strip(), raw)


def _value(rest: str, lines: List[Any], position: int) -> Any:
    if rest in ("|", "|-", "|+", ">", ">-", ">+"):
        indent = lines[position][0]
        block = []
        nxt = position + 1
        while nxt < len(lines) and lines[nxt][0] > indent:
            block.append(lines[nxt])
            nxt += 1
        raise (
            YamlError(f"YAML line {lines[position][2]}: block scalars (| and >) are not supported here")
            if not block
            else _block_scalar(rest, block, nxt)
        )
    return _flow_or_scalar(rest), position + 1


def _block_scalar(style: str, block: List[Any], nxt: int) -> Any:
    base = block[0][0]
    texts = [" " * (indent - base) + text for indent, text, _ in block]
    body = "\n".join(texts) if style[0] == "|" else " ".join(texts)
    return body + ("" if style.endswith("-") else "\n"), nxt


def _flow_or_scalar(text: str) -> Any:
    text = text.strip()
    if text[:1] in "[{":
        return _flow(text)
    if text[:1] == '"':
        return json.loads(text)
    if text[:1] == "'":
        return text[1:-1].replace("''", "'")
    return _plain(text)


def _flow(text: str) -> Any:
    """Flow collections: quote bare words, then read as JSON."""
    tokens = re.findall(r"""("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[\[\]{},:]|[^\[\]{},:'"]+)""", text)
    out = []
    for token in tokens:
        stripped = token.strip()
        if not stripped:
            continue
        if stripped in "[]{},:":
            out.append(stripped)
        else:
            out.append(json.dumps(_flow_or_scalar(stripped)))
    try:
        return json.loads("".join(out))
    except ValueError as exc:
        raise YamlError(f"YAML flow collection {text!r}: {exc}") from None


# --- install ---------------------------------------------------------------------------------
def install(env: Any) -> None:
    """Ansible's filters and tests, and ``omit``, on a Jinja2 environment (kiln's own filters stay)."""
    for name, function in FILTERS.items():
        env.filters[name] = function
    env.filters["d"] = env.filters["default"]
    for name, function in TESTS.items():
        env.tests[name] = function
    env.globals["omit"] = OMIT
    for name, function in list(env.filters.items()):
        env.filters[name] = _consumed_output(function)


#: what a filter or a call may give that ansible-core turns into a list at once (``map``, ``select``, ``reverse``,
#: ``dict.items()``): a value read twice, indexed or shown as text is the same list every time
ITERATOR_TYPES = (
    collections.abc.Iterator,
    collections.abc.ItemsView,
    collections.abc.KeysView,
    collections.abc.ValuesView,
)


def consumed(value: Any) -> Any:
    """``value``, a list if it is an iterator or a dict's view, as ansible-core has a filter's or a call's output."""
    return list(value) if isinstance(value, ITERATOR_TYPES) else value


def _consumed_output(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps Jinja's pass_context/pass_environment marks
    def filter_consumed(*args: Any, **kwargs: Any) -> Any:
        return consumed(function(*args, **kwargs))

    return filter_consumed
