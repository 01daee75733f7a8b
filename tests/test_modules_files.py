"""copy, template, line_in_file and download in a real container, applied by the real agent.

Every case: check mode changes nothing, the first apply changes, the second is ok,
and the change is read back with a shell probe. Each test uses its own /srv/<name>.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.machines import converge, run_step

pytestmark = pytest.mark.slow


def cat_and_stat(path: str) -> str:
    return f"cat {path} 2>/dev/null; echo '--'; stat -c '%a %U %G' {path} 2>/dev/null"


# --- copy --------------------------------------------------------------------------------
def test_copy_content_creates_file_with_attributes(box):
    box.sh("mkdir -p /srv/copy1")
    args = {"content": "hello\n", "dest": "/srv/copy1/f", "mode": "0640", "owner": "nobody", "group": "nogroup"}
    out = converge(box, "copy", args, cat_and_stat("/srv/copy1/f"))
    assert out["after"] == "hello\n--\n640 nobody nogroup\n"
    diff = out["first"]["diff"]
    assert "+hello" in diff["unified"]
    assert diff["after"] == {"owner": "nobody", "group": "nogroup", "mode": "0640"}
    assert out["check"]["diff"]["unified"] == diff["unified"]


def test_copy_src_from_files_into_directory(box):
    box.sh("mkdir -p /srv/copy2")
    files = {"web/motd": b"welcome to kiln\n"}
    out = converge(box, "copy", {"src": "web/motd", "dest": "/srv/copy2/"}, "cat /srv/copy2/motd", files=files)
    assert out["after"] == "welcome to kiln\n"
    assert out["first"]["msg"].startswith("/srv/copy2/motd")


def test_copy_replaces_changed_content_with_backup(box):
    box.sh(
        "mkdir -p /srv/copy3 && printf 'old\\n' > /srv/copy3/f && chown nobody /srv/copy3/f && chmod 0600 /srv/copy3/f"
    )
    out = converge(
        box, "copy", {"content": "new\n", "dest": "/srv/copy3/f", "backup": True}, cat_and_stat("/srv/copy3/f")
    )
    # the replaced file's owner and mode are kept
    assert out["after"] == "new\n--\n600 nobody root\n"
    unified = out["first"]["diff"]["unified"]
    assert "-old" in unified and "+new" in unified
    backup = out["first"].get("backup_file") or box.sh("ls /srv/copy3/ | grep '~$'").strip()
    assert box.sh("cat /srv/copy3/f.*~") == "old\n", backup


def test_copy_attributes_only(box):
    box.sh("mkdir -p /srv/copy4 && printf 'same\\n' > /srv/copy4/f && chmod 0644 /srv/copy4/f")
    out = converge(
        box, "copy", {"content": "same\n", "dest": "/srv/copy4/f", "mode": "0600"}, cat_and_stat("/srv/copy4/f")
    )
    assert out["after"] == "same\n--\n600 root root\n"
    assert out["first"]["diff"] == {"before": {"mode": "0644"}, "after": {"mode": "0600"}}


@pytest.mark.parametrize(
    "args, setup, status, msg",
    [
        (
            {"content": "x\n", "dest": "/srv/copy5/keep", "force": False},
            "printf 'keep\\n' > /srv/copy5/keep",
            "ok",
            "as wanted",
        ),
        (
            {"content": "x\n", "dest": "/srv/copy5/bad", "validate": "grep -q never %s"},
            "printf 'bad\\n' > /srv/copy5/bad",
            "failed",
            "validate",
        ),
        ({"src": "nope/missing", "dest": "/srv/copy5/m"}, "", "failed", "not found in the role's files/"),
        ({"content": "x\n", "dest": "/srv/copy5/no/such/dir/f"}, "", "failed", "does not exist"),
        ({"content": "x\n", "dest": "/srv/copy5"}, "", "failed", "is a directory"),
    ],
    ids=["force-false-keeps", "validate-rejects", "missing-src", "missing-parent", "dest-is-dir"],
)
def test_copy_noop_and_failures(box, args, setup, status, msg):
    box.sh("mkdir -p /srv/copy5 && " + (setup or "true"))
    before = box.sh("find /srv/copy5 -type f -exec cat {} +")
    event = run_step(box, "copy", args)
    assert event["status"] == status, event
    assert msg in event["msg"]
    assert box.sh("find /srv/copy5 -type f -exec cat {} +") == before
    assert box.sh("ls -a /srv/copy5 | grep -c kiln- || true").strip() == "0"  # no temp files left


# --- template ----------------------------------------------------------------------------
def test_template_renders_vars_and_facts(box):
    box.sh("mkdir -p /srv/tmpl1")
    templates = {"web/site.conf.j2": b"listen {{ port }}\nos {{ facts.os_family }}\n"}
    args = {"src": "web/site.conf.j2", "dest": "/srv/tmpl1/site.conf", "mode": "0644"}
    out = converge(box, "template", args, "cat /srv/tmpl1/site.conf", templates=templates, variables={"port": 8080})
    assert out["after"] == "listen 8080\nos debian\n"
    assert "+listen 8080" in out["first"]["diff"]["unified"]
    # a new value changes the file and shows in the diff
    changed = run_step(box, "template", args, templates=templates, variables={"port": 9090})
    assert changed["status"] == "changed"
    assert "-listen 8080" in changed["diff"]["unified"] and "+listen 9090" in changed["diff"]["unified"]


def test_template_into_directory_drops_j2(box):
    box.sh("mkdir -p /srv/tmpl2")
    out = converge(
        box,
        "template",
        {"src": "r/app.ini.j2", "dest": "/srv/tmpl2/"},
        "cat /srv/tmpl2/app.ini",
        templates={"r/app.ini.j2": b"name={{ name }}\n"},
        variables={"name": "kiln"},
    )
    assert out["after"] == "name=kiln\n"


def test_template_undefined_variable_fails_and_writes_nothing(box):
    box.sh("mkdir -p /srv/tmpl3")
    event = run_step(box, "template", {"src": "r/t.j2", "dest": "/srv/tmpl3/t"}, templates={"r/t.j2": b"{{ nope }}\n"})
    assert event["status"] == "failed"
    assert "nope" in event["msg"]
    assert box.sh("test -e /srv/tmpl3/t && echo yes || echo no").strip() == "no"


def test_template_registered_result_is_visible(box):
    box.sh("mkdir -p /srv/tmpl4")
    steps = [
        {"module": "command", "args": {"cmd": "echo 42"}, "register": "answer"},
        {"module": "template", "args": {"src": "r/a.j2", "dest": "/srv/tmpl4/a"}},
    ]
    box.apply(steps, templates={"r/a.j2": b"answer={{ answer.stdout | trim }}\n"})
    assert box.sh("cat /srv/tmpl4/a") == "answer=42\n"


# --- line_in_file ------------------------------------------------------------------------
LINE_CASES = [
    ("append", "a\nb\n", {"line": "c"}, "a\nb\nc\n", "+c"),
    ("append-no-final-newline", "a\nb", {"line": "c"}, "a\nb\nc\n", "+c"),
    ("replace-regexp", "Port 22\nX 1\n", {"regexp": "^#?Port ", "line": "Port 2222"}, "Port 2222\nX 1\n", "-Port 22"),
    ("replace-last-match", "k=1\nk=2\n", {"regexp": "^k=", "line": "k=9"}, "k=1\nk=9\n", "+k=9"),
    (
        "insertafter",
        "[main]\nx=1\n[other]\n",
        {"line": "y=2", "insertafter": r"^\[main\]"},
        "[main]\ny=2\nx=1\n[other]\n",
        "+y=2",
    ),
    ("insertbefore-bof", "a\n", {"line": "# header", "insertbefore": "BOF"}, "# header\na\n", "+# header"),
    ("insertbefore-regex", "a\nend\n", {"line": "b", "insertbefore": "^end"}, "a\nb\nend\n", "+b"),
    ("insertafter-no-match-goes-to-eof", "a\n", {"line": "b", "insertafter": "^zzz"}, "a\nb\n", "+b"),
    (
        "backrefs",
        "listen 80 default\n",
        {"regexp": r"^listen (\d+) (default)$", "line": r"listen \1 \2 http2", "backrefs": True},
        "listen 80 default http2\n",
        "+listen 80 default http2",
    ),
    ("absent-regexp", "a\n#x\nb\n#y\n", {"regexp": "^#", "state": "absent"}, "a\nb\n", "-#x"),
    ("absent-line", "a\nb\n", {"line": "a", "state": "absent"}, "b\n", "-a"),
]


@pytest.mark.parametrize("name, initial, args, expected, diff_line", LINE_CASES, ids=[c[0] for c in LINE_CASES])
def test_line_in_file(box, name, initial, args, expected, diff_line):
    path = f"/srv/lif-{name}"
    box.put({path: (initial.encode(), 0o644)})
    out = converge(box, "line_in_file", dict(args, path=path), f"cat {path}")
    assert out["after"] == expected
    assert diff_line in out["first"]["diff"]["unified"].splitlines()


def test_line_in_file_create_with_mode(box):
    out = converge(
        box,
        "line_in_file",
        {"path": "/srv/lif-create", "line": "x=1", "create": True, "mode": "0600"},
        cat_and_stat("/srv/lif-create"),
    )
    assert out["after"] == "x=1\n--\n600 root root\n"


LINE_NOOPS = [
    ("line-already-there", "a\nb\n", {"line": "a"}, "ok", "already present"),
    ("regexp-misses-but-line-there", "a\nb\n", {"regexp": "^zzz", "line": "b"}, "ok", "already present"),
    ("backrefs-no-match", "a\n", {"regexp": "^(zzz)$", "line": r"\1", "backrefs": True}, "ok", "already present"),
    ("absent-nothing-matches", "a\n", {"regexp": "^b", "state": "absent"}, "ok", "already absent"),
    ("bad-regexp", "a\n", {"regexp": "(", "line": "x"}, "failed", "not a valid regular expression"),
]


@pytest.mark.parametrize("name, initial, args, status, msg", LINE_NOOPS, ids=[c[0] for c in LINE_NOOPS])
def test_line_in_file_noops(box, name, initial, args, status, msg):
    path = f"/srv/lifn-{name}"
    box.put({path: (initial.encode(), 0o644)})
    event = run_step(box, "line_in_file", dict(args, path=path))
    assert event["status"] == status, event
    assert msg in event["msg"]
    assert box.sh(f"cat {path}") == initial


def test_line_in_file_missing_file(box):
    failed = run_step(box, "line_in_file", {"path": "/srv/lif-missing", "line": "x"})
    assert failed["status"] == "failed" and "create: true" in failed["msg"]
    absent = run_step(box, "line_in_file", {"path": "/srv/lif-missing", "line": "x", "state": "absent"})
    assert absent["status"] == "ok"
    assert box.sh("test -e /srv/lif-missing && echo yes || echo no").strip() == "no"


# --- download ----------------------------------------------------------------------------
PAYLOAD = b"kiln download payload\n" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
PORT = 8765


@pytest.fixture(scope="module")
def web(box):
    box.put({"/srv/dl-www/payload.bin": (PAYLOAD, 0o644)})
    box.sh(
        f"cd /srv/dl-www && setsid nohup python3 -m http.server {PORT} --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null &"
    )
    for _ in range(50):
        if (
            box.sh(
                f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1)\" 2>/dev/null "
                "&& echo up || echo down"
            ).strip()
            == "up"
        ):
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{PORT}"
    box.sh(f"pkill -f 'http[.]server {PORT}' || true", check=False)


def test_download_fetches_verifies_and_sets_mode(box, web):
    box.sh("mkdir -p /srv/dl1")
    args = {"url": f"{web}/payload.bin", "dest": "/srv/dl1/p.bin", "sha256": PAYLOAD_SHA, "mode": "0600"}
    out = converge(box, "download", args, "sha256sum /srv/dl1/p.bin; stat -c %a /srv/dl1/p.bin")
    assert out["after"] == f"{PAYLOAD_SHA}  /srv/dl1/p.bin\n600\n"
    assert out["first"]["diff"] == {"before": {"sha256": "absent"}, "after": {"sha256": PAYLOAD_SHA, "mode": "0600"}}


def test_download_matching_dest_needs_no_network(box):
    box.put({"/srv/dl2/p.bin": (PAYLOAD, 0o644)})
    event = run_step(
        box,
        "download",
        {"url": "http://127.0.0.1:1/unreachable", "dest": "/srv/dl2/p.bin", "sha256": f"sha256:{PAYLOAD_SHA.upper()}"},
    )
    assert event["status"] == "ok", event


def test_download_replaces_wrong_content(box, web):
    box.put({"/srv/dl3/p.bin": (b"stale\n", 0o644)})
    args = {"url": f"{web}/payload.bin", "dest": "/srv/dl3/p.bin", "sha256": PAYLOAD_SHA}
    out = converge(box, "download", args, "sha256sum /srv/dl3/p.bin")
    assert out["first"]["diff"]["before"]["sha256"] == hashlib.sha256(b"stale\n").hexdigest()


@pytest.mark.parametrize(
    "path, sha, msg",
    [
        ("payload.bin", "0" * 64, "sha256 mismatch"),
        ("missing.bin", PAYLOAD_SHA, "HTTP 404"),
        ("payload.bin", "abc", "64 hex digits"),
    ],
    ids=["wrong-sha", "http-404", "bad-sha-arg"],
)
def test_download_failures_leave_nothing(box, web, path, sha, msg):
    box.sh("mkdir -p /srv/dl4")
    event = run_step(box, "download", {"url": f"{web}/{path}", "dest": "/srv/dl4/p.bin", "sha256": sha})
    assert event["status"] == "failed" and msg in event["msg"], event
    assert box.sh("ls -A /srv/dl4").strip() == ""


# --- copy: remote_src, decrypt -----------------------------------------------------------------
def test_copy_remote_src_takes_a_file_on_the_box_with_its_mode(box):
    # nginxinc.nginx's idiom: a default config the package installed becomes the config
    box.sh("mkdir -p /srv/copyr && printf 'k=v\\n' > /srv/copyr/agent.conf.default && chmod 0750 /srv/copyr/*")
    args = {"src": "/srv/copyr/agent.conf.default", "dest": "/srv/copyr/agent.conf", "remote_src": True}
    out = converge(box, "copy", args, cat_and_stat("/srv/copyr/agent.conf"))
    assert out["after"] == "k=v\n--\n644 root root\n"  # a new file: the umask's mode, as Ansible's atomic_move
    box.sh("printf 'k=w\\n' > /srv/copyr/agent.conf.default")
    out = converge(box, "copy", args, cat_and_stat("/srv/copyr/agent.conf"))
    assert out["after"] == "k=w\n--\n750 root root\n"  # a replaced one: the source's (copystat)
    relative = run_step(box, "copy", dict(args, src="agent.conf.default"))
    assert relative["status"] == "failed" and "an absolute path on the box" in relative["msg"], relative
    missing = run_step(box, "copy", dict(args, src="/srv/copyr/none"))
    assert missing["status"] == "failed" and "not found on the box" in missing["msg"], missing


VAULTED = b"$ANSIBLE_VAULT;1.1;AES256\n6133\n"


def test_copy_decrypt_refuses_a_vault_file_it_cannot_decrypt(box):
    box.sh("mkdir -p /srv/copyv")
    files = {"web/cert.pem": VAULTED}
    refused = run_step(box, "copy", {"src": "web/cert.pem", "dest": "/srv/copyv/cert.pem"}, files=files)
    assert refused["status"] == "failed" and "vault-encrypted file" in refused["msg"], refused
    assert box.sh("ls /srv/copyv") == ""
    args = {"src": "web/cert.pem", "dest": "/srv/copyv/cert.pem", "decrypt": False}
    assert converge(box, "copy", args, "cat /srv/copyv/cert.pem", files=files)["after"] == VAULTED.decode()


# --- file: force, follow, hard, times (Ansible's file module's rules) --------------------------
def test_file_link_force_replaces_a_file_and_links_to_a_missing_src(box):
    box.sh("mkdir -p /srv/flink && printf 'x\\n' > /srv/flink/conf && rm -f /srv/flink/dangling")
    refused = run_step(box, "file", {"path": "/srv/flink/conf", "src": "real.conf", "state": "link"})
    assert refused["status"] == "failed" and "src file does not exist" in refused["msg"], refused
    box.sh("printf 'y\\n' > /srv/flink/real.conf")
    refused = run_step(box, "file", {"path": "/srv/flink/conf", "src": "real.conf", "state": "link"})
    assert refused["status"] == "failed" and "refusing to convert from file to symlink" in refused["msg"], refused
    args = {"path": "/srv/flink/conf", "src": "real.conf", "state": "link", "force": True}
    out = converge(box, "file", args, "readlink /srv/flink/conf; cat /srv/flink/conf")
    assert out["after"] == "real.conf\ny\n"
    # geerlingguy.apache's idiom: a link to a src that exists only later (force: "{{ ansible_check_mode }}")
    args = {"path": "/srv/flink/dangling", "src": "/srv/flink/later", "state": "link", "force": True}
    assert converge(box, "file", args, "readlink /srv/flink/dangling")["after"] == "/srv/flink/later\n"


def test_file_link_force_takes_an_empty_directory_only(box):
    box.sh("mkdir -p /srv/fdir/empty /srv/fdir/full && touch /srv/fdir/full/x /srv/fdir/t")
    full = run_step(box, "file", {"path": "/srv/fdir/full", "src": "/srv/fdir/t", "state": "link", "force": True})
    assert full["status"] == "failed" and "is not empty, refusing" in full["msg"], full
    args = {"path": "/srv/fdir/empty", "src": "/srv/fdir/t", "state": "link", "force": True}
    assert converge(box, "file", args, "readlink /srv/fdir/empty")["after"] == "/srv/fdir/t\n"


def test_file_hard_link(box):
    box.sh("mkdir -p /srv/fhard && printf 'h\\n' > /srv/fhard/src && printf 'other\\n' > /srv/fhard/dest")
    args = {"path": "/srv/fhard/dest", "src": "/srv/fhard/src", "state": "hard"}
    refused = run_step(box, "file", args)
    assert refused["status"] == "failed" and "Cannot link, file exists at destination" in refused["msg"], refused
    probe = "stat -c '%h %i' /srv/fhard/src /srv/fhard/dest"
    out = converge(box, "file", dict(args, force=True), probe)
    src_line, dest_line = out["after"].splitlines()
    assert src_line == dest_line and src_line.startswith("2 "), out["after"]


def test_file_follow_false_owns_the_link_not_its_target(box):
    box.sh("mkdir -p /srv/ffollow && touch /srv/ffollow/t && ln -sfn t /srv/ffollow/l")
    probe = "stat -c '%U' /srv/ffollow/t; stat -c '%U' /srv/ffollow/l"
    args = {"path": "/srv/ffollow/l", "src": "t", "state": "link", "owner": "nobody", "follow": False}
    assert converge(box, "file", args, probe)["after"] == "root\nnobody\n"
    # follow (the default): the target's owner; state=file on the link acts on the target too
    args = {"path": "/srv/ffollow/l", "state": "file", "group": "nogroup"}
    assert converge(box, "file", args, "stat -c '%G' /srv/ffollow/t")["after"] == "nogroup\n"


def test_file_modification_and_access_time(box):
    box.sh("mkdir -p /srv/ftime && touch /srv/ftime/f")
    args = {
        "path": "/srv/ftime/f",
        "modification_time": "2020-01-02 03:04:05",
        "modification_time_format": "%Y-%m-%d %H:%M:%S",
        "access_time": "202101020304.05",
    }
    out = converge(box, "file", args, "TZ=UTC0 stat -c '%y|%x' /srv/ftime/f | sed 's/[.][0-9]*//g'")
    # the container runs on UTC: Ansible reads the times in the box's local time
    assert out["after"] == "2020-01-02 03:04:05 +0000|2021-01-02 03:04:05 +0000\n"
    now = run_step(box, "file", {"path": "/srv/ftime/f", "state": "touch", "modification_time": "now"})
    assert now["status"] == "changed", now
    assert box.sh("test $(( $(date +%s) - $(stat -c %Y /srv/ftime/f) )) -lt 60 && echo recent") == "recent\n"
    bad = run_step(box, "file", {"path": "/srv/ftime/f", "access_time": "yesterday"})
    assert bad["status"] == "failed" and "does not match the format" in bad["msg"], bad
