"""block_in_file, sysctl, cron, unarchive and git in a real container, applied by the real agent."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from tests.machines import converge, run_step

pytestmark = pytest.mark.slow


# --- block_in_file -----------------------------------------------------------------------
BEGIN, END = "# BEGIN KILN MANAGED BLOCK", "# END KILN MANAGED BLOCK"

BLOCK_CASES = [
    ("append", "a\n", {"block": "x\ny\n"}, f"a\n{BEGIN}\nx\ny\n{END}\n"),
    ("replace", f"a\n{BEGIN}\nold\n{END}\nz\n", {"block": "new\n"}, f"a\n{BEGIN}\nnew\n{END}\nz\n"),
    ("insertbefore-bof", "a\n", {"block": "x", "insertbefore": "BOF"}, f"{BEGIN}\nx\n{END}\na\n"),
    ("insertafter", "[a]\n[b]\n", {"block": "k=v", "insertafter": r"^\[a\]"}, f"[a]\n{BEGIN}\nk=v\n{END}\n[b]\n"),
    ("absent", f"a\n{BEGIN}\nold\n{END}\nz\n", {"state": "absent"}, "a\nz\n"),
    ("empty-block-removes", f"{BEGIN}\nold\n{END}\n", {"block": ""}, ""),
    ("custom-marker", "a\n", {"block": "x", "marker": "// {mark} app"}, "a\n// BEGIN app\nx\n// END app\n"),
]


@pytest.mark.parametrize("name, initial, args, expected", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_block_in_file(box, name, initial, args, expected):
    path = f"/srv/bif-{name}"
    box.put({path: (initial.encode(), 0o644)})
    out = converge(box, "block_in_file", dict(args, path=path), f"cat {path}")
    assert out["after"] == expected
    assert out["first"]["diff"]["unified"].startswith(f"--- {path} (before)")


def test_block_in_file_create_and_noops(box):
    out = converge(
        box,
        "block_in_file",
        {"path": "/srv/bif-new", "block": "x", "create": True, "mode": "0600"},
        "cat /srv/bif-new; stat -c %a /srv/bif-new",
    )
    assert out["after"] == f"{BEGIN}\nx\n{END}\n600\n"
    assert run_step(box, "block_in_file", {"path": "/srv/bif-none", "block": "x"})["status"] == "failed"
    assert run_step(box, "block_in_file", {"path": "/srv/bif-none", "state": "absent"})["status"] == "ok"
    box.put({"/srv/bif-plain": (b"a\n", 0o644)})
    assert run_step(box, "block_in_file", {"path": "/srv/bif-plain", "state": "absent"})["status"] == "ok"
    assert box.sh("cat /srv/bif-plain") == "a\n"


# --- sysctl ------------------------------------------------------------------------------
def test_sysctl_file_only(box):
    path = "/srv/sysctl1/99-kiln.conf"
    args = {"name": "net.ipv4.tcp_syncookies", "value": "1", "sysctl_file": path, "reload": False}
    out = converge(box, "sysctl", args, f"cat {path} 2>/dev/null")
    assert out["after"] == "net.ipv4.tcp_syncookies=1\n"
    assert "+net.ipv4.tcp_syncookies=1" in out["first"]["diff"]["unified"]
    # as ansible.posix rewrites it: each setting once, at its first line, as key=value
    box.put({path: (b"# keep\nnet.ipv4.tcp_syncookies=0\nkernel.panic = 5\nnet.ipv4.tcp_syncookies = 0\n", 0o644)})
    out = converge(box, "sysctl", args, f"cat {path}")
    assert out["after"] == "# keep\nnet.ipv4.tcp_syncookies=1\nkernel.panic=5\n"
    # the value already there: the file is left as it is, however it is spelt
    box.put({path: (b"kernel.panic = 5\nnet.ipv4.tcp_syncookies = 1\n", 0o644)})
    assert run_step(box, "sysctl", args)["status"] == "ok"
    out = converge(box, "sysctl", dict(args, state="absent"), f"cat {path}")
    assert out["after"] == "kernel.panic=5\n"


def test_sysctl_live_value(box):
    live = box.sh("cat /proc/sys/net/ipv4/ip_forward").strip()
    path = "/srv/sysctl2/99-kiln.conf"
    # the live value already matches: only the file changes
    out = converge(
        box, "sysctl", {"name": "net.ipv4.ip_forward", "value": live, "sysctl_file": path}, f"cat {path} 2>/dev/null"
    )
    assert out["after"] == f"net.ipv4.ip_forward={live}\n"
    assert "before" not in out["first"]["diff"]
    # /proc/sys is read-only in the container: a live change fails clearly, or is ignored
    other = "0" if live == "1" else "1"
    failed = run_step(box, "sysctl", {"name": "net.ipv4.ip_forward", "value": other, "sysctl_file": path})
    assert failed["status"] == "failed" and "cannot set net.ipv4.ip_forward live" in failed["msg"]
    ignored = {
        "name": "net.ipv4.ip_forward",
        "value": other,
        "sysctl_file": "/srv/sysctl2/b.conf",
        "ignoreerrors": True,
    }
    first = run_step(box, "sysctl", ignored)
    assert first["status"] == "changed" and "live value not set" in first["msg"]
    assert run_step(box, "sysctl", ignored)["status"] == "ok"
    assert box.sh("cat /proc/sys/net/ipv4/ip_forward").strip() == live
    missing = run_step(box, "sysctl", {"name": "kernel.kt_nope", "value": "1", "sysctl_file": path})
    assert missing["status"] == "failed" and "no such kernel parameter" in missing["msg"]


# --- cron --------------------------------------------------------------------------------
FAKE_CRONTAB = b"""#!/bin/sh
# a stand-in for cron's crontab(1): -l lists, - reads the new table from stdin
user=root; list=0
while [ $# -gt 0 ]; do
  case "$1" in -l) list=1;; -u) shift; user=$1;; esac; shift
done
tab=/var/spool/cron/crontabs/$user
if [ $list = 1 ]; then
  [ -f "$tab" ] || { echo "no crontab for $user" >&2; exit 1; }
  exec cat "$tab"
fi
mkdir -p /var/spool/cron/crontabs && cat > "$tab"
"""


def test_cron(box):
    missing = run_step(box, "cron", {"name": "kt", "job": "true"})
    assert missing["status"] == "failed" and "crontab is not installed" in missing["msg"]
    box.put(
        {
            "/usr/local/bin/crontab": (FAKE_CRONTAB, 0o755),
            "/var/spool/cron/crontabs/nobody": (b'MAILTO=""\n5 * * * * /bin/other\n', 0o600),
        }
    )
    try:
        tab = "cat /var/spool/cron/crontabs/nobody"
        args = {"name": "rotate", "minute": "0", "hour": "3", "job": "/usr/local/bin/rotate", "user": "nobody"}
        out = converge(box, "cron", args, tab)
        assert out["after"] == 'MAILTO=""\n5 * * * * /bin/other\n#kiln: rotate\n0 3 * * * /usr/local/bin/rotate\n'
        assert "+0 3 * * * /usr/local/bin/rotate" in out["first"]["diff"]["unified"]
        out = converge(box, "cron", dict(args, hour="4"), tab)
        assert out["after"].endswith("#kiln: rotate\n0 4 * * * /usr/local/bin/rotate\n")
        assert "-0 3 * * * /usr/local/bin/rotate" in out["first"]["diff"]["unified"]
        out = converge(box, "cron", {"name": "boot", "special_time": "reboot", "job": "/bin/up", "user": "nobody"}, tab)
        assert out["after"].endswith("#kiln: boot\n@reboot /bin/up\n")
        out = converge(box, "cron", {"name": "rotate", "state": "absent", "user": "nobody"}, tab)
        assert out["after"] == 'MAILTO=""\n5 * * * * /bin/other\n#kiln: boot\n@reboot /bin/up\n'
        # a user without a crontab yet
        out = converge(
            box,
            "cron",
            {"name": "x", "job": "/bin/x", "user": "daemon"},
            "cat /var/spool/cron/crontabs/daemon 2>/dev/null",
        )
        assert out["after"] == "#kiln: x\n* * * * * /bin/x\n"
        assert run_step(box, "cron", {"name": "never", "state": "absent", "user": "daemon"})["status"] == "ok"
    finally:
        box.sh("rm -f /usr/local/bin/crontab")


# --- unarchive ---------------------------------------------------------------------------
def tar_gz(entries: dict[str, bytes | str | None]) -> bytes:
    """name -> bytes (file), str (symlink target) or None (directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, value in entries.items():
            info = tarfile.TarInfo(name)
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o644
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


SITE = tar_gz(
    {"site": None, "site/index.html": b"<h1>kiln</h1>\n", "site/css/a.css": b"body{}\n", "site/home.html": "index.html"}
)
LISTING = "cd /srv/unar1 2>/dev/null && find . -printf '%y %p %u\\n' | LC_ALL=C sort && cat site/index.html"


def test_unarchive_tar(box):
    box.sh("mkdir -p /srv/unar1")
    args = {"src": "web/site.tar.gz", "dest": "/srv/unar1", "owner": "nobody"}
    out = converge(box, "unarchive", args, LISTING, files={"web/site.tar.gz": SITE})
    assert out["after"] == (
        "d . root\nd ./site nobody\nd ./site/css root\nf ./site/css/a.css nobody\n"
        "f ./site/index.html nobody\nl ./site/home.html nobody\n<h1>kiln</h1>\n"
    )
    assert "site/index.html" in out["first"]["diff"]["before"]["differs"]
    # one changed file makes it unpack again
    box.sh("echo changed > /srv/unar1/site/css/a.css")
    again = run_step(box, "unarchive", args, files={"web/site.tar.gz": SITE})
    assert again["status"] == "changed" and again["diff"]["before"]["differs"] == ["site/css/a.css"]
    assert box.sh("cat /srv/unar1/site/css/a.css") == "body{}\n"


def test_unarchive_zip_creates_and_failures(box):
    box.sh("mkdir -p /srv/unar2")
    files = {"r/app.zip": zip_of({"app/run.sh": b"#!/bin/sh\necho hi\n", "app/README": b"readme\n"})}
    out = converge(
        box, "unarchive", {"src": "r/app.zip", "dest": "/srv/unar2"}, "cat /srv/unar2/app/README", files=files
    )
    assert out["after"] == "readme\n"
    skipped = run_step(
        box, "unarchive", {"src": "r/app.zip", "dest": "/srv/unar3", "creates": "/srv/unar2/app"}, files=files
    )
    assert skipped["status"] == "skipped" and "skipped, since /srv/unar2/app exists" in skipped["msg"], skipped
    nodir = run_step(box, "unarchive", {"src": "r/app.zip", "dest": "/srv/unar3"}, files=files)
    assert nodir["status"] == "failed" and "is not a directory" in nodir["msg"]
    box.sh("mkdir -p /srv/unar4")
    evil = {"r/evil.tar.gz": tar_gz({"../../etc/kiln-evil": b"x"})}
    refused = run_step(box, "unarchive", {"src": "r/evil.tar.gz", "dest": "/srv/unar4"}, files=evil)
    assert refused["status"] == "failed" and "refusing" in refused["msg"]
    assert box.sh("ls /etc/kiln-evil 2>/dev/null || echo none").strip() == "none"
    link_out = {"r/link.tar.gz": tar_gz({"esc": "/etc"})}
    refused = run_step(box, "unarchive", {"src": "r/link.tar.gz", "dest": "/srv/unar4"}, files=link_out)
    assert refused["status"] == "failed" and "links outside" in refused["msg"]


def test_unarchive_remote_src_copy_false_mode_and_strip_components(box):
    # nginxinc.nginx's idiom: an archive fetched onto the box, its top folder stripped, every member 0700
    box.put({"/srv/unar5-src/pcre.tar.gz": (tar_gz({"pcre-8": None, "pcre-8/configure": b"#!/bin/sh\n"}), 0o644)})
    box.sh("mkdir -p /srv/unar5 /srv/unar6")
    args = {
        "src": "/srv/unar5-src/pcre.tar.gz",
        "dest": "/srv/unar5",
        "copy": False,
        "mode": "0700",
        "extra_opts": ["--strip-components=1"],
    }
    out = converge(box, "unarchive", args, "cd /srv/unar5 && find . -printf '%y %p %m\\n' | LC_ALL=C sort")
    # the top folder stripped away is listed by GNU tar as an empty name, which Ansible's mode reaches: dest itself
    assert out["after"] == "d . 700\nf ./configure 700\n"
    # a member whose mode drifts is put back
    box.sh("chmod 0644 /srv/unar5/configure")
    assert run_step(box, "unarchive", args)["status"] == "changed"
    assert box.sh("stat -c %a /srv/unar5/configure") == "700\n"
    # remote_src: true is the same; a symbolic mode applies to each member's own
    args = {"src": "/srv/unar5-src/pcre.tar.gz", "dest": "/srv/unar6", "remote_src": True, "mode": "go-rwx"}
    out = converge(box, "unarchive", args, "cd /srv/unar6 && find . -printf '%y %p %m\\n' | LC_ALL=C sort")
    assert out["after"] == "d . 755\nd ./pcre-8 700\nf ./pcre-8/configure 600\n"


def test_unarchive_argument_failures(box):
    box.put({"/srv/unar7-src/a.zip": (zip_of({"a/b": b"b\n"}), 0o644)})
    box.sh("mkdir -p /srv/unar7")
    base = {"src": "/srv/unar7-src/a.zip", "dest": "/srv/unar7", "remote_src": True}
    for extra, msg in [
        ({"extra_opts": ["--strip-components=1"]}, "unzip has none"),
        ({"extra_opts": ["--no-same-owner"]}, "understands --strip-components=N only"),
        ({"src": "/srv/unar7-src/none.zip"}, "not found on the box"),
    ]:
        failed = run_step(box, "unarchive", dict(base, **extra))
        assert failed["status"] == "failed" and msg in failed["msg"], failed
    both = run_step(box, "unarchive", dict(base, copy=False))
    assert both["status"] == "failed" and "copy" in both["msg"] and "remote_src" in both["msg"], both


# --- git (last: installs git) ------------------------------------------------------------
def test_git(box):
    if box.sh("command -v git || true").strip() == "":
        missing = run_step(box, "git", {"repo": "/srv/git-src/repo.git", "dest": "/srv/gitco"})
        assert missing["status"] == "failed" and "git is not installed" in missing["msg"]
        assert run_step(box, "package", {"name": "git"})["status"] == "changed"
    box.sh("""set -e
rm -rf /srv/git-src /srv/gitco; mkdir -p /srv/git-src/work; cd /srv/git-src/work
git init -q -b main .; git config user.email t@kiln; git config user.name t
echo one > f; git add f; git commit -qm one; git tag v1
echo two > f; git commit -qam two
git clone -q --bare . /srv/git-src/repo.git""")
    repo = "file:///srv/git-src/repo.git"
    probe = "cat /srv/gitco/f 2>/dev/null; git -C /srv/gitco rev-parse HEAD 2>/dev/null"
    out = converge(box, "git", {"repo": repo, "dest": "/srv/gitco", "version": "v1"}, probe)
    assert out["after"].startswith("one\n")
    assert out["first"]["diff"]["before"] == "absent"
    out = converge(box, "git", {"repo": repo, "dest": "/srv/gitco", "version": "main"}, probe)
    assert out["after"].startswith("two\n")
    box.sh("echo local > /srv/gitco/f")
    dirty = run_step(box, "git", {"repo": repo, "dest": "/srv/gitco", "version": "v1"})
    assert dirty["status"] == "failed" and "local modifications" in dirty["msg"]
    forced = run_step(box, "git", {"repo": repo, "dest": "/srv/gitco", "version": "v1", "force": True})
    assert forced["status"] == "changed" and box.sh("cat /srv/gitco/f") == "one\n"
    unknown = run_step(box, "git", {"repo": repo, "dest": "/srv/gitco", "version": "nope"})
    assert unknown["status"] == "failed" and "not found" in unknown["msg"]


def test_git_accept_hostkey_over_ssh(box):
    """An ssh remote whose host key the box does not know: refused (BatchMode, never a prompt), unless
    accept_hostkey or accept_newhostkey says to trust it (the remote is the box's own sshd)."""
    box.sh("""set -e
command -v git >/dev/null || { apt-get install -y -q git >/dev/null; }
mkdir -p /root/.ssh /srv/gitssh && chmod 700 /root/.ssh
rm -f /root/.ssh/known_hosts /root/.ssh/kiln_test_git*
ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/kiln_test_git
cat /root/.ssh/kiln_test_git.pub >> /root/.ssh/authorized_keys
rm -rf /srv/gitssh/*; git init -q --bare -b main /srv/gitssh/repo.git; cd /srv/gitssh
git clone -q /srv/gitssh/repo.git work 2>/dev/null; cd work
git config user.email t@kiln; git config user.name t; echo one > f; git add f; git commit -qm one; git push -q origin main
""")
    env = {"GIT_SSH_COMMAND": "ssh -i /root/.ssh/kiln_test_git -o IdentitiesOnly=yes"}
    repo = "ssh://root@127.0.0.1/srv/gitssh/repo.git"
    args = {"repo": repo, "dest": "/srv/gitssh/co1", "version": "main"}
    steps = [{"module": "git", "args": args, "environment": env}]
    (refused,) = [e for e in box.apply(steps) if e.get("event") == "step"]
    assert refused["status"] == "failed" and "Host key verification failed" in refused["msg"], refused
    trusted = [{"module": "git", "args": dict(args, accept_hostkey=True), "environment": env}]
    (cloned,) = [e for e in box.apply(trusted) if e.get("event") == "step"]
    assert cloned["status"] == "changed" and box.sh("cat /srv/gitssh/co1/f") == "one\n", cloned
    box.sh("rm -f /root/.ssh/known_hosts")
    new = [{"module": "git", "args": dict(args, dest="/srv/gitssh/co2", accept_newhostkey=True), "environment": env}]
    (cloned,) = [e for e in box.apply(new) if e.get("event") == "step"]
    assert cloned["status"] == "changed", cloned
    assert "127.0.0.1" in box.sh("ssh-keygen -F 127.0.0.1 -f /root/.ssh/known_hosts || true")
    box.sh("sed -i '/kiln_test_git/d; /root@/d' /root/.ssh/authorized_keys 2>/dev/null || true")


def test_sysctl_set_sets_the_live_value_without_reload(box):
    live = box.sh("cat /proc/sys/net/ipv4/ip_forward").strip()
    other = "0" if live == "1" else "1"
    base = {"name": "net.ipv4.ip_forward", "sysctl_file": "/srv/sysctl3/a.conf", "reload": False}
    # reload: false alone writes the file only (the live value is not touched)
    assert run_step(box, "sysctl", dict(base, value=other))["status"] == "changed"
    # sysctl_set: the live value differs, so it is set: /proc/sys is read-only in the container
    failed = run_step(box, "sysctl", dict(base, value=other, sysctl_set=True))
    assert failed["status"] == "failed" and "cannot set net.ipv4.ip_forward live" in failed["msg"], failed
    ignored = run_step(box, "sysctl", dict(base, value=other, sysctl_set=True, ignoreerrors=True))
    assert ignored["status"] == "ok" and "live value not set" in ignored["msg"], ignored
    # the live value already as wanted: sysctl_set has nothing to do
    out = converge(box, "sysctl", dict(base, value=live, sysctl_set=True), "cat /srv/sysctl3/a.conf")
    assert out["after"] == f"net.ipv4.ip_forward={live}\n"
    # a parameter the kernel lacks: the file only, no failure
    absent = {"name": "kernel.kt_nope", "value": "1", "sysctl_set": True}
    out = converge(box, "sysctl", dict(base, **absent), "cat /srv/sysctl3/a.conf")
    assert out["after"].endswith("kernel.kt_nope=1\n")


def test_service_sleep_is_accepted_and_ignored_on_systemd(box):
    """Ansible's service action drops sleep for systemd ('Ignoring "sleep" as it is not used in "systemd"'):
    the restart is one systemctl restart, at once."""
    box.put({"/etc/systemd/system/kiln-sleep.service": (b"[Service]\nExecStart=/bin/sleep infinity\n", 0o644)})
    box.sh("systemctl daemon-reload && systemctl start kiln-sleep")
    pid = box.sh("systemctl show -p MainPID --value kiln-sleep")
    done = run_step(box, "service", {"name": "kiln-sleep", "state": "restarted", "sleep": 30})
    assert done["status"] == "changed" and "sleep ignored" in done["msg"], done
    assert done["duration"] < 10, done
    assert box.sh("systemctl show -p MainPID --value kiln-sleep") != pid
    bad = run_step(box, "service", {"name": "kiln-sleep", "state": "restarted", "sleep": "long"})
    assert bad["status"] == "failed" and "sleep" in bad["msg"], bad
    box.sh("systemctl stop kiln-sleep; rm -f /etc/systemd/system/kiln-sleep.service; systemctl daemon-reload")
