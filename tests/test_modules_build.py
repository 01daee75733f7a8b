"""assemble and make in a real container, applied by the real agent (compared with ansible-playbook in the
differential group kiln_auth: tests/parity_roles/kiln_auth/tasks/assemble.yml)."""

from __future__ import annotations

import pytest

from tests.machines import converge, run_step

pytestmark = pytest.mark.slow

FRAGMENTS = (
    "d=/srv/kt-frag; rm -rf $d; mkdir -p $d; printf 'a\\n' > $d/1; printf 'b' > $d/2; : > $d/3; printf 'c\\n' > $d/4"
)


def test_assemble_joins_fragments_as_ansible_does(box):
    """A newline after a fragment without one (the empty one too), the delimiter between fragments."""
    box.sh(FRAGMENTS)
    args = {"src": "/srv/kt-frag", "dest": "/srv/kt-assembled", "delimiter": "--\\t--", "mode": "0600"}
    out = converge(box, "assemble", args, "stat -c %a /srv/kt-assembled; cat /srv/kt-assembled")
    assert out["after"] == "600\na\n--\t--\nb\n--\t--\n\n--\t--\nc\n", repr(out["after"])


def test_assemble_refuses_a_missing_source_and_a_bad_validate(box):
    missing = run_step(box, "assemble", {"src": "/srv/kt-none", "dest": "/srv/kt-x"})
    assert missing["status"] == "failed" and "Source (/srv/kt-none) does not exist" in missing["msg"], missing
    box.sh(FRAGMENTS)
    rejected = run_step(box, "assemble", {"src": "/srv/kt-frag", "dest": "/srv/kt-y", "validate": "false %s"})
    assert rejected["status"] == "failed" and box.sh("test -e /srv/kt-y || echo absent").strip() == "absent"


#: a make of ours (the base image has none; apt would cost ~20 s): -q answers from the target's file, as make -q
#: does for a rule with no prerequisites; otherwise it builds it from the NAME=value words
FAKE_MAKE = """#!/bin/sh
quiet=no target=all greeting=
for word in "$@"; do
  case $word in -q) quiet=yes;; GREETING=*) greeting=${word#GREETING=};; -*) ;; *=*) ;; *) target=$word;; esac
done
if [ $quiet = yes ]; then test -e "$target.out"; exit $?; fi
echo "made $greeting" > "$target.out"
"""


def test_make_runs_only_when_make_q_says_the_target_is_stale(box):
    """The first apply builds, the second is up to date (make -q exit 0); check mode builds nothing."""
    box.put({"/srv/kt-make/make": (FAKE_MAKE.encode(), 0o755)})
    box.sh("rm -f /srv/kt-make/*.out")
    args = {"chdir": "/srv/kt-make", "target": "all", "params": {"GREETING": "hello"}, "make": "/srv/kt-make/make"}
    out = converge(box, "make", args, "cat /srv/kt-make/all.out 2>/dev/null || true")
    assert out["after"] == "made hello\n"
    assert out["first"]["msg"] == "ran /srv/kt-make/make all GREETING=hello", out["first"]


def test_shell_runs_its_line_through_another_shell(box):
    """executable: Ansible's shell runs [executable, "-c", cmd] (ssh_hardening's selinux.yml names one)."""
    done = run_step(box, "shell", {"cmd": 'echo "$0 ${BASH_VERSION:-none}" > /srv/kt-shell', "executable": "/bin/dash"})
    assert done["status"] == "changed", done
    assert box.sh("cat /srv/kt-shell") == "/bin/dash none\n"
    run_step(box, "shell", {"cmd": 'echo "$0 ${BASH_VERSION:+bash}" > /srv/kt-shell'})
    assert box.sh("cat /srv/kt-shell") == "/bin/bash bash\n"
