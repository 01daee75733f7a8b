"""Ansible's ``blockinfile``: kiln's block_in_file with Ansible's marker lines.

A role moved from Ansible keeps finding (and replacing) the blocks Ansible wrote on machines
it managed before: the default marker is ``# {mark} ANSIBLE MANAGED BLOCK``, as ansible-core's.

Example::

    - blockinfile: {path: /etc/hosts, block: "10.0.0.10 db"}
"""

from __future__ import annotations

from . import block_in_file

SCHEMA = {
    **block_in_file.SCHEMA,
    "description": "Ansible's blockinfile: keep a block of lines between Ansible's marker lines in a file.",
    "args": {
        **block_in_file.SCHEMA["args"],
        "marker": {**block_in_file.SCHEMA["args"]["marker"], "default": "# {mark} ANSIBLE MANAGED BLOCK"},
    },
    "example": '- blockinfile: {path: /etc/hosts, block: "10.0.0.10 db"}',
}

check = block_in_file.check
apply = block_in_file.apply
