"""user, group and service in a real container (systemd running), applied by the real agent."""

from __future__ import annotations

import pytest

from tests.machines import converge, run_step

pytestmark = pytest.mark.slow


def account(name: str) -> str:
    return (
        f"getent passwd {name}; echo groups: $(id -nG {name} 2>/dev/null); getent shadow {name} | cut -d: -f2 | cut -c1"
    )


# --- group -------------------------------------------------------------------------------
def test_group_create_change_remove(box):
    created = converge(box, "group", {"name": "kt-grp1", "gid": 3201}, "getent group kt-grp1")
    assert created["after"].startswith("kt-grp1:x:3201:")
    assert created["first"]["diff"] == {"before": "absent", "after": {"gid": 3201}}
    changed = converge(box, "group", {"name": "kt-grp1", "gid": 3202}, "getent group kt-grp1")
    assert changed["first"]["diff"] == {"before": {"gid": 3201}, "after": {"gid": 3202}}
    removed = converge(box, "group", {"name": "kt-grp1", "state": "absent"}, "getent group kt-grp1")
    assert removed["after"] == ""


def test_group_system_and_noops(box):
    out = converge(box, "group", {"name": "kt-sys", "system": True}, "getent group kt-sys | cut -d: -f3")
    assert int(out["after"]) < 1000
    assert run_step(box, "group", {"name": "kt-sys"})["status"] == "ok"
    assert run_step(box, "group", {"name": "kt-never", "state": "absent"})["status"] == "ok"


# --- user --------------------------------------------------------------------------------
def test_user_create(box):
    box.sh("groupadd -f kt-dev")
    args = {"name": "kt-alice", "uid": 3101, "shell": "/bin/bash", "groups": ["kt-dev"], "comment": "Alice"}
    out = converge(box, "user", args, account("kt-alice") + "; test -d /home/kt-alice && echo home")
    assert out["after"].splitlines()[0] == "kt-alice:x:3101:3101:Alice:/home/kt-alice:/bin/bash"
    assert "groups: kt-alice kt-dev" in out["after"] and out["after"].endswith("home\n")
    assert out["first"]["diff"]["before"] == "absent"
    assert out["first"]["diff"]["after"]["groups"] == ["kt-dev"]


def test_user_modify_append_groups_and_shell(box):
    box.sh("groupadd -f kt-a; groupadd -f kt-b; id kt-bob >/dev/null 2>&1 || useradd -M -s /bin/sh -G kt-a kt-bob")
    out = converge(
        box, "user", {"name": "kt-bob", "shell": "/bin/bash", "groups": ["kt-b"], "append": True}, account("kt-bob")
    )
    assert "groups: kt-bob kt-a kt-b" in out["after"] and ":/bin/bash" in out["after"]
    assert out["first"]["diff"] == {
        "before": {"shell": "/bin/sh", "groups": ["kt-a"]},
        "after": {"shell": "/bin/bash", "groups": ["kt-a", "kt-b"]},
    }
    # append false: groups is the whole list
    out = converge(box, "user", {"name": "kt-bob", "groups": ["kt-b"]}, account("kt-bob"))
    assert "groups: kt-bob kt-b\n" in out["after"]


def test_user_password_lock(box):
    box.sh("id kt-carol >/dev/null 2>&1 || (useradd -M kt-carol && echo 'kt-carol:secret' | chpasswd)")
    out = converge(box, "user", {"name": "kt-carol", "password_lock": True}, account("kt-carol"))
    assert out["after"].endswith("!\n")
    assert out["first"]["diff"] == {"before": {"password_lock": False}, "after": {"password_lock": True}}


def test_user_remove_with_home(box):
    box.sh("id kt-dave >/dev/null 2>&1 || useradd -m kt-dave")
    out = converge(
        box,
        "user",
        {"name": "kt-dave", "state": "absent", "remove": True},
        "getent passwd kt-dave; test -d /home/kt-dave && echo home || true",
    )
    assert out["after"] == ""
    assert out["first"]["diff"]["after"] == "absent"


HASH = "$6$ktsalt$" + "k" * 86


def test_user_password_and_ageing(box):
    """The hash and chage's fields as given (compared with ansible-playbook in kiln_auth); results never show it."""
    box.sh("id kt-frank >/dev/null 2>&1 || useradd -M kt-frank")
    args = {"name": "kt-frank", "password": HASH, "password_expire_max": 90, "password_expire_warn": 5}
    out = converge(box, "user", args, "getent shadow kt-frank | cut -d: -f2,4-6")
    assert out["after"].strip() == f"{HASH}:0:90:5"
    assert all(HASH not in repr(out[k]) for k in ("check", "first", "second")), out["first"]
    kept = run_step(box, "user", {"name": "kt-frank", "password": "$6$other$x", "update_password": "on_create"})
    assert kept["status"] == "ok" and box.sh("getent shadow kt-frank | cut -d: -f2").strip() == HASH


def test_user_expires_on_a_day_then_never(box):
    """expires: seconds since the epoch, kept as the day (shadow's field 8); negative: the field emptied."""
    box.sh("id kt-ivan >/dev/null 2>&1 || useradd -M kt-ivan")
    out = converge(box, "user", {"name": "kt-ivan", "expires": 1893470400.5}, "getent shadow kt-ivan | cut -d: -f8")
    assert out["after"].strip() == str(1893456000 // 86400)
    assert run_step(box, "user", {"name": "kt-ivan", "expires": 1893456000})["status"] == "ok"
    never = converge(box, "user", {"name": "kt-ivan", "expires": -1}, "getent shadow kt-ivan | cut -d: -f8")
    assert never["after"].strip() == ""


def test_user_failure_hides_the_hash(box):
    """useradd refuses a taken uid; its message names the command, never the hash."""
    event = run_step(box, "user", {"name": "kt-grace", "uid": 0, "password": HASH})
    assert event["status"] == "failed" and "useradd" in event["msg"], event
    assert HASH not in repr(event), event


def test_user_missing_home_is_made_as_ansible_does(box):
    """An account without its home gets one (from /etc/skel, its owner's) when create_home holds."""
    box.sh("id kt-heidi >/dev/null 2>&1 || useradd -M -s /bin/bash kt-heidi")
    out = converge(box, "user", {"name": "kt-heidi"}, "stat -c '%U %a' /home/kt-heidi /home/kt-heidi/.bashrc || true")
    assert out["after"].splitlines() == ["kt-heidi 755", "kt-heidi 644"], out["after"]
    assert run_step(box, "user", {"name": "kt-heidi", "create_home": False})["status"] == "ok"


@pytest.mark.parametrize(
    "args, status, msg",
    [
        ({"name": "root", "uid": 0, "home": "/root"}, "ok", "as wanted"),
        ({"name": "kt-ghost", "state": "absent"}, "ok", "already absent"),
        ({"name": "kt-eve", "groups": ["kt-no-such-group"]}, "failed", "kt-no-such-group"),
    ],
    ids=["as-wanted", "absent-already", "missing-group"],
)
def test_user_noops_and_failures(box, args, status, msg):
    event = run_step(box, "user", args)
    assert event["status"] == status, event
    assert msg in event["msg"]
    assert box.sh("getent passwd kt-eve || true").strip() == ""


# --- service -----------------------------------------------------------------------------
UNIT = b"""[Unit]
Description=kiln test service

[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/true

[Install]
WantedBy=multi-user.target
"""


def service_state(name: str) -> str:
    return f"systemctl is-active {name}; systemctl is-enabled {name}"


def test_service_start_enable_then_stop_disable(box):
    box.put({"/etc/systemd/system/kt-svc1.service": (UNIT, 0o644)})
    args = {"name": "kt-svc1", "state": "started", "enabled": True, "daemon_reload": True}
    out = converge(box, "service", args, service_state("kt-svc1"))
    assert out["after"] == "active\nenabled\n"
    assert out["first"]["diff"] == {
        "before": {"state": "inactive", "enabled": "disabled"},
        "after": {"state": "active", "enabled": "enabled"},
    }
    out = converge(box, "service", {"name": "kt-svc1", "state": "stopped", "enabled": False}, service_state("kt-svc1"))
    assert out["after"] == "inactive\ndisabled\n"


def test_service_restarted_and_reloaded_always_change(box):
    box.put({"/etc/systemd/system/kt-svc2.service": (UNIT, 0o644)})
    box.sh("systemctl daemon-reload && systemctl start kt-svc2")
    pid = box.sh("systemctl show -p MainPID --value kt-svc2").strip()
    for _ in range(2):
        assert run_step(box, "service", {"name": "kt-svc2", "state": "restarted"})["status"] == "changed"
    assert box.sh("systemctl show -p MainPID --value kt-svc2").strip() != pid
    pid = box.sh("systemctl show -p MainPID --value kt-svc2").strip()
    checked = run_step(box, "service", {"name": "kt-svc2", "state": "reloaded"}, check=True)
    assert checked["status"] == "changed"
    reloaded = run_step(box, "service", {"name": "kt-svc2", "state": "reloaded"})
    assert reloaded["status"] == "changed" and "reloaded" in reloaded["msg"]
    assert box.sh("systemctl show -p MainPID --value kt-svc2").strip() == pid  # reload, not restart
    # check mode restarts nothing
    run_step(box, "service", {"name": "kt-svc2", "state": "restarted"}, check=True)
    assert box.sh("systemctl show -p MainPID --value kt-svc2").strip() == pid


def test_service_noops_and_failures(box):
    assert run_step(box, "service", {"name": "ssh", "state": "started", "enabled": True})["status"] == "ok"
    missing = run_step(box, "service", {"name": "kt-no-such", "state": "started"})
    assert missing["status"] == "failed" and "not found" in missing["msg"]
    predicted = run_step(box, "service", {"name": "kt-no-such", "state": "started"}, check=True)
    assert predicted["status"] == "changed" and predicted.get("predicted") is False
