"""No role path may lead out of its role: symlinks, '..', template includes (issue 8, item 2).

A role ships and hashes only its own files. A path that resolves outside the role's
directory is invalid input (exit 2, the file named) whether or not a step names it,
and nothing is read from it: the secret each test plants outside the role must show
up in no diagnostic, bundle file or hash input.
"""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pytest

from kiln.agent.templating import TemplateError, render_file
from kiln.controller.config import Config
from kiln.controller.model import InvalidInput
from kiln.controller.stepfiles.compile import compile_role, validate_roles
from tests.playbooks import invoke, make_playbooks

SECRET = "KILN-SECRET-7f3a"
# YAML that cannot parse: were it read as a step file, the error would quote its line
SECRET_TEXT = f"{SECRET}: [unclosed\n"
TEMPLATED_SRC = "- copy:\n    src: \"{{ 'motd' if facts.os_family == 'debian' else 'x' }}\"\n    dest: /etc/motd\n"


def plant_secret(root: Path) -> Path:
    """A file outside every role, holding what must never be read."""
    secret = root / "outside" / "secret"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(SECRET_TEXT)
    return secret


def make_role(root: Path, name: str, files: dict[str, str]) -> Path:
    role = root / "roles" / name
    role.mkdir(parents=True, exist_ok=True)
    files = {"role.yml": f"description: {name}\n", **files}
    for rel, text in files.items():
        (role / rel).parent.mkdir(parents=True, exist_ok=True)
        (role / rel).write_text(text)
    return role


def link(path: Path, target: str | Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def compile_ok(root: Path, role: str = "t"):
    return compile_role(root, role, "local", Config(path=root / "kiln.yaml"))


def refusal(root: Path, role: str = "t") -> str:
    """Every diagnostic of compile and validate, rendered (both must refuse, and say the same)."""
    with pytest.raises(InvalidInput) as info:
        compile_ok(root, role)
    rendered = info.value.render()
    validated = validate_roles(root, [role], Config(path=root / "kiln.yaml"))
    assert validated, "validate said ok"
    assert [d.render() for d in validated] == [d.render() for d in info.value.diagnostics]
    assert SECRET not in rendered, "the secret was read"
    return rendered


def test_a_symlinked_file_out_of_the_role_is_refused_though_no_step_names_it(tmp_path):
    secret = plant_secret(tmp_path)
    role = make_role(tmp_path, "t", {"steps.yml": TEMPLATED_SRC})
    link(role / "files" / "motd", secret)
    out = refusal(tmp_path)
    assert f"{role}/files/motd:1:1: error:" in out and "leads out of the role" in out, out
    assert str(secret) in out, "the message says where the link leads"


def test_a_symlinked_template_out_of_the_role_is_refused_and_not_parsed(tmp_path):
    secret = plant_secret(tmp_path)
    secret.write_text("{% if %}" + SECRET)  # a syntax error would quote it
    role = make_role(tmp_path, "t", {"steps.yml": "[]\n"})
    link(role / "templates" / "site.j2", secret)
    out = refusal(tmp_path)
    assert f"{role}/templates/site.j2:1:1: error:" in out, out


def test_a_symlinked_directory_out_of_the_role_is_refused(tmp_path):
    secret = plant_secret(tmp_path)
    role = make_role(tmp_path, "t", {"steps.yml": "[]\n"})
    link(role / "files" / "conf", secret.parent)
    out = refusal(tmp_path)
    assert f"{role}/files/conf:1:1: error:" in out and "leads out of the role" in out, out


def test_a_chain_of_symlinks_that_ends_outside_is_refused(tmp_path):
    plant_secret(tmp_path)
    role = make_role(tmp_path, "t", {"steps.yml": "[]\n"})
    link(role / "files" / "hop2", "../../../outside/secret")  # relative, with '..'
    link(role / "files" / "hop1", "hop2")
    link(role / "templates" / "deep" / "hop0", "../../files/hop1")
    out = refusal(tmp_path)
    for name in ("files/hop1", "files/hop2", "templates/deep/hop0"):
        assert f"{role}/{name}:1:1: error:" in out, out


def test_a_step_file_that_is_a_symlink_out_of_the_role_is_not_read(tmp_path):
    secret = plant_secret(tmp_path)
    role = make_role(tmp_path, "t", {})
    link(role / "steps.yml", secret)
    out = refusal(tmp_path)
    assert f"{role}/steps.yml:1:1: error:" in out and "leads out of the role" in out, out


def test_a_dependency_keeps_to_its_own_directory(tmp_path):
    """Each role's files stay within that role's directory, even when the link lands in another role."""
    secret = plant_secret(tmp_path)
    base = make_role(tmp_path, "base", {"steps.yml": "[]\n", "files/shared.txt": "base's own\n"})
    link(base / "files" / "motd", secret)
    web = make_role(tmp_path, "web", {"role.yml": "description: web\ndepends: [base]\n", "steps.yml": "[]\n"})
    link(web / "files" / "borrowed.txt", "../../base/files/shared.txt")
    out = refusal(tmp_path, "web")
    assert f"{base}/files/motd:1:1: error:" in out, out
    assert f"{web}/files/borrowed.txt:1:1: error:" in out, out


def test_dot_dot_in_a_src_is_refused_at_the_step(tmp_path):
    plant_secret(tmp_path)
    make_role(
        tmp_path,
        "t",
        {
            "files/ok.txt": "ok\n",
            "files/sub/x": "x\n",
            "steps.yml": "- copy: {src: ../../../outside/secret, dest: /etc/a}\n"
            "- copy: {src: sub/../ok.txt, dest: /etc/b}\n",
        },
    )
    out = refusal(tmp_path)
    assert "steps.yml:1:15: error:" in out and "steps.yml:2:15: error:" in out, out
    assert out.count("'..'") >= 2, out


@pytest.mark.parametrize(
    "statement",
    [
        '{% include "../../../outside/secret" %}',
        '{% import "/etc/passwd" as x %}',
        '{% from "../../base/templates/macros.j2" import m %}',
        '{% extends "../x.j2" %}',
        '{% include ["nothing.j2", "../../../outside/secret"] %}',
    ],
)
def test_a_template_that_includes_out_of_the_role_is_refused(tmp_path, statement):
    plant_secret(tmp_path)
    make_role(tmp_path, "base", {"templates/macros.j2": "{% macro m() %}base{% endmacro %}\n"})
    make_role(
        tmp_path,
        "t",
        {
            "templates/site.j2": f"line one\n  {statement}\n",
            "steps.yml": "- template: {src: site.j2, dest: /etc/site}\n",
        },
    )
    out = refusal(tmp_path)
    assert "templates/site.j2:2:" in out and "out of the role's templates/" in out, out


def test_a_template_includes_its_own_role_templates_by_their_names(tmp_path):
    make_role(
        tmp_path,
        "t",
        {
            "templates/site.j2": '{% include "parts/head.j2" %}{% from "macros.j2" import m %}{{ m() }}\n',
            "templates/parts/head.j2": "head\n",
            "templates/macros.j2": "{% macro m() %}body{% endmacro %}\n",
            "steps.yml": "- template: {src: site.j2, dest: /etc/site}\n",
        },
    )
    compiled = compile_ok(tmp_path)
    assert set(compiled.files) == {"templates/t/site.j2", "templates/t/parts/head.j2", "templates/t/macros.j2"}
    make_role(tmp_path, "t", {"templates/site.j2": '{% include "nosuch.j2" %}\n'})
    out = refusal(tmp_path)
    assert "templates/site.j2:1:" in out and "'nosuch.j2' not found" in out, out


def test_an_absolute_src_is_a_path_on_the_box_and_nothing_is_read_here(tmp_path):
    """copy/template/unarchive read a relative src from the role, an absolute one on the box:
    the controller neither reads nor ships it (a guard: this held before the fix too)."""
    secret = plant_secret(tmp_path)
    make_role(
        tmp_path,
        "t",
        {
            "steps.yml": f"- copy: {{src: {secret}, dest: /etc/a}}\n"
            f"- template: {{src: {secret}, dest: /etc/b}}\n"
            f"- unarchive: {{src: {secret}, dest: /srv}}\n"
        },
    )
    compiled = compile_ok(tmp_path)
    assert compiled.files == {}
    assert [step["args"]["src"] for step in compiled.steps] == [str(secret)] * 3


def test_symlinks_within_the_role_are_followed_and_shipped_as_files(tmp_path):
    """Like Ansible: a link to a file or directory of the same role ships its content."""
    role = make_role(
        tmp_path,
        "t",
        {
            "files/motd": "hello\n",
            "templates/conf/a.conf": "a\n",
            "steps.yml": "- copy: {src: alias, dest: /etc/motd}\n- copy: {src: conf/a.conf, dest: /etc/a.conf}\n",
        },
    )
    link(role / "files" / "alias", "motd")
    link(role / "files" / "conf", "../templates/conf")
    link(role / "files" / "loop", ".")
    out = refusal(tmp_path)  # a directory linking to its own ancestor cannot be shipped
    assert f"{role}/files/loop:1:1: error:" in out and "loop" in out, out
    os.unlink(role / "files" / "loop")
    compiled = compile_ok(tmp_path)
    assert compiled.files == {
        "files/t/motd": b"hello\n",
        "files/t/alias": b"hello\n",
        "files/t/conf/a.conf": b"a\n",
        "templates/t/conf/a.conf": b"a\n",
    }


# --- on the box: the agent's template loader -------------------------------------------------
def box_templates(tmp_path: Path, files: dict[str, str]) -> Path:
    """A bundle's templates/ as the agent sees it: templates/<role>/..."""
    for rel, text in files.items():
        (tmp_path / "templates" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "templates" / rel).write_text(text)
    return tmp_path / "templates"


def test_the_box_loader_refuses_names_out_of_the_role(tmp_path):
    """Another role's template, '..', an absolute name, a link out: not found, nothing rendered."""
    names = ["base/secret.j2", "../templates/base/secret.j2", "/etc/hostname", "leak.j2"]
    files = {f"web/site{i}.j2": f'{{% include "{name}" %}}\n' for i, name in enumerate(names)}
    templates = box_templates(tmp_path, {**files, "base/secret.j2": SECRET})
    (templates / "web" / "leak.j2").symlink_to(templates / "base" / "secret.j2")
    for index, name in enumerate(names):
        with pytest.raises(TemplateError) as info:
            render_file(str(templates), f"web/site{index}.j2", {})
        assert SECRET not in str(info.value), name
        assert isinstance(info.value.__cause__, jinja2.TemplateNotFound), name


def test_the_box_loader_finds_includes_in_the_role_templates(tmp_path):
    templates = box_templates(
        tmp_path, {"web/site.j2": '{% include "parts/head.j2" %}body {{ x }}\n', "web/parts/head.j2": "head\n"}
    )
    # the included file's last newline is dropped, as ansible-core renders it (tests/test_ansible_jinja.py)
    assert render_file(str(templates), "web/site.j2", {"x": 1}) == "headbody 1\n"


@pytest.mark.slow
def test_on_the_box_a_template_includes_its_own_role_templates_and_nothing_else(box, tmp_path):
    """The real agent in a container: includes are relative to the role's templates/; a name
    computed on the box that names another role's template is not found, and nothing is written."""
    make_role(tmp_path, "base", {"templates/secret.j2": SECRET})
    make_role(
        tmp_path,
        "t",
        {
            "role.yml": "description: t\ndepends: [base]\ndefaults:\n  other: base/secret.j2\n",
            "templates/site.j2": '{% include "parts/head.j2" %}body\n',
            "templates/parts/head.j2": "head\n",
            "templates/pick.j2": "{% include other %}\n",
            "steps.yml": "- template: {src: site.j2, dest: /srv/rolepaths/site}\n"
            "- template: {src: pick.j2, dest: /srv/rolepaths/pick}\n",
        },
    )
    compiled = compile_ok(tmp_path)
    templates = {name.split("/", 1)[1]: data for name, data in compiled.files.items() if name.startswith("templates/")}
    box.sh("rm -rf /srv/rolepaths && mkdir -p /srv/rolepaths")
    events = box.apply(compiled.steps, variables=compiled.variables, templates=templates)
    steps = [e for e in events if e["event"] == "step"]
    assert [s["status"] for s in steps] == ["changed", "failed"], events
    assert "not in the role's templates/" in str(steps[1]), steps[1]
    assert box.sh("cat /srv/rolepaths/site") == "headbody\n"  # the include's last newline dropped, as ansible-core
    assert box.sh("ls /srv/rolepaths") == "site\n"
    assert SECRET not in str(events)


@pytest.mark.slow
def test_on_the_box_a_src_rendered_with_dot_dot_is_refused(box, tmp_path):
    """A src known only on the box (rendered from facts or registered values) may hold '..':
    copy reads the role's own files and nothing beside them."""
    make_role(
        tmp_path,
        "t",
        {
            "files/motd": "hello\n",
            "role.yml": "description: t\ndefaults:\n  up: '../../../../../../etc/hostname'\n",
            "steps.yml": "- copy: {src: '{{ up }}', dest: /srv/srcpaths/leak}\n"
            "- copy: {src: '{{ \"motd\" }}', dest: /srv/srcpaths/motd}\n",
        },
    )
    compiled = compile_ok(tmp_path)
    files = {name.split("/", 1)[1]: data for name, data in compiled.files.items() if name.startswith("files/")}
    box.sh("rm -rf /srv/srcpaths && mkdir -p /srv/srcpaths")
    events = box.apply(compiled.steps, variables=compiled.variables, files=files)
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["status"] == "failed" and "leads out of the role" in steps[0]["msg"], steps[0]
    assert box.sh("ls /srv/srcpaths", check=False) == ""


# --- the command line ----------------------------------------------------------------------------
@pytest.mark.slow
def test_validate_and_bake_refuse_an_escaping_symlink_and_launch_nothing(engine, tmp_path):
    role = "pathescape"
    secret = plant_secret(tmp_path)
    playbooks = make_playbooks(tmp_path, {"steps.yml": TEMPLATED_SRC}, role=role)
    link(playbooks / "roles" / role / "files" / "motd", secret)
    shown = f"playbooks/roles/{role}/files/motd:1:1: error:"

    checked = invoke(tmp_path, "validate", "--role", role, playbooks=playbooks, timeout=120)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert shown in checked.stdout, checked.stdout

    baked = invoke(tmp_path, "bake", "--role", role, playbooks=playbooks, timeout=300)
    assert baked.returncode == 2, baked.stdout + baked.stderr
    assert shown in baked.stdout and "nothing was launched" in baked.stdout, baked.stdout
    assert "==> launch" not in baked.stderr and "Traceback" not in baked.stderr, baked.stderr
    assert not engine.containers(f"kiln.role={role}"), "a build machine was launched"
    for proc in (checked, baked):
        assert SECRET not in proc.stdout + proc.stderr
    builds = tmp_path / "builds"
    for path in builds.rglob("*") if builds.exists() else []:
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
