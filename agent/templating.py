"""Jinja2 expressions and templates, evaluated on the box.

Jinja2 and MarkupSafe are pure Python; the controller packs them into the agent's
zipapp beside the agent, so nothing needs installing on the box. Every other part
of the agent is stdlib-only. Jinja2 is imported the first time something is templated:
a run whose steps template nothing never loads it.
"""

from __future__ import annotations

import collections
import copy
import functools
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

if TYPE_CHECKING:
    import jinja2

WHOLE_EXPRESSION = re.compile(r"^[ \t]*\{\{(?!.*\{\{)(.*)\}\}[ \t]*\Z", re.S)


class TemplateError(Exception):
    """A template or expression could not be rendered; ``undefined``: because a name is not defined."""

    def __init__(self, msg: str, undefined: bool = False) -> None:
        super().__init__(msg)
        self.undefined = undefined


class VariableCycle(TemplateError):
    """Variables that need each other to be templated."""


#: a layer of a Scope: its values, and which of them are templates to render when read
#: (True: all, False: none, a set: those names; the set is read live, so it may change)
Layer = Tuple[Mapping[str, Any], Union[bool, "set[str]", "frozenset[str]"]]


class Scope(Mapping):
    """Variables as Ansible has them: a variable written as a template is rendered when it is read,
    with the variables as they are then, so a variable may use one defined after it (``a: "{{ b.port }}"``,
    ``b: {port: "{{ c }}"}``) or one a later step registers. Data (facts, registered results, set_fact
    values, loop items) is never templated again.

    A name not defined reads as Jinja's undefined; a variable whose own template reads an undefined name
    reads as undefined too, with a message naming the variable (and where it is written, from ``sources``),
    so ``| default(...)`` and ``is defined`` work on it as in Ansible. Variables that need each other in a
    cycle are an error naming them. Each Scope renders a variable at most once: make a new one (``child``)
    when the variables change.
    """

    def __init__(self, layers: List[Layer], sources: Optional[Mapping[str, str]] = None) -> None:
        self.layers = layers
        self.sources = sources or {}
        self._done: Dict[str, Any] = {}
        self._reading: List[str] = []

    def child(self, values: Mapping[str, Any], templated: Union[bool, "set[str]"] = False) -> "Scope":
        """A new scope with ``values`` above this one's layers (nothing rendered yet)."""
        return Scope([(values, templated)] + self.layers, self.sources)

    def raw(self, name: str) -> Tuple[Any, bool]:
        """``name``'s value as written, and whether it is a template to render."""
        for values, templated in self.layers:
            if name in values:
                return values[name], (templated if isinstance(templated, bool) else name in templated)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(name in values for values, _ in self.layers)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for values, _ in self.layers for name in values))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, name: str) -> Any:
        if name in self._done:
            return self._done[name]
        value, templated = self.raw(name)
        if templated and has_template(value):
            value = self._render(name, value)
        self._done[name] = value
        return value

    def _render(self, name: str, value: Any) -> Any:
        if name in self._reading:
            cycle = self._reading[self._reading.index(name) :] + [name]
            raise VariableCycle(
                "variables "
                + " -> ".join(f"'{n}'{self._where(n)}" for n in cycle)
                + " need each other in a cycle: none of them can be templated"
            )
        self._reading.append(name)
        try:
            result = render(value, self)
        except TemplateError as exc:
            if isinstance(exc, VariableCycle):
                raise
            if not exc.undefined:
                raise TemplateError(f"variable '{name}'{self._where(name)}: {exc}") from None
            return environment().undefined(hint=f"variable '{name}'{self._where(name)}: {exc}", name=name)
        finally:
            self._reading.pop()
        return result

    def _where(self, name: str) -> str:
        return f" ({self.sources[name]})" if name in self.sources else ""


def has_template(value: Any) -> bool:
    """Whether ``value`` holds a template anywhere (a string, or one inside a dict or list)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(has_template(v) for v in value)
    return False


def _is_undefined(value: Any) -> bool:
    import jinja2

    return isinstance(value, jinja2.Undefined)


def as_scope(variables: Mapping[str, Any]) -> Scope:
    """``variables`` as a Scope: itself, or a plain mapping read as data (nothing templated again)."""
    return variables if isinstance(variables, Scope) else Scope([(variables, False)])


def _context_parent(variables: Mapping[str, Any], template: Any) -> Mapping[str, Any]:
    """What a template reads names from: the variables (read lazily, never copied), then its globals."""
    return collections.ChainMap(variables, template.globals)  # type: ignore[arg-type]


def _environment(loader: Any = None, escape_backslashes: bool = False, **options: Any) -> "jinja2.Environment":
    """An environment set as ansible-core sets its own, for values and template files alike: ``trim_blocks``,
    no ``lstrip_blocks``, Jinja's ``keep_trailing_newline`` (off: ``keep_trailing_newlines`` puts back what the
    source ends with), and native output (see ``_ansible_output_class``); ``options`` from a ``#jinja2:`` header."""
    import jinja2

    from . import ansible_jinja

    kind = _value_environment_class() if escape_backslashes else _ansible_output_class()
    env = kind(
        undefined=jinja2.StrictUndefined,
        loader=loader,
        finalize=jinja2.pass_context(_unfolded),
        **{"trim_blocks": True, **options},
    )
    ansible_jinja.install(env)
    env.globals["lookup"] = jinja2.pass_context(lookup)
    env.globals["query"] = env.globals["q"] = jinja2.pass_context(query)
    return env


def _unfolded(_context: Any, value: Any) -> Any:
    """Jinja's finalize, as ansible-core's: it takes the context, so Jinja folds no constant output into the
    template's text when compiling (``x{{ (1, 2) }}`` is finalized as it renders, as any other)."""
    return value


def ansible_concat(nodes: Iterable[Any]) -> Any:
    """A template's output as ansible-core 2.19 joins it: ``None`` pieces are left out (``a{{ none }}b`` is
    ``ab``), nothing at all is ``None``, a single piece keeps its type (``{% if x %}{{ port }}{% endif %}``
    is an int), several are joined as text, without the ``omit`` ones (``a{{ omit }}`` is ``a``)."""
    pieces = [node for node in nodes if node is not None]
    if not pieces:
        return None
    if len(pieces) == 1:
        return pieces[0]
    return "".join(str(finalize(piece, top_level=False)) for piece in pieces if not _is_omit(piece))


def finalize(value: Any, top_level: bool = True) -> Any:
    """A rendered value as ansible-core 2.19 finalizes it: ``omit`` drops out of lists and mappings, tuples are
    lists, and (``top_level``: a whole value, not a piece of text) sets and other sequences are lists and other
    mappings dicts; an undefined name anywhere inside is an error."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if _is_undefined(value):
        if top_level or _is_strict_undefined(value):  # Jinja's own (an if without else) is '' in text
            value._fail_with_undefined_error()
        return value
    if isinstance(value, dict) or (top_level and isinstance(value, Mapping)):
        return {finalize(k, top_level): finalize(v, top_level) for k, v in value.items() if not _is_omit(v)}
    if isinstance(value, (list, tuple)) or (
        top_level and isinstance(value, (set, frozenset, collections.abc.Sequence))
    ):
        return [finalize(v, top_level) for v in value if not _is_omit(v)]
    return value


def _is_strict_undefined(value: Any) -> bool:
    import jinja2

    return isinstance(value, jinja2.StrictUndefined)


def _is_omit(value: Any) -> bool:
    from .ansible_jinja import OMIT

    return isinstance(value, str) and value == OMIT


def keep_trailing_newlines(source: str, result: Any) -> Any:
    """ansible-core's top-level rule: a text result ends with at least as many newlines as its source."""
    if not isinstance(result, str):
        return result
    missing = (len(source) - len(source.rstrip("\n"))) - (len(result) - len(result.rstrip("\n")))
    return result + "\n" * missing if missing > 0 else result


@functools.lru_cache(maxsize=None)
def _ansible_output_class() -> type:
    """The sandboxed environment with ansible-core's output: pieces are not turned into text one by one (Jinja's
    native code generator) and are joined by ``ansible_concat``."""
    import jinja2.nativetypes

    class AnsibleOutputCodeGenerator(jinja2.nativetypes.NativeCodeGenerator):
        def _output_const_repr(self, group: Iterable[Any]) -> str:
            pieces = list(group)
            return repr(pieces[0]) if len(pieces) == 1 else repr("".join(map(str, pieces)))

    class AnsibleOutputEnvironment(_sandboxed_class()):  # type: ignore[misc]
        code_generator_class = AnsibleOutputCodeGenerator
        concat = staticmethod(ansible_concat)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's names
            """A call's iterator or dict view is a list at once, as in ansible-core (``range()`` stays a range)."""
            from .ansible_jinja import consumed

            result = super().call(__context, __obj, *args, **kwargs)
            return result if __obj is range else consumed(result)

    return AnsibleOutputEnvironment


def _sandboxed_class() -> type:
    import jinja2.sandbox

    return jinja2.sandbox.ImmutableSandboxedEnvironment


@functools.lru_cache(maxsize=None)
def _value_environment_class() -> type:
    """The environment for templates written in YAML values: inside ``{{ }}``, a string literal's backslashes
    are kept as written (``'\\1'`` stays a backreference, not ``\\x01``), as ansible-core's AnsibleLexer does.
    YAML has already read its own escapes once; Ansible does not let Jinja read them a second time. ``{% %}``
    statements, bare expressions (``when``) and template files are read by Jinja as usual, as in Ansible."""
    import jinja2.lexer

    class BackslashKeepingLexer(jinja2.lexer.Lexer):
        def tokeniter(
            self, source: str, name: Optional[str], filename: Optional[str] = None, state: Optional[str] = None
        ) -> Iterator[Tuple[int, str, str]]:
            in_variable = state == "variable"  # an expression compiled alone: the inside of a {{ }}
            for lineno, kind, value in super().tokeniter(source, name, filename, state):
                if kind == jinja2.lexer.TOKEN_VARIABLE_BEGIN:
                    in_variable = True
                elif kind == jinja2.lexer.TOKEN_VARIABLE_END:
                    in_variable = False
                elif in_variable and kind == jinja2.lexer.TOKEN_STRING:
                    value = value.replace("\\", "\\\\")
                yield lineno, kind, value

    class ValueEnvironment(_ansible_output_class()):  # type: ignore[misc]
        @property
        def lexer(self) -> jinja2.lexer.Lexer:
            lexer = self.__dict__.get("_kiln_lexer")
            if lexer is None:
                lexer = self.__dict__["_kiln_lexer"] = BackslashKeepingLexer(self)
            return lexer

    return ValueEnvironment


# --- lookup/query: files of the running role only ---------------------------------------------
def _role_file(ctx_vars: Dict[str, Any], kind: str, name: str) -> str:
    """``name`` in the running role's ``files/`` or ``templates/`` in the bundle; never a path out of it."""
    base = ctx_vars.get("__kiln_bundle_dirs", {}).get(kind)
    role = ctx_vars.get("role_name")
    if not base or not role:
        raise TemplateError(f"lookup('{kind[:-1] if kind == 'files' else 'template'}', {name!r}): no role here")
    root = os.path.realpath(os.path.join(base, role))
    rel = template_path(name)
    path = os.path.realpath(os.path.join(root, rel)) if rel else ""
    if not rel or os.path.commonpath([path, root]) != root:
        raise TemplateError(f"lookup: {name} leads out of the role's {kind}/")
    if not os.path.isfile(path):
        raise TemplateError(f"lookup: {name} is not in the role's {kind}/")
    return path


def _lookup_values(context: Any, kind: str, terms: tuple, kwargs: Dict[str, Any]) -> list:
    scope = collections.ChainMap(context.vars, context.parent)  # read name by name: a copy would render them all
    if kind == "file":
        out = []
        for term in terms:
            with open(_role_file(scope, "files", term), encoding="utf-8") as handle:
                text = handle.read()
            out.append(text.rstrip("\n") if kwargs.get("rstrip", True) else text)
        return out
    if kind == "template":
        return [
            render_file(scope["__kiln_bundle_dirs"]["templates"], f"{scope['role_name']}/{t}", scope) for t in terms
        ]
    if kind == "vars":
        missing = [t for t in terms if t not in scope]
        if missing and "default" not in kwargs:
            raise TemplateError(f"lookup('vars'): no variable {missing[0]!r}")
        return [scope.get(t, kwargs.get("default")) for t in terms]
    if kind == "varnames":
        return [",".join(n for n in scope if re.search(t, n) and not n.startswith("__kiln")) for t in terms]
    if kind == "first_found":
        return _first_found(scope, terms, kwargs)
    if kind == "env":
        return [os.environ.get(t, kwargs.get("default", "")) for t in terms]
    if kind == "subelements":
        return _subelements(list(terms))
    if kind in ("flattened", "community.general.flattened"):
        return _flattened(list(terms))
    raise TemplateError(
        f"lookup({kind!r}): kiln has file, template, vars, varnames, env, first_found, subelements and flattened"
    )


#: lookups whose terms are positional (a list among them is one term), not a list of names to flatten
POSITIONAL_LOOKUPS = ("subelements",)


def _subelements(terms: list) -> list:
    """Ansible's subelements lookup (``with_subelements``): each element paired with each item of its list under
    the dotted ``key``; an element or a whole result marked skipped is left out, the first of each pair lacks the
    key (the lookup pops it), a missing key is an error unless ``skip_missing``."""
    if not 2 <= len(terms) <= 3 or not isinstance(terms[0], (list, dict)) or not isinstance(terms[1], str):
        raise TemplateError(
            "subelements lookup expects a list of two or three items, first a dict or a list, second a string "
            "pointing to the subkey"
        )
    flags = terms[2] if len(terms) == 3 else {}
    if not isinstance(flags, dict) or any(key != "skip_missing" for key in flags):
        raise TemplateError("subelements lookup: the optional third item must be a dict with flags ('skip_missing',)")
    if isinstance(terms[0], dict):
        if terms[0].get("skipped", False) is not False:  # a registered result skipped whole
            return []
        elements = list(terms[0].values())
    else:
        elements = terms[0]
    skip_missing = str(flags.get("skip_missing", False)).strip().lower() in ("true", "yes", "on", "1", "y", "t")
    pairs = []
    for element in elements:
        if not isinstance(element, dict):
            raise TemplateError(f"subelements lookup expects a dictionary, got '{element}'")
        if element.get("skipped", False) is not False:
            continue
        element = copy.deepcopy(element)  # the lookup pops the key from its own copy, never the variable
        items = _subelement_list(element, terms[1].split("."), skip_missing)
        pairs += [[element, item] for item in items]
    return pairs


def _subelement_list(element: dict, keys: list, skip_missing: bool) -> list:
    value = element
    for position, key in enumerate(keys):
        last = position == len(keys) - 1
        if key not in value:
            if skip_missing:
                continue
            raise TemplateError(f"could not find '{key}' key in iterated item '{value}'")
        if not last:
            if not isinstance(value[key], dict):
                if skip_missing:
                    continue
                raise TemplateError(f"the key {key} should point to a dictionary, got '{value[key]}'")
            value = value[key]
        elif not isinstance(value[key], list):
            raise TemplateError(f"the key {key} should point to a list, got '{value[key]}'")
        else:
            return value.pop(key)
    return []


def _flattened(terms: list) -> list:
    """community.general's flattened lookup: every list inside flattened, however deep; a term 'None' or 'null'
    ends its list (what an undefined item rendered to, once)."""
    out: list = []
    for term in terms:
        while isinstance(term, list) and len(term) == 1:
            term = term[0]
        if term in ("None", "null"):
            break
        if isinstance(term, list):
            out.extend(_flattened(term))
        else:
            out.append(term)
    return out


def _first_found(scope: Dict[str, Any], terms: tuple, kwargs: Dict[str, Any]) -> list:
    """The first name the terms search (:func:`_first_found_names`) that exists in the running role's vars/, files/
    or templates/ (a path on the box); none: ``[]`` when ``skip`` is set, else an error."""
    dirs = scope.get("__kiln_bundle_dirs", {})
    role = scope.get("role_name", "")
    roots = {"vars": os.path.join(os.path.dirname(dirs.get("files", "/")), "vars", role)}
    roots.update({kind: os.path.join(dirs[kind], role) for kind in ("files", "templates") if kind in dirs})
    names, skip = _first_found_names(terms, kwargs)
    for name in names:
        for root, rel in _in_role(str(name), roots):
            path = os.path.realpath(os.path.join(root, rel)) if rel else ""
            if (
                rel
                and os.path.isfile(path)
                and os.path.commonpath([path, os.path.realpath(root)]) == os.path.realpath(root)
            ):
                return [path]
    if skip:
        return []
    raise TemplateError(f"lookup('first_found'): none of {', '.join(map(str, names))} is in the role")


def _in_role(name: str, roots: Dict[str, str]) -> List[Tuple[str, Optional[str]]]:
    """Where ``name`` may be in the role: under each of its folders, and ``vars/x`` (``files/``, ``templates/``)
    in that folder, as Ansible's search path holds the role's own directory too (``paths: [vars]``)."""
    rel = template_path(name)
    places = [(root, rel) for root in roots.values()]
    folder, _, rest = (rel or "").partition("/")
    if folder in roots and rest:
        places.insert(0, (roots[folder], rest))
    return places


def _first_found_names(terms: tuple, kwargs: Dict[str, Any]) -> Tuple[List[str], bool]:
    """The names Ansible's first_found searches, in order, and its ``skip``: a name (under each of the ``paths``
    in effect); a list of terms; a mapping of options (``files`` split on , and ;, ``paths`` on , : and ;, each
    file under each path, ``skip``), which replace those given before (ansible-core's set_options). No term: the
    ``files`` option's names."""
    options = _first_found_options(kwargs)
    names: List[str] = []

    def search(term: Any) -> None:
        nonlocal options
        if isinstance(term, Mapping):
            options = _first_found_options(term)
            files = _split_on(options["files"], ",;")
        elif isinstance(term, str):
            files = [term]
        elif isinstance(term, (list, tuple)):
            for inner in term:
                search(inner)
            return
        else:
            raise TemplateError(f"lookup('first_found'): a term is a name, a list or a mapping, got {term!r}")
        paths = _split_on(options["paths"], ",:;")
        if paths:
            names.extend(os.path.join(path, name) for path in paths for name in files)
        else:
            names.extend(files)

    for term in terms or [options["files"]]:
        search(term)
    return names, options["skip"]


def _first_found_options(given: Mapping[str, Any]) -> Dict[str, Any]:
    skip = given.get("skip", False)
    return {
        "files": given.get("files") or [],
        "paths": given.get("paths") or [],
        "skip": skip is True or str(skip).strip().lower() in ("yes", "on", "true", "1", "y", "t"),
    }


def _split_on(value: Any, separators: str) -> List[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [part for item in items for part in re.split(f"[{re.escape(separators)}]", str(item))]


def lookup(context: Any, kind: str, *terms: Any, wantlist: bool = False, **kwargs: Any) -> Any:
    values = _lookup_values(context, kind, _given_terms(kind, terms), kwargs)
    if wantlist:
        return values
    return ",".join(str(v) for v in values) if len(values) != 1 else values[0]


def query(context: Any, kind: str, *terms: Any, **kwargs: Any) -> list:
    values = _lookup_values(context, kind, _given_terms(kind, terms), kwargs)
    if kind == "varnames":
        return [name for joined in values for name in joined.split(",") if name]
    return values


def _given_terms(kind: str, terms: tuple) -> tuple:
    return terms if kind in POSITIONAL_LOOKUPS else tuple(_flat_terms(terms))


def _flat_terms(terms: tuple) -> list:
    return [t for term in terms for t in (term if isinstance(term, list) else [term])]


HEADER_OPTIONS = (
    "trim_blocks",
    "lstrip_blocks",
    "keep_trailing_newline",
    "newline_sequence",
    "block_start_string",
    "block_end_string",
    "variable_start_string",
    "variable_end_string",
    "comment_start_string",
    "comment_end_string",
    "line_statement_prefix",
    "line_comment_prefix",
)


def template_options(source: str) -> Tuple[str, Dict[str, Any]]:
    """Ansible's template defaults (trim_blocks) and a first-line ``#jinja2: key: value, ...`` header."""
    options: Dict[str, Any] = {"trim_blocks": True}
    if not source.startswith("#jinja2:"):
        return source, options
    header, _, body = source.partition("\n")
    for pair in header[len("#jinja2:") :].split(","):
        key, _, value = (part.strip() for part in pair.partition(":"))
        if key not in HEADER_OPTIONS:
            raise TemplateError(f"#jinja2: header: unknown option {key!r} (one of {', '.join(HEADER_OPTIONS)})")
        options[key] = _header_value(value)
    return body, options


def _header_value(text: str) -> Any:
    """A header value as ansible-core reads it (a Python literal: ``False``, ``'\\r\\n'``); kiln also takes it bare."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        literal = text.strip("'\"")
        return {"true": True, "false": False}.get(literal.lower(), literal.encode().decode("unicode_escape"))


@functools.lru_cache(maxsize=None)
def environment() -> "jinja2.Environment":
    """The shared environment for bare expressions (``when``, ``that``) and for parsing (made on first use).
    Without trim_blocks: a syntax error at the end of a template file is reported at the block left open."""
    return _environment(trim_blocks=False)


def parsing_environment(options: Mapping[str, Any]) -> "jinja2.Environment":
    """The environment that reads a template as its ``#jinja2:`` header ``options`` say (its delimiters, its line
    prefixes); the shared one when they change nothing of that."""
    syntax = tuple(sorted((k, v) for k, v in options.items() if k.endswith(("_string", "_prefix"))))
    return _parsing_environment(syntax) if syntax else environment()


@functools.lru_cache(maxsize=16)
def _parsing_environment(syntax: Tuple[Tuple[str, Any], ...]) -> "jinja2.Environment":
    return _environment(trim_blocks=False, **dict(syntax))


@functools.lru_cache(maxsize=None)
def value_environment() -> "jinja2.Environment":
    """The shared environment for templates in YAML values (``"{{ ... }}"``): see ``_value_environment_class``."""
    return _environment(escape_backslashes=True)


def __getattr__(name: str) -> Any:
    """``ENV``, the shared environment, for those who import it by that name (made on first use)."""
    if name == "ENV":
        return environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_templated(value: Any) -> bool:
    """Whether ansible-core reads ``value`` as a template: it holds ``{{``, ``{%`` or ``{#``, or starts with a
    ``#jinja2:`` header."""
    return isinstance(value, str) and ("{{" in value or "{%" in value or "{#" in value or value.startswith("#jinja2:"))


@functools.lru_cache(maxsize=1024)
def _expression(source: str, in_value: bool) -> Any:
    env = value_environment() if in_value else environment()
    return env.compile_expression(source, undefined_to_none=False)._template


@functools.lru_cache(maxsize=64)
def _value_environment_with(options: Tuple[Tuple[str, Any], ...]) -> "jinja2.Environment":
    return _environment(escape_backslashes=True, **dict(options)) if options else value_environment()


@functools.lru_cache(maxsize=1024)
def _inline_template(source: str) -> Any:
    """A value's template, compiled as ansible-core compiles one (a ``#jinja2:`` header applies to values too)."""
    body, options = template_options(source)
    overrides = tuple(sorted((key, value) for key, value in options.items() if (key, value) != ("trim_blocks", True)))
    return _value_environment_with(overrides).from_string(body)


def evaluate(expression: Any, variables: Mapping[str, Any]) -> Any:
    """A bare expression (``when``, ``until``, ``changed_when``, ``loop``) to its value; one written as
    ``"{{ ... }}"`` is read as a template in a value (its string literals keep their backslashes).

    Names are read from ``variables`` one by one as the expression needs them (a Scope renders each
    when read), never all at once. An expression that is only an undefined name is an error.
    """
    if not isinstance(expression, str):
        return expression
    match = WHOLE_EXPRESSION.match(expression)
    source = match.group(1) if match else expression
    import jinja2

    try:
        template = _expression(source, bool(match))
        context = template.new_context(_context_parent(variables, template), shared=True)
        for _ in template.root_render_func(context):
            pass
        return finalize(context.vars["result"])
    except TemplateError:
        raise
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{source.strip()}: {exc}", undefined=True) from None
    except _jinja_error() as exc:
        raise TemplateError(f"{source.strip()}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - Python's own error inside the expression ("x" + 1): the step's
        raise TemplateError(f"{source.strip()}: {type(exc).__name__}: {exc}") from None


def render_template(template: Any, variables: Mapping[str, Any]) -> Any:
    """A compiled template rendered with ``variables`` (read lazily, never copied), its output joined as
    ansible-core joins it (``ansible_concat``: text, or one piece's own value)."""
    # errors propagate as raised, with the template's line: Jinja's own traceback rewriting would copy
    # every variable (rendering them all)
    context = template.new_context(_context_parent(variables, template), shared=True)
    try:
        return template.environment.concat(template.root_render_func(context))  # type: ignore[no-any-return]
    except Exception as exc:
        if getattr(exc, "lineno", None) is None:
            exc.lineno = _template_line(exc.__traceback__, template)  # type: ignore[attr-defined]
        raise


def _template_line(tb: Any, template: Any) -> Optional[int]:
    """The line of ``template`` the error was raised at (the innermost frame of its code)."""
    filename = template.filename or "<template>"
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


def render(value: Any, variables: Mapping[str, Any], depth: int = 0) -> Any:
    """Render every templated string inside ``value``; "{{ x }}" alone keeps x's type.

    With a Scope, each variable is rendered when read (Ansible's lazy templating). With a plain
    mapping (the controller's), a variable whose own value is a template (``dir: "/opt/{{ facts.arch }}"``)
    comes out as that template, and is rendered in turn, up to a few levels deep.
    """
    if isinstance(value, dict):
        return {k: render(v, variables, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables, depth) for v in value]
    if not is_templated(value):
        return value
    if value.startswith("{{") and value.endswith("}}") and WHOLE_EXPRESSION.match(value):
        result = evaluate(value, variables)
    else:
        import jinja2

        try:
            result = finalize(keep_trailing_newlines(value, render_template(_inline_template(value), variables)))
        except TemplateError:
            raise
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{value!r}: {exc}", undefined=True) from None
        except _jinja_error() as exc:
            raise TemplateError(f"{value!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - Python's own error inside the template: the step's
            raise TemplateError(f"{value!r}: {type(exc).__name__}: {exc}") from None
    if isinstance(variables, Scope):
        return result
    if depth < 5 and result != value and (is_templated(result) or isinstance(result, (dict, list))):
        return render(result, variables, depth + 1)
    return result


def _jinja_error() -> tuple:
    import jinja2

    from .ansible_jinja import FilterError

    return (jinja2.TemplateError, FilterError)


def template_path(name: str) -> str | None:
    """``name`` as a path below a role's templates/ (``a/./b.j2`` is ``a/b.j2``); None when it
    would lead out of it (an absolute name, a ``..``)."""
    pieces = [piece for piece in name.split("/") if piece not in ("", ".")]
    if name.startswith("/") or ".." in pieces or not pieces:
        return None
    return "/".join(pieces)


@functools.lru_cache(maxsize=None)
def _role_templates_class() -> type:
    import jinja2

    class RoleTemplates(jinja2.BaseLoader):
        """One role's templates/: a name that leads out of it (``..``, absolute, a symlink out) is not found."""

        def __init__(self, root: str) -> None:
            self.root = os.path.realpath(root)

        def get_source(self, environment: jinja2.Environment, template: str) -> Tuple[str, str, Callable[[], bool]]:
            rel = template_path(template)
            path = os.path.realpath(os.path.join(self.root, rel)) if rel else ""
            if not rel or os.path.commonpath([path, self.root]) != self.root:
                raise jinja2.TemplateNotFound(template, f"{template} leads out of the role's templates/")
            if not os.path.isfile(path):
                raise jinja2.TemplateNotFound(template, f"{template} is not in the role's templates/")
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
            mtime = os.path.getmtime(path)
            return source, path, lambda: os.path.getmtime(path) == mtime

    return RoleTemplates


def RoleTemplates(root: str) -> "jinja2.BaseLoader":  # noqa: N802 - stands for the class, made on first use
    """One role's templates/ as a Jinja2 loader (see ``_role_templates_class``)."""
    return _role_templates_class()(root)


def render_file(templates_dir: str, name: str, variables: Dict[str, Any]) -> str:
    """Render ``name``: ``<role>/<src>`` below the bundle's templates/, or a bare file name in
    ``templates_dir`` (an absolute src on the box). Its includes, imports and extends name
    templates of the same role, relative to the role's templates/ (as in Ansible), and
    never anything outside it.
    """
    if "/" in name:
        role, rel = name.split("/", 1)
        root = os.path.join(templates_dir, role)
    else:
        root, rel = templates_dir, name
    import jinja2

    try:
        if template_path(name) is None:
            raise jinja2.TemplateNotFound(name, f"{name} leads out of the role's templates/")
        loader = RoleTemplates(root)
        source, _, _ = loader.get_source(environment(), rel)
        body, options = template_options(source)
        env = _environment(loader, **options)
        own = {"template_path": rel, "template_host": os.uname().nodename}
        if "ansible_managed" not in variables:
            own["ansible_managed"] = "Ansible managed"
        text = keep_trailing_newlines(source, render_template(env.from_string(body), as_scope(variables).child(own)))
        return "" if text is None else str(text)  # a value of its own (one piece): as text, nothing at all: empty
    except TemplateError as exc:
        raise TemplateError(f"template {name}: {exc}", exc.undefined) from None
    except _jinja_error() as exc:
        where = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise TemplateError(f"template {name}{where}: {exc}") from exc
    except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:  # Python's, inside it
        where = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise TemplateError(f"template {name}{where}: {type(exc).__name__}: {exc}") from None


def undeclared(source: str) -> set:
    """Names a template or expression reads (for the controller's undefined-variable check)."""
    match = WHOLE_EXPRESSION.match(source)
    text = source if (match or "{{" in source or "{%" in source) else "{{ " + source + " }}"
    import jinja2.meta

    return jinja2.meta.find_undeclared_variables(environment().parse(text))
