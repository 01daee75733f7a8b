"""Ansible's filters and tests in the agent's Jinja environment, proved against ansible-core's own templar.

Each expression is rendered by ansible-core (on the controller) and by the agent's environment; the two
must agree. No expected values are written by hand.
"""

from __future__ import annotations

import pytest

from kiln.agent.templating import TemplateError, evaluate, render, template_options

ansible_template = pytest.importorskip("ansible.template")

VARIABLES = {
    "word": "Hello World",
    "version": "1.2.10",
    "conf": {"a": 1, "b": {"c": 2, "d": [1, 2]}},
    "other": {"b": {"c": 3, "e": 4}, "f": "x"},
    "pairs": [{"key": "k1", "value": "v1"}, {"key": "k2", "value": 2}],
    "nested": [1, [2, [3, None]], "4"],
    "numbers": [3, 1, 3, 2],
    "more": [2, 5],
    "result_ok": {"changed": True, "failed": False, "rc": 0},
    "result_bad": {"changed": False, "failed": True, "rc": 2},
    "result_skip": {"changed": False, "skipped": True},
    "data": {"name": "web", "ports": [80, 443], "tls": True, "empty": [], "note": "yes", "n": None},
    "path": "/etc/nginx/sites-enabled/default.conf",
    "multi": "line one\nline two",
    "yaml_text": "---\na: 1  # one\nb:\n  - x\n  - y: 2\n    z: [1, two]\nc: {d: e}\nh: yes\ni: 'q: s'\nj:\nk: \"x\"\n",
}

EXPRESSIONS = [
    "undefined_name | default('dflt')",
    "undefined_name | d('short')",
    "'' | default('x', true)",
    "['yes', 'no', 'on', 'off', 'true', 1, 0, 'garbage'] | map('bool') | list",
    "word | regex_search('W(or)ld')",
    "word | regex_search('xyz')",
    "word | regex_replace('o', '0')",
    "word | regex_findall('[A-Z]')",
    "'a.b*c' | regex_escape",
    "version is version('1.2.9', '>')",
    "version is version('1.10', '<')",
    "version is version_compare('1.2.10', '==')",
    "version is version('1.2.10', 'ge')",
    "conf | combine(other)",
    "conf | combine(other, recursive=true)",
    "conf | dict2items",
    "pairs | items2dict",
    "conf | to_json",
    "conf | to_nice_json",
    "'{\"a\": [1, 2]}' | from_json",
    "data | to_yaml",
    "data | to_nice_yaml",
    "conf | to_nice_yaml",
    "yaml_text | from_yaml",
    "data | to_nice_yaml | from_yaml",
    "conf | to_yaml | from_yaml",
    "word | b64encode",
    "'SGVsbG8gV29ybGQ=' | b64decode",
    "path | basename",
    "path | dirname",
    '"it\'s here" | quote',
    "true | ternary('on', 'off')",
    "false | ternary('on', 'off')",
    "multi | comment",
    "word | comment('c')",
    "word | comment('cblock')",
    "word | comment('xml')",
    "word | hash('sha1')",
    "word | hash('md5')",
    "word | checksum",
    "nested | flatten",
    "nested | flatten(levels=1)",
    "numbers | unique",
    "numbers | union(more)",
    "numbers | intersect(more)",
    "numbers | difference(more)",
    "numbers | symmetric_difference(more)",
    "numbers | zip(more) | list",
    "result_ok is succeeded",
    "result_ok is changed",
    "result_bad is failed",
    "result_bad is success",
    "result_skip is skipped",
    "result_ok is skipped",
    "word is match('Hel')",
    "word is match('World')",
    "word is search('World')",
    "word is regex('W.rld')",
    "'' is truthy",
    "'x' is truthy",
    "0 is falsy",
    "data.note is truthy(convert_bool=true)",
    "undefined_name is defined",
    "word is defined",
    "[1, 2] is subset([1, 2, 3])",
    "'512 MB' | human_to_bytes",
]


@pytest.fixture(scope="module")
def ansible_templar():
    from ansible.parsing.dataloader import DataLoader

    return ansible_template.Templar(loader=DataLoader(), variables=dict(VARIABLES))


def ansible_renders(templar, source: str):
    return templar.template(ansible_template.trust_as_template(source))


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_expression_matches_ansible(ansible_templar, expression):
    expected = ansible_renders(ansible_templar, "{{ " + expression + " }}")
    assert evaluate(expression, dict(VARIABLES)) == expected


@pytest.mark.parametrize("expression", ["data | to_nice_yaml", "conf | to_yaml", "multi | comment", "numbers | unique"])
def test_expression_inside_text_matches_ansible(ansible_templar, expression):
    source = "before {{ " + expression + " }} after"
    assert render(source, dict(VARIABLES)) == ansible_renders(ansible_templar, source)


def test_mandatory_fails_like_ansible(ansible_templar):
    with pytest.raises(Exception):  # noqa: B017 - ansible-core's own error class
        ansible_renders(ansible_templar, "{{ undefined_name | mandatory }}")
    with pytest.raises(TemplateError, match="undefined_name"):
        evaluate("undefined_name | mandatory", {})


def test_omit_is_a_placeholder():
    assert evaluate("omit", {}) == evaluate("omit", {}) and "omit" in evaluate("omit", {})


def test_template_defaults_trim_blocks_and_header():
    body, options = template_options("{% if x %}\nyes\n{% endif %}\n")
    assert options == {"trim_blocks": True} and body.startswith("{% if")
    body, options = template_options("#jinja2: trim_blocks: False, lstrip_blocks: True\n{{ x }}\n")
    assert options == {"trim_blocks": False, "lstrip_blocks": True} and body == "{{ x }}\n"
    with pytest.raises(TemplateError, match="unknown option"):
        template_options("#jinja2: trim_block: False\n")


def test_lookup_vars_and_varnames():
    scope = {"ntp_a": 1, "ntp_b": 2, "other": 3}
    assert evaluate("lookup('vars', 'ntp_a')", scope) == 1
    assert evaluate("query('varnames', '^ntp_')", scope) == ["ntp_a", "ntp_b"]
    with pytest.raises(TemplateError, match="no role"):
        evaluate("lookup('file', '../../etc/passwd')", scope)


# --- backslashes in Jinja string literals ------------------------------------------------------------
#: values as a role writes them in YAML: ansible-core keeps a string literal's backslashes inside {{ }}
#: (YAML has read its escapes already), not inside {% %} (dev-sec's ssh_hardening reads sshd's version with
#: the first one)
BACKSLASH_VALUES = r"""
backreference: "{{ version_line | regex_replace('.*_([0-9]*.[0-9]).*', '\\1') }}"
single_quoted_yaml: '{{ version_line | regex_replace(".*_([0-9]*.[0-9]).*", "\\1") }}'
escape_letters: "{{ 'a\\nb\\tc\\x41\\u0041' }}"
in_text: 'v\1 {{ "\1" }} and {{ "a\tb" }}'
escaped_quote: "{{ 'it\\'s' }}"
double_backslash: '{{ "x\\y" }}'
in_statement: '{% set y = "a\nb" %}{{ y }}|{{ "a\nb" }}'
in_a_list: "{{ ['\\1', 'x\\\\y'] | join(',') }}"
in_a_mapping: "{{ {'k': 'a\\nb'} }}"
"""

#: bare expressions (when, that, failed_when, debug's var): Jinja reads their escapes, as in ansible-core
BACKSLASH_CONDITIONS = [
    r"'a\nb' == 'a' + '\n' + 'b'",
    r"version_line | regex_replace('.*_([0-9]*.[0-9]).*', '\\1') == '8.4'",
    r"'\x41' == 'A'",
]


def backslash_values() -> dict:
    import yaml

    return yaml.safe_load(BACKSLASH_VALUES)


@pytest.mark.parametrize("name", sorted(backslash_values()))
def test_backslashes_in_a_values_template_as_ansible(name):
    source = backslash_values()[name]
    variables = {"version_line": "OpenSSH_8.4p1 Debian-5"}
    from ansible.parsing.dataloader import DataLoader

    templar = ansible_template.Templar(loader=DataLoader(), variables=variables)
    assert render(source, variables) == ansible_renders(templar, source)


@pytest.mark.parametrize("condition", BACKSLASH_CONDITIONS)
def test_backslashes_in_a_bare_expression_as_ansible(condition):
    variables = {"version_line": "OpenSSH_8.4p1 Debian-5"}
    from ansible.parsing.dataloader import DataLoader

    templar = ansible_template.Templar(loader=DataLoader(), variables=variables)
    expected = templar.evaluate_conditional(ansible_template.trust_as_template(condition))
    assert expected is True and evaluate(condition, variables) is expected


def test_backslashes_in_a_template_file_as_ansible(tmp_path):
    """The template module renders files without keeping backslashes (escape_backslashes=False in ansible-core)."""
    from ansible.parsing.dataloader import DataLoader

    from kiln.agent.templating import render_file

    source = '{{ "a\\nb" }} {{ version_line | regex_replace(".*_([0-9]*.[0-9]).*", "\\\\1") }} {{ "\\x41" }}\n'
    (tmp_path / "t.j2").write_text(source)
    variables = {"version_line": "OpenSSH_8.4p1 Debian-5"}
    templar = ansible_template.Templar(loader=DataLoader(), variables=variables)
    expected = templar.template(ansible_template.trust_as_template(source), escape_backslashes=False)
    assert render_file(str(tmp_path), "t.j2", variables).rstrip("\n") == expected.rstrip("\n")


# --- output as ansible-core 2.19 makes it: trim_blocks, None, native values, trailing newlines -------------
#: variables for the output cases (None inside and alone, a list holding None, numbers, text ending in newlines)
OUTPUT_VARIABLES = {
    "none_var": None,
    "items": ["a", 1, None],
    "mapping": {"k": "v", "n": None},
    "flag": True,
    "port": 443,
    "word": "x",
    "with_newline": "a\n",
    "ratio": 1.5,
}

#: values as a role writes them (copy's content, a var, a name): ansible-core renders them with trim_blocks,
#: leaves None out of text, keeps the type of a value that is one piece, and ends text with as many newlines
#: as the value's source
OUTPUT_VALUES = {
    "for_in_content": "{% for i in items %}\n{{ i }}\n{% endfor %}\n",
    "if_in_content": "{% if flag %}\nyes\n{% endif %}\nafter\n",
    "indented_blocks": "  {% if flag %}\n  yes\n  {% endif %}\n",
    "none_inside_text": "a{{ none_var }}b",
    "none_alone": "{{ none_var }}",
    "none_then_newline": "{{ none_var }}\n",
    "none_twice": "{{ none_var }}{{ none_var }}",
    "none_from_set": "{% set y = none_var %}{{ y }}",
    "none_in_macro": "{% macro m(a) %}<{{ a }}>{% endmacro %}{{ m(1) }}|{{ m(none_var) }}",
    "text_then_none": "{{ word }}{{ none_var }}",
    "list_in_text": "l={{ items }}",
    "mapping_in_text": "d={{ mapping }}",
    "bool_and_float_in_text": "t={{ flag }} f={{ ratio }}",
    "spaces_around_one_value": " {{ port }} ",
    "space_after_one_value": "{{ port }} ",
    "if_false_alone": "{% if false %}x{% endif %}",
    "one_value_in_an_if": "{% if flag %}{{ port }}{% endif %}",
    "one_value_in_a_loop": "{% for i in [1] %}{{ i }}{% endfor %}",
    "constant_alone": "{{ 1 }}",
    "quoted_number_alone": "{{ '5' }}",
    "number_then_newline": "{{ port }}\n",
    "trailing_newlines_kept": "{{ with_newline }}\n\n",
    "value_ending_in_newline": "{{ with_newline }}",
    "comment_only": "a {# note #} b",
    "raw_block": "{% raw %}{{ word }}{% endraw %}",
    "header_trim_blocks_off": "#jinja2: trim_blocks: False\n{% if flag %}\nyes\n{% endif %}\n",
    "header_lstrip_blocks": "#jinja2: lstrip_blocks: True\n  {% if flag %}\n  yes\n  {% endif %}\n",
    "header_keep_trailing_newline": "#jinja2: keep_trailing_newline: True\n{{ word }}\n\n",
    "header_delimiters": "#jinja2: variable_start_string: '[[', variable_end_string: ']]'\n[[ word ]] {{ word }}",
    "map_whole": "{{ items | map('string') }}",
    "map_in_text": "x{{ items | map('string') }}",
    "map_indexed": "{{ (items | map('string'))[0] }}",
    "select_in_text": "{{ items | select }} and {{ items | reject | list }}",
    "reverse_whole": "{{ items | reverse }}",
    "dict_items_call": "{{ mapping.items() }}",
    "dict_keys_in_text": "k={{ mapping.keys() }}",
    "tuple_whole": "{{ (1, 2) }}",
    "tuple_in_text": "x{{ (1, 2) }}",
    "omit_in_list": "{{ [1, omit] }}",
    "omit_in_mapping": "{{ {'a': omit, 'b': 1} }}",
    "omit_in_text": "a{{ omit }}",
    "if_without_else_in_text": "x{{ 1 if false }}",
    "if_without_else_in_a_list_in_text": "x{{ [1 if false] }}",
}


def _ansible_output_templar():
    from ansible.parsing.dataloader import DataLoader

    return ansible_template.Templar(loader=DataLoader(), variables=dict(OUTPUT_VARIABLES))


@pytest.mark.parametrize("name", sorted(OUTPUT_VALUES))
def test_a_values_output_as_ansible(name):
    from kiln.agent.templating import as_scope

    source = OUTPUT_VALUES[name]
    expected = ansible_renders(_ansible_output_templar(), source)
    got = render(source, as_scope(dict(OUTPUT_VARIABLES)))
    assert (got, _kind(got)) == (expected, _kind(expected))


def _kind(value):
    """A value's type, any text as str (ansible-core's text is a str subclass carrying tags)."""
    return str if isinstance(value, str) else type(value)


@pytest.mark.parametrize("name", ["a{{ undefined_name }}", "{{ undefined_name }}", "{{ undefined_name }}\n"])
def test_an_undefined_name_in_a_value_fails_as_in_ansible(name):
    with pytest.raises(Exception, match="undefined_name"):  # noqa: B017 - ansible-core's own error class
        ansible_renders(_ansible_output_templar(), name)
    with pytest.raises(TemplateError, match="undefined_name"):
        render(name, dict(OUTPUT_VARIABLES))


#: template files: the template module renders them with the same settings, without keeping backslashes, and
#: writes an empty file for a template that renders to nothing
OUTPUT_FILES = [
    "{{ none_var }}\n",
    "{{ port }}",
    "{{ port }}\n",
    "a{{ none_var }}b\n",
    "{% for i in items %}\n{{ i }}\n{% endfor %}\n",
    "#jinja2: keep_trailing_newline: True\n{{ word }}\n\n",
    "#jinja2: trim_blocks: False\n{% if flag %}\nyes\n{% endif %}\n",
    "#jinja2: newline_sequence: '\\r\\n'\n{% if flag %}\nyes\n{% endif %}\n",
    "x\n\n\n",
    "{% if false %}x{% endif %}\n\n",
    "{{ items }}",
    "  {% if flag %}\n  y\n  {% endif %}\n",
    "#jinja2: variable_start_string: '[[', variable_end_string: ']]'\n[[ word ]] {{ .Name }}\n",
]


@pytest.mark.parametrize("source", OUTPUT_FILES)
def test_a_template_files_output_as_ansible(tmp_path, source):
    from kiln.agent.templating import render_file

    (tmp_path / "t.j2").write_bytes(source.encode())
    expected = _ansible_output_templar().template(ansible_template.trust_as_template(source), escape_backslashes=False)
    expected = "" if expected is None else str(expected)  # as the template action writes it
    assert render_file(str(tmp_path), "t.j2", dict(OUTPUT_VARIABLES)) == expected


def test_an_include_in_a_template_file_as_ansible(tmp_path):
    """ansible-core drops an included file's last newline, as Jinja does: only the top template keeps its own."""
    from kiln.agent.templating import render_file

    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "head.j2").write_text("head\n")
    source = '{% include "parts/head.j2" %}body {{ port }}\n'
    (tmp_path / "site.j2").write_text(source)
    templar = _ansible_output_templar().copy_with_new_env(searchpath=[str(tmp_path)])
    expected = templar.template(ansible_template.trust_as_template(source), escape_backslashes=False)
    assert render_file(str(tmp_path), "site.j2", dict(OUTPUT_VARIABLES)) == expected


def test_a_variable_made_by_a_filter_reads_the_same_every_time():
    """``select`` gives an iterator in Jinja, a list in ansible-core: a variable holding it is read twice here."""
    from kiln.agent.templating import Scope

    source = "{{ picked | length }} {{ picked | join(',') }} {{ picked | join(',') }}"
    written = {"picked": "{{ items | select }}", "items": [0, 1, 2, "", "a"]}
    templar = _ansible_output_templar()
    templar.available_variables = {
        "picked": ansible_template.trust_as_template(written["picked"]),
        "items": written["items"],
    }
    expected = ansible_renders(templar, source)
    assert render(source, Scope([(written, True)])) == expected
