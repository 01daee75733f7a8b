"""Ansible modules kiln maps must exist on the agent, and the ones added for that (issue 9).

Every name in the mapping table (controller/stepfiles/ansible.py) runs on an agent module with a SCHEMA;
a name whose agent module is missing is refused at validate, with file:line:column, before anything is
launched (it used to compile, launch a machine, and fail there with "unknown module").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.agent.modules import discover
from kiln.controller.stepfiles import ansible

AGENT_MODULES = discover()


def role_problems(root: Path, tasks: str) -> list[str]:
    from kiln.controller.config import Config
    from kiln.controller.stepfiles.compile import validate_roles

    main = root / "roles" / "r" / "tasks" / "main.yml"
    main.parent.mkdir(parents=True)
    main.write_text(tasks)
    found = validate_roles(root, ["r"], Config(path=root / "kiln.yaml"))
    return [f"{Path(d.file).name}:{d.line}:{d.column}: {d.message}" for d in found]


def mapped_names() -> list[str]:
    """Every spelling the table answers: short names, and the collections' FQCNs."""
    names = list(ansible.TABLE)
    names += [f"ansible.posix.{name}" for name in ansible.POSIX]
    names += [f"community.general.{name}" for name in ansible.COMMUNITY_GENERAL]
    names += [f"community.crypto.{name}" for name in ansible.COMMUNITY_CRYPTO]
    return names


@pytest.mark.parametrize("name", mapped_names())
def test_every_mapped_name_runs_on_an_agent_module_with_a_schema(name: str) -> None:
    mapping = ansible.resolve(name, AGENT_MODULES)
    if mapping is None:  # a collection name kiln does not map: validate's "unknown module"
        return
    if name.split(".")[-1] in ansible.NOT_YET:  # declared still to come: it must really be missing
        assert mapping.module not in AGENT_MODULES, f"{name} is implemented now: take it out of ansible.NOT_YET"
        return
    assert mapping.module in AGENT_MODULES, f"{name} maps to '{mapping.module}', which agent/modules/ lacks"
    assert isinstance(getattr(AGENT_MODULES[mapping.module], "SCHEMA", None), dict)


@pytest.mark.parametrize("name", ansible.NOT_YET)
def test_a_mapped_name_without_its_agent_module_is_refused_at_validate(tmp_path: Path, name: str) -> None:
    """What the table maps but the agent lacks: refused where it is written, never launched."""
    found = role_problems(tmp_path, f"- name: A module still to come.\n  {name}:\n    path: /etc/x\n")
    assert any(p.startswith(f"main.yml:2:3: kiln does not implement '{name}' yet") for p in found), found
