"""package (apt) in a real Debian container; installs two tiny packages (hello, tree).

An apt-get wrapper in /usr/local/sbin logs every call, so the tests can tell that
nothing at all is run when every package is already as wanted.
"""

from __future__ import annotations

import pytest

from tests.machines import AgentBox, converge, run_step

pytestmark = pytest.mark.slow

WRAPPER = b"""#!/bin/sh
echo "$*" >> /var/log/kiln-apt-calls
exec /usr/bin/apt-get "$@"
"""


@pytest.fixture(scope="module")
def apt_log(box):
    box.put({"/usr/local/sbin/apt-get": (WRAPPER, 0o755)})
    box.sh("apt-get remove -y -q hello tree >/dev/null 2>&1 || true; : > /var/log/kiln-apt-calls")

    def calls() -> list[str]:
        out = box.sh("cat /var/log/kiln-apt-calls; : > /var/log/kiln-apt-calls")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    yield calls
    box.sh("rm -f /usr/local/sbin/apt-get /var/log/kiln-apt-calls")


def installed(box, name: str) -> str:
    return box.sh(f"dpkg-query -W -f '${{db:Status-Abbrev}} ${{Version}}' {name} 2>/dev/null || echo none").strip()


def test_empty_lists_trigger_one_update_then_install(box, apt_log):
    # a fresh base image has no apt lists: the module updates once by itself
    box.sh("find /var/lib/apt/lists -maxdepth 1 -type f -delete; rm -f /var/lib/apt/periodic/update-success-stamp")
    out = converge(box, "package", {"name": "hello"}, "dpkg-query -W -f '${db:Status-Abbrev}' hello 2>/dev/null")
    assert out["after"].startswith("ii")
    assert out["first"]["diff"] == {"before": {"hello": "absent"}, "after": {"hello": "2.10-3"}}
    assert out["check"]["diff"]["before"] == {"hello": "absent"}
    assert apt_log() == ["update", "install"]


def test_already_installed_calls_no_apt(box, apt_log):
    apt_log()
    for args in (
        {"name": ["hello", "bash"]},
        {"name": "hello", "update_cache": True},
        {"pkg": "hello", "state": "latest"},
        {"name": "hello=2.10-3"},
        {"name": "hello=2.10*"},
        {"name": "no-such-package-kiln", "state": "absent"},
    ):
        event = run_step(box, "package", args)
        assert event["status"] == "ok", (args, event)
    assert apt_log() == []


def test_pinned_version_install(box, apt_log):
    out = converge(
        box,
        "package",
        {"name": ["tree=2.1.0-1"], "update_cache": True, "cache_valid_time": 3600},
        "dpkg-query -W -f '${db:Status-Abbrev} ${Version}' tree 2>/dev/null",
    )
    assert out["after"].strip() == "ii  2.1.0-1"
    assert out["first"]["diff"]["after"] == {"tree": "2.1.0-1"}
    # the cache was updated in the first test: cache_valid_time skips the update
    assert apt_log() == ["install"]


def test_remove(box, apt_log):
    out = converge(
        box,
        "package",
        {"name": ["hello", "tree"], "state": "absent"},
        "dpkg-query -W -f '${db:Status-Abbrev}\\n' hello tree 2>/dev/null",
    )
    assert "ii" not in out["after"]
    assert out["first"]["diff"] == {
        "before": {"hello": "2.10-3", "tree": "2.1.0-1"},
        "after": {"hello": "absent", "tree": "absent"},
    }
    assert installed(box, "hello").startswith(("none", "un", "rc")) or "ii" not in installed(box, "hello")


def test_unknown_package_fails(box, apt_log):
    checked = run_step(box, "package", {"name": "no-such-package-kiln"}, check=True)
    assert checked["status"] == "failed" and "no package available" in checked["msg"]
    event = run_step(box, "package", {"name": "no-such-package-kiln"})
    assert event["status"] == "failed"
    assert "no-such-package-kiln" in event["msg"]


def test_check_mode_latest_predicts_candidate(box, apt_log):
    apt_log()
    event = run_step(box, "package", {"name": "hello", "state": "latest"}, check=True)
    assert event["status"] == "changed"
    assert event["diff"] == {"before": {"hello": "absent"}, "after": {"hello": "2.10-3"}}
    assert "ii" not in installed(box, "hello")
    assert apt_log() == []


def test_apts_own_arguments_go_to_apt(box, apt_log):
    """Ansible's package hands every argument to apt on Debian: apt's allow_downgrade and an update alone work."""
    apt_log()
    for args in ({"name": "hello", "allow_downgrade": True}, {"name": "hello", "use": "apt"}):
        event = run_step(box, "package", args)
        assert event["status"] in ("ok", "changed"), event
    update = run_step(box, "package", {"update_cache": True})
    assert update["status"] in ("ok", "changed"), update
    assert apt_log()[-1:] == ["update"]


def test_another_managers_argument_fails_when_the_step_runs(box, apt_log):
    """dnf's enablerepo on an apt box, through package or apt: the step fails in ansible-core's apt's words, check
    mode too; apt is not run."""
    apt_log()
    for module in ("package", "apt"):
        for check in (True, False):
            event = run_step(box, module, {"name": "hello", "enablerepo": "epel"}, check=check)
            assert event["status"] == "failed", event
            refused = "Unsupported parameters for (ansible.legacy.apt) module: enablerepo. "
            assert event["msg"].startswith(refused), event
    assert apt_log() == []


def test_recommends_follow_apts_own_setting_unless_asked(box, apt_log):
    """Ansible's package leaves install_recommends to apt (Debian's: install them; geerlingguy.memcached's
    libsasl2-modules): zip brings unzip, which it recommends; install_recommends false leaves it out."""
    for asked, brought in (({}, True), ({"install_recommends": False}, False)):
        box.sh("apt-get purge -y -q zip unzip >/dev/null 2>&1 || true")
        event = run_step(box, "package", {"name": "zip", **asked})
        assert event["status"] == "changed", event
        assert installed(box, "zip").startswith("ii"), asked
        assert installed(box, "unzip").startswith("ii") == brought, asked
    box.sh("apt-get purge -y -q zip unzip >/dev/null 2>&1 || true")


def test_dnf_fails_on_an_apt_box_whatever_its_arguments(box, apt_log):
    """Ansible's yum/dnf on Debian: its action finds no dnf backend and fails, check mode too; apt is not run
    (kiln's yum used to be package, which installed with apt)."""
    apt_log()
    before = installed(box, "hello")  # the box is shared: an earlier test may have installed it
    for check in (True, False):
        for args in (
            {"name": "hello", "state": "absent" if before.startswith("ii") else "present"},
            {"name": "hello", "exclude": "python-unversioned-command"},
        ):
            event = run_step(box, "dnf", args, check=check)
            assert event["status"] == "failed", event
            assert event["msg"].startswith("Could not detect which major revision of dnf is in use"), event
    assert apt_log() == []
    assert installed(box, "hello") == before


# --- community.general.npm, with Debian's npm, offline: a package of the test's own, packed on the box ---------------
NPMRC = b"offline=true\naudit=false\nfund=false\nupdate-notifier=false\n"
DEMO = "/opt/kiln-npm/kiln-demo-1.0.0.tgz"


@pytest.fixture(scope="module")
def npm_box(engine):
    """A box of its own (npm brings hundreds of packages the other tests' box should not carry)."""
    machine = AgentBox(engine).start()
    try:
        machine.sh("apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends npm >/dev/null")
        machine.put(
            {
                "/etc/npmrc": (NPMRC, 0o644),
                "/opt/kiln-npm/demo/package.json": (b'{"name": "kiln-demo", "version": "1.0.0"}\n', 0o644),
                "/opt/kiln-npm/demo/index.js": (b"module.exports = 1;\n", 0o644),
            }
        )
        machine.sh("cd /opt/kiln-npm && npm pack ./demo >/dev/null")
        yield machine
    finally:
        machine.stop()


def test_npm_installs_a_directorys_dependencies_and_removes_one(npm_box):
    """path alone: npm install when npm list says a dependency is missing, then nothing; absent uninstalls it."""
    package_json = f'{{"name": "app", "version": "1.0.0", "dependencies": {{"kiln-demo": "file:{DEMO}"}}}}\n'
    npm_box.put({"/srv/app/package.json": (package_json.encode(), 0o644)})
    probe = "ls /srv/app/node_modules 2>&1; cat /srv/app/node_modules/kiln-demo/package.json 2>&1"
    events = converge(npm_box, "npm", {"path": "/srv/app"}, probe)
    assert '"version": "1.0.0"' in npm_box.sh(probe), events
    gone = run_step(npm_box, "npm", {"name": "kiln-demo", "path": "/srv/app", "state": "absent"})
    assert gone["status"] == "changed", gone
    assert "kiln-demo" not in npm_box.sh("ls /srv/app/node_modules")
    again = run_step(npm_box, "npm", {"name": "kiln-demo", "path": "/srv/app", "state": "absent"})
    assert again["status"] == "ok", again


def test_npm_global_install_and_removal_as_the_collection(npm_box):
    """global: npm install --global NAME@VERSION (a tarball's name never lists as installed: installed each time, as
    the collection has it); absent by name uninstalls once; a path or global is required when the step runs."""
    for _ in range(2):
        event = run_step(npm_box, "npm", {"name": DEMO, "global": True})
        assert event["status"] == "changed", event
    assert "kiln-demo@1.0.0" in npm_box.sh("npm ls --global --depth=0")
    checked = run_step(npm_box, "npm", {"name": "kiln-demo", "global": True, "state": "absent"}, check=True)
    assert checked["status"] == "changed" and "kiln-demo" in npm_box.sh("npm ls --global --depth=0"), checked
    for status in ("changed", "ok"):
        event = run_step(npm_box, "npm", {"name": "kiln-demo", "global": True, "state": "absent"})
        assert event["status"] == status, event
    assert "kiln-demo" not in npm_box.sh("npm ls --global --depth=0")
    nowhere = run_step(npm_box, "npm", {"name": "kiln-demo"})
    assert nowhere["status"] == "failed" and nowhere["msg"] == "path must be specified when not using global", nowhere
