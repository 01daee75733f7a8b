"""Ansible's ``key=value`` argument strings, split by the rule ansible-core 2.19 uses (parsing/splitter.py).

A string is cut at blanks and line ends, except inside quotes and inside Jinja's ``{{ }}``, ``{% %}`` and
``{# #}``: ``make prefix={{ path }} {{ item }}`` is the words ``make``, ``prefix={{ path }}``, ``{{ item }}``.
A word whose first ``=`` (not the first character, not escaped) follows a key is that key's value; for a module
with a free form (command, shell) only the keys Ansible takes from it are arguments, and every other word is the
free form, joined back with its line ends as written.
"""

from __future__ import annotations

import codecs
import re

JINJA_PAIRS = (("{{", "}}"), ("{%", "%}"), ("{#", "#}"))
ESCAPE = re.compile(
    r"""\\U[0-9a-fA-F]{8}|\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|\\N\{[^}]+\}|\\[\\'"abfnrtv]""",
)
RAW = "_raw_params"


class SplitError(ValueError):
    pass


def split_words(text: str) -> list[str]:
    """The words of ``text``: a word ending a line keeps its ``\\n``; a lone ``\\`` at a line's end joins it to the
    next. Raise SplitError on a quote or Jinja block left open."""
    words: list[str] = []
    state = _State()
    lines = text.split("\n")
    for number, line in enumerate(lines):
        continued = False
        for position, token in enumerate(line.split(" ")):
            if token == "" and position:
                _extend(words, " ")  # a second blank, as written
                continue
            if token == "\\" and not state.quote:
                continued = True
                continue
            _place(words, state, token, position)
        if number < len(lines) - 1 and not continued:
            _extend(words, "\n")
    if state.quote or any(state.depths):
        raise SplitError("a quote or a Jinja block ({{ }}, {% %}, {# #}) is left open")
    return words


class _State:
    def __init__(self) -> None:
        self.quote = ""
        self.depths = [0, 0, 0]


def _place(words: list[str], state: _State, token: str, position: int) -> None:
    """Start a word with ``token``, or add it to the one a quote or a Jinja block keeps open."""
    was_quoted, was_open = bool(state.quote), any(state.depths)
    state.quote = _quote_after(token, state.quote)
    if was_open or was_quoted:
        glue = "" if position == 0 and was_quoted else (" " if position else "")
        _extend(words, glue + token)
    elif token or state.quote:
        words.append(token)
    for index, (opening, closing) in enumerate(JINJA_PAIRS):
        state.depths[index] = max(0, state.depths[index] + token.count(opening) - token.count(closing))


def _extend(words: list[str], text: str) -> None:
    if words:
        words[-1] += text
    else:
        words.append(text)


def _quote_after(token: str, quote: str) -> str:
    """The quote still open after ``token`` (a quote preceded by a backslash neither opens nor closes one)."""
    previous = ""
    for char in token:
        if char in "\"'" and previous != "\\":
            if not quote:
                quote = char
            elif char == quote:
                quote = ""
        previous = char
    return quote


def join_words(words: list[str]) -> str:
    """The free form as written: words joined by a blank, except after a line end."""
    text = ""
    for word in words:
        text += word if not text or text.endswith("\n") else " " + word
    return text


def unquote(text: str) -> str:
    quoted = len(text) > 1 and text[0] == text[-1] and text[0] in "\"'" and text[-2] != "\\"
    return text[1:-1] if quoted else text


def parse_kv(text: str, free_form_keys: tuple[str, ...] | None = None) -> dict[str, str]:
    """``{key: value}`` of ``text``; the other words under ``_raw_params``. ``free_form_keys``: the only keys a
    free form gives (any other ``k=v`` word belongs to it); None: every ``k=v`` word is an argument."""
    options: dict[str, str] = {}
    raw: list[str] = []
    for word in split_words(text):
        decoded = ESCAPE.sub(lambda match: codecs.decode(match.group(0), "unicode-escape"), word)
        at = _assignment(decoded)
        if at < 0:
            raw.append(decoded.replace("\\=", "=") if "=" in decoded else word)
            continue
        key, value = decoded[:at], decoded[at + 1 :]
        if free_form_keys is not None and key not in free_form_keys:
            raw.append(word)
        else:
            options[key.strip()] = unquote(value.strip())
    if raw:
        options[RAW] = join_words(raw)
    return options


def _assignment(word: str) -> int:
    """Where the first ``=`` that is not the word's first character and not escaped is (-1: none)."""
    for index, char in enumerate(word):
        if char == "=" and index > 0 and word[index - 1] != "\\":
            return index
    return -1
