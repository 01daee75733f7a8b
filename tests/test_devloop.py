"""The developer loop on a kept local instance: converge, change, converge, verify, destroy."""

from __future__ import annotations

import json
import re

import pytest

from tests.playbooks import invoke, make_playbooks

pytestmark = pytest.mark.slow

STEPS = """\
- name: first file
  copy: {content: "one\\n", dest: /etc/kiln-dev-1}
- name: second file
  copy: {content: "two\\n", dest: /etc/kiln-dev-2}
"""


def statuses(stderr: str) -> dict[str, str]:
    """step name -> status, from JSON log lines."""
    out = {}
    for line in stderr.splitlines():
        if line.startswith("{") and '"event": "step"' in line:
            e = json.loads(line)
            out[e["step"]] = e["status"]
    return out


def test_converge_applies_only_the_difference(engine, tmp_path):
    playbooks = make_playbooks(
        tmp_path, {"steps.yml": STEPS, "verify.yml": '- file: /etc/kiln-dev-2\n  contains: ["two"]\n'}, role="devloop"
    )
    env = {"KILN_JSON": "1"}
    try:
        first = invoke(tmp_path, "converge", "--role", "devloop", env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        assert statuses(first.stderr) == {"first file": "changed", "second file": "changed"}
        state = json.loads((tmp_path / "builds/dev/devloop.json").read_text())
        container = state["instance"]["id"]
        assert engine.container_exists(container)

        (playbooks / "roles/devloop/steps.yml").write_text(STEPS.replace("two", "TWO"))
        second = invoke(tmp_path, "converge", "--role", "devloop", env=env)
        assert second.returncode == 0, second.stderr[-2000:]
        assert statuses(second.stderr) == {"first file": "ok", "second file": "changed"}
        assert json.loads((tmp_path / "builds/dev/devloop.json").read_text())["instance"]["id"] == container
        assert engine.exec(container, "cat", "/etc/kiln-dev-2").strip() == "TWO"

        failing = invoke(tmp_path, "verify", "--role", "devloop", env=env)
        assert failing.returncode == 1 and "two" in failing.stderr
        (playbooks / "roles/devloop/verify.yml").write_text('- file: /etc/kiln-dev-2\n  contains: ["TWO"]\n')
        assert invoke(tmp_path, "verify", "--role", "devloop", env=env).returncode == 0
    finally:
        gone = invoke(tmp_path, "destroy", "--role", "devloop")
    assert gone.returncode == 0 and re.search(r"removed kiln-build-devloop-", gone.stdout), gone.stdout
    assert not engine.containers("kiln.role=devloop")
    assert not (tmp_path / "builds/dev/devloop.json").exists()


def converged(stderr: str) -> dict:
    """The `converged` (or `verified`) JSON log line of one converge."""
    for line in stderr.splitlines():
        if line.startswith("{") and ('"event": "converged"' in line or '"event": "verified"' in line):
            return json.loads(line)
    raise AssertionError(f"no converged line in: {stderr[-2000:]}")


def agent_sha256() -> str:
    """The controller's agent, hashed here from its bytes."""
    import hashlib

    from kiln.controller.agent_build import agent_zipapp

    return hashlib.sha256(agent_zipapp()).hexdigest()


def box_sha(engine, container: str, path: str) -> str:
    return engine.exec(container, "sh", "-c", f"sha256sum {path} 2>/dev/null | cut -d' ' -f1").strip()


def malicious_zip() -> bytes:
    """A zip that passes for the agent and, if it ever ran, would leave /root/tampered behind."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("agent/__init__.py", "")
        zf.writestr(
            "agent/__main__.py", "def main(argv=None):\n    open('/root/tampered', 'w').write('ran')\n    return 0\n"
        )
    return buf.getvalue()


def test_the_agent_stays_on_the_box_checked_by_hash_and_a_tampered_copy_never_runs(engine, tmp_path):
    """One exec per converge; the agent crosses only when the box lacks the controller's copy (by sha256)."""
    make_playbooks(tmp_path, {"steps.yml": STEPS}, role="devcache")
    env = {"KILN_JSON": "1"}
    try:
        first = invoke(tmp_path, "converge", "--role", "devcache", env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        container = json.loads((tmp_path / "builds/dev/devcache.json").read_text())["instance"]["id"]
        assert box_sha(engine, container, "/var/lib/kiln/agent.pyz") == agent_sha256()
        written = engine.exec(container, "stat", "-c", "%i %Z %z", "/var/lib/kiln/agent.pyz")

        again = invoke(tmp_path, "converge", "--role", "devcache", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert engine.exec(container, "stat", "-c", "%i %Z %z", "/var/lib/kiln/agent.pyz") == written, "re-written"
        assert converged(first.stderr)["bytes_sent"] > 100_000  # a new box: the agent went along
        sent = converged(again.stderr)
        assert sent["bytes_sent"] < 10_000 and sent["round_trips"] == 1, sent  # unchanged: only the bundle
        assert statuses(again.stderr) == {"first file": "ok", "second file": "ok"}

        # the box's copy no longer has the controller's sha256: it is replaced, and never runs
        bad = malicious_zip()
        for path in ("/var/lib/kiln/agent.pyz", *compiled_copies(engine, container)):
            engine.exec(container, "sh", "-c", f"cat > {path}", input=bad)
        tampered = invoke(tmp_path, "converge", "--role", "devcache", env=env)
        assert tampered.returncode == 0, tampered.stderr[-2000:]
        sent = converged(tampered.stderr)
        assert sent["bytes_sent"] > 100_000 and sent["round_trips"] == 2, sent  # asked, then sent
        assert engine.exec(container, "sh", "-c", "test -e /root/tampered && echo ran || echo never").strip() == "never"
        assert box_sha(engine, container, "/var/lib/kiln/agent.pyz") == agent_sha256()
        assert statuses(tampered.stderr) == {"first file": "ok", "second file": "ok"}

        # only the byte-compiled copy tampered with: compiled again from the checked source, not sent
        for path in compiled_copies(engine, container):
            engine.exec(container, "sh", "-c", f"cat > {path}", input=bad)
        compiled = invoke(tmp_path, "converge", "--role", "devcache", env=env)
        assert compiled.returncode == 0, compiled.stderr[-2000:]
        sent = converged(compiled.stderr)
        assert sent["bytes_sent"] < 10_000 and sent["round_trips"] == 1, sent
        assert engine.exec(container, "sh", "-c", "test -e /root/tampered && echo ran || echo never").strip() == "never"

        # the state file says the box holds another agent (the controller's changed): sent with the bundle
        state_file = tmp_path / "builds/dev/devcache.json"
        state = json.loads(state_file.read_text())
        state["agent"] = {"sha256": "0" * 64, "compiled": ""}
        state_file.write_text(json.dumps(state))
        changed = invoke(tmp_path, "converge", "--role", "devcache", env=env)
        assert changed.returncode == 0, changed.stderr[-2000:]
        sent = converged(changed.stderr)
        assert sent["bytes_sent"] > 100_000 and sent["round_trips"] == 1, sent
    finally:
        invoke(tmp_path, "destroy", "--role", "devcache")


def compiled_copies(engine, container: str) -> list[str]:
    listing = engine.exec(container, "sh", "-c", "ls /var/lib/kiln/agent-*.zip 2>/dev/null || true")
    paths = listing.split()
    assert paths, "the box keeps a byte-compiled copy of the agent"
    return paths


#: listens on a warm agent's port, answers the greeting with a proof it cannot have, and keeps what it heard
IMPOSTOR = r"""
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(1)
server.settimeout(120)
conn, _ = server.accept()
conn.settimeout(10)
conn.sendall(b'{"proof": "0000", "nonce": "1111"}\n')
heard = b""
try:
    while True:
        data = conn.recv(65536)
        if not data:
            break
        heard += data
except OSError:
    pass
open("/root/impostor-heard", "wb").write(heard)
"""
#: the agent's processes on the box: the bootstrap's command line (the bracket keeps the looking shell out)
AGENT_PATTERN = "'import hashlib, jso[n], marshal'"


def warm_agents(engine, container: str) -> list[str]:
    """The pids of the agents running on the box (a warm one, between converges)."""
    return engine.exec(container, "sh", "-c", f"pgrep -f {AGENT_PATTERN} || true").split()


def kill_warm_agents(engine, container: str) -> None:
    engine.exec(container, "sh", "-c", f"pkill -f {AGENT_PATTERN} || true")
    assert wait_for(lambda: not warm_agents(engine, container)), "the warm agent did not exit"


def listening(engine, container: str, port: int) -> bool:
    table = engine.exec(container, "cat", "/proc/net/tcp")
    return f"0100007F:{port:04X} 00000000:0000 0A" in table


def wait_for(check, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_a_converge_leaves_a_warm_agent_the_next_one_uses_and_anything_else_gets_a_fresh_run(engine, tmp_path):
    """The next converge skips python's start on the box; a warm agent that is gone, runs another agent, or
    cannot prove the token is never sent anything: the run is an ordinary exec (which leaves a new one)."""
    playbooks = make_playbooks(
        tmp_path, {"steps.yml": STEPS, "verify.yml": '- file: /etc/kiln-dev-2\n  contains: ["two"]\n'}, role="devwarm"
    )
    env = {"KILN_JSON": "1"}
    state_file = tmp_path / "builds/dev/devwarm.json"

    def converge(**extra: str) -> dict:
        done = invoke(tmp_path, "converge", "--role", "devwarm", env={**env, **extra})
        assert done.returncode == 0, done.stderr[-2000:]
        return {**converged(done.stderr), "stderr": done.stderr}

    try:
        assert converge()["via"] == "exec"
        state = json.loads(state_file.read_text())
        container, warm = state["instance"]["id"], state["warm"]
        assert warm["agent"] == agent_sha256() and warm["port"] and len(warm["token"]) == 64
        assert len(warm_agents(engine, container)) == 1

        (playbooks / "roles/devwarm/steps.yml").write_text(STEPS.replace("two", "TWO"))
        second = converge()
        assert second["via"] == "warm agent" and second["round_trips"] == 1
        assert statuses(second["stderr"]) == {"first file": "ok", "second file": "changed"}
        assert engine.exec(container, "cat", "/etc/kiln-dev-2").strip() == "TWO"
        assert engine.exec(container, "stat", "-c", "%a", "/etc/kiln-dev-2").strip() == "644"  # root's umask
        assert json.loads(state_file.read_text())["warm"] == warm and len(warm_agents(engine, container)) == 1

        failing = invoke(tmp_path, "verify", "--role", "devwarm", env=env)  # a failed check, by the warm agent
        assert failing.returncode == 1 and "two" in failing.stderr

        # a token that is not the warm agent's: it cannot prove it, so it is sent nothing; the exec leaves another
        state = json.loads(state_file.read_text())
        state["warm"]["token"] = "f" * 64
        state_file.write_text(json.dumps(state))
        wrong = converge()
        assert wrong["via"] == "exec" and "warm agent not used" in wrong["stderr"]
        assert json.loads(state_file.read_text())["warm"]["token"] != "f" * 64
        assert wait_for(lambda: len(warm_agents(engine, container)) == 1), "the replaced warm agent did not exit"

        # the state names another agent (the controller's changed): the warm one is not asked
        state = json.loads(state_file.read_text())
        state["warm"]["agent"] = "0" * 64
        state_file.write_text(json.dumps(state))
        assert converge()["via"] == "exec"

        # gone (the machine restarted, or it was idle for its bound): a fresh run
        kill_warm_agents(engine, container)
        assert converge()["via"] == "exec"

        # gone, and its port taken by one that cannot prove the token: it hears the greeting, nothing more
        port = json.loads(state_file.read_text())["warm"]["port"]
        kill_warm_agents(engine, container)
        engine.exec(container, "sh", "-c", "cat > /root/impostor.py", input=IMPOSTOR.encode())
        engine.exec(container, "sh", "-c", f"nohup python3 /root/impostor.py {port} >/dev/null 2>&1 &")
        assert wait_for(lambda: listening(engine, container, port))
        assert converge()["via"] == "exec"
        assert wait_for(lambda: engine.exec_status(container, "test", "-e", "/root/impostor-heard")[0] == 0)
        heard = engine.exec(container, "cat", "/root/impostor-heard")
        assert heard.count("\n") == 1 and '"nonce"' in heard and "steps" not in heard, heard

        # idle for its bound, the warm agent exits
        kill_warm_agents(engine, container)
        assert converge(KILN_WARM_AGENT_SECONDS="2")["via"] == "exec"
        assert len(warm_agents(engine, container)) == 1
        assert wait_for(lambda: not warm_agents(engine, container), 8.0), "the idle warm agent did not exit"
    finally:
        gone = invoke(tmp_path, "destroy", "--role", "devwarm")
    assert gone.returncode == 0 and not engine.containers("kiln.role=devwarm")


def test_a_kept_instance_whose_host_key_is_not_the_pinned_one_is_refused(engine, tmp_path):
    """The connection opened early pins the state file's host key: another key is refused, nothing runs."""
    from kiln.controller.ssh import KeyPair

    make_playbooks(tmp_path, {"steps.yml": STEPS}, role="devpin")
    env = {"KILN_JSON": "1"}
    state_file = tmp_path / "builds/dev/devpin.json"
    try:
        assert invoke(tmp_path, "converge", "--role", "devpin", env=env).returncode == 0
        state = json.loads(state_file.read_text())
        other = KeyPair.generate().public_openssh
        state["host_pub"] = state["instance"]["host_public_key"] = other
        state_file.write_text(json.dumps(state))
        refused = invoke(tmp_path, "converge", "--role", "devpin", env=env)
        assert refused.returncode == 1 and "host key" in refused.stderr, refused.stderr[-2000:]
        assert not statuses(refused.stderr), "a step ran on a machine whose host key is not the pinned one"
    finally:
        invoke(tmp_path, "destroy", "--role", "devpin")


def test_a_kept_box_keeps_only_the_newest_compiled_copies_of_the_agent(engine, tmp_path):
    """Each agent version leaves a byte-compiled copy on a kept box (~1.5 MB): when the box makes a new one, only
    the newest few (3) stay, the one it runs among them."""
    make_playbooks(tmp_path, {"steps.yml": STEPS}, role="devprune")
    env = {"KILN_JSON": "1"}
    try:
        first = invoke(tmp_path, "converge", "--role", "devprune", env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        container = json.loads((tmp_path / "builds/dev/devprune.json").read_text())["instance"]["id"]
        [current] = compiled_copies(engine, container)
        older = [f"/var/lib/kiln/agent-{n:032x}.cpython-311.zip" for n in range(1, 6)]
        for day, path in enumerate(older, 1):  # earlier agents' copies, the last one the newest
            engine.exec(container, "sh", "-c", f"echo old > {path} && touch -d 2020-01-0{day} {path}")
        kill_warm_agents(engine, container)
        engine.exec(container, "rm", current)  # the next converge compiles the agent again
        again = invoke(tmp_path, "converge", "--role", "devprune", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert statuses(again.stderr) == {"first file": "ok", "second file": "ok"}
        assert sorted(compiled_copies(engine, container)) == sorted([current, *older[-2:]])
    finally:
        invoke(tmp_path, "destroy", "--role", "devprune")


def test_the_agent_s_python_runs_no_code_a_role_put_in_its_site(engine, tmp_path):
    """The agent runs only what the controller sent and checked: a ``.pth`` hook a role installed in python's
    dist-packages (it runs at every ``python3`` start with site) does not run in the agent's process."""
    make_playbooks(tmp_path, {"steps.yml": STEPS}, role="devsite")
    env = {"KILN_JSON": "1"}
    hook = "/usr/lib/python3/dist-packages/kiln-probe.pth"
    try:
        first = invoke(tmp_path, "converge", "--role", "devsite", env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        container = json.loads((tmp_path / "builds/dev/devsite.json").read_text())["instance"]["id"]
        engine.exec(container, "sh", "-c", f"echo \"import os; open('/root/site-ran', 'w')\" > {hook}")
        assert engine.exec(container, "sh", "-c", "python3 -c pass; test -e /root/site-ran && echo ran").strip()
        engine.exec(container, "rm", "-f", "/root/site-ran")
        kill_warm_agents(engine, container)  # the next converge starts python again
        again = invoke(tmp_path, "converge", "--role", "devsite", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert converged(again.stderr)["via"] == "exec"
        assert engine.exec(container, "sh", "-c", "test -e /root/site-ran && echo ran || echo never").strip() == "never"
    finally:
        invoke(tmp_path, "destroy", "--role", "devsite")
