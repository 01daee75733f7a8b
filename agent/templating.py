"""Jinja2 expressions and templates, evaluated on the box.

Jinja2 and MarkupSafe are pure Python; the controller packs them into the agent's
zipapp beside the agent, so nothing needs installing on the box. Every other part
of the agent is stdlib-only. Jinja2 is imported the first time something is templated:
a run whose steps template nothing never loads it.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

if TYPE_CHECKING:
    import jinja2

WHOLE_EXPRESSION = re.compile(r"^[ \t]*\{\{(?!.*\{\{)(.*)\}\}[ \t]*\Z", re.S)


class TemplateError(Exception):
    pass


def _environment(loader: Any = None) -> "jinja2.Environment":
    import jinja2
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        loader=loader,
    )
    env.filters.setdefault(
        "bool", lambda v: str(v).lower() in ("1", "true", "yes", "on") if isinstance(v, str) else bool(v)
    )
    env.filters.setdefault("regex_search", lambda v, p: (re.search(p, str(v)) or [None])[0])
    env.filters.setdefault("basename", os.path.basename)
    env.filters.setdefault("dirname", os.path.dirname)
    return env


@functools.lru_cache(maxsize=None)
def environment() -> "jinja2.Environment":
    """The shared environment for expressions and inline templates (made on first use)."""
    return _environment()


def __getattr__(name: str) -> Any:
    """``ENV``, the shared environment, for those who import it by that name (made on first use)."""
    if name == "ENV":
        return environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def evaluate(expression: Any, variables: Dict[str, Any]) -> Any:
    """A bare expression (``when``, ``until``, ``changed_when``, ``loop``) to its value."""
    if not isinstance(expression, str):
        return expression
    match = WHOLE_EXPRESSION.match(expression)
    source = match.group(1) if match else expression
    try:
        compiled = environment().compile_expression(source, undefined_to_none=False)
        return compiled(**variables)
    except _jinja_error() as exc:
        raise TemplateError(f"{source.strip()}: {exc}") from exc


def render(value: Any, variables: Dict[str, Any], depth: int = 0) -> Any:
    """Render every templated string inside ``value``; "{{ x }}" alone keeps x's type.

    A variable whose own value is a template (``dir: "/opt/{{ facts.arch }}"``) is
    rendered in turn, as Ansible does, up to a few levels deep.
    """
    if isinstance(value, dict):
        return {k: render(v, variables, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables, depth) for v in value]
    if not is_templated(value):
        return value
    match = WHOLE_EXPRESSION.match(value)
    if match:
        result = evaluate(match.group(1), variables)
    else:
        try:
            result = environment().from_string(value).render(**variables)
        except _jinja_error() as exc:
            raise TemplateError(f"{value!r}: {exc}") from None
    if depth < 5 and result != value and (is_templated(result) or isinstance(result, (dict, list))):
        return render(result, variables, depth + 1)
    return result


def _jinja_error() -> type:
    import jinja2

    return jinja2.TemplateError


def resolve_variables(variables: Dict[str, Any]) -> Dict[str, Any]:
    """Variables whose values are templates (``dir: "/opt/{{ facts.arch }}"``) rendered once
    facts are known, so templates and expressions see final values. A value that reads what
    is not known yet (a registered result) stays a template and is rendered where it is used.
    """
    resolved = dict(variables)
    for _ in range(5):
        progress = False
        for name, value in resolved.items():
            if name == "facts" or not (is_templated(value) or isinstance(value, (dict, list))):
                continue
            try:
                new = render(value, resolved)
            except TemplateError:
                continue
            if new != value:
                resolved[name], progress = new, True
        if not progress:
            break
    return resolved


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

    env = _environment(RoleTemplates(root))
    try:
        if template_path(name) is None:
            raise jinja2.TemplateNotFound(name, f"{name} leads out of the role's templates/")
        return env.get_template(rel).render(**variables)
    except jinja2.TemplateError as exc:
        where = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise TemplateError(f"template {name}{where}: {exc}") from exc


def undeclared(source: str) -> set:
    """Names a template or expression reads (for the controller's undefined-variable check)."""
    match = WHOLE_EXPRESSION.match(source)
    text = source if (match or "{{" in source or "{%" in source) else "{{ " + source + " }}"
    import jinja2.meta

    return jinja2.meta.find_undeclared_variables(environment().parse(text))
