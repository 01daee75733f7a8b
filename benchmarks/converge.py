"""Benchmark: the developer loop against the floor (issue 10's table, with kiln's own roles).

    .venv/bin/python benchmarks/converge.py [--reps 5] [--only web,steps10,steps100] [--keep]

The floor is one ``ssh ... bash -s`` session running an idempotent shell script over the
same resources as the role (the same files with the same content and modes, the same
directories, the same package and service states). kiln is the real command line,
``invoke converge --role R``, on the role's kept dev instance; the floor runs over the
same instance. Both are interleaved within each repetition and the medians are
printed, with kiln's ratio to the floor: compare ratios from one run, the machine is
shared and noisy.

Rows:
- ``N steps, first``: the role's files removed on the box (outside the timing), then applied;
- ``N steps, no-op`` and ``web, no-op``: a re-run that changes nothing;
- ``validate web`` and ``--list``: the start-up cost of the command line alone.

Byte-compiled modules are used as a developer's checkout has them (PYTHONDONTWRITEBYTECODE is
dropped for the timed commands). The instances are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kiln.controller.devloop import login_argv, state_path  # noqa: E402

BASE_IMAGE = "localhost/kiln-base/debian:bookworm"


# --- roles --------------------------------------------------------------------------------
def generated_steps(count: int) -> tuple[str, str]:
    """``count`` steps over /srv/bench (dirs and files, alternating) and the floor's script for them."""
    steps = ['- name: base dir\n  file: {path: /srv/bench, state: directory, mode: "0755"}\n']
    script = ["d /srv/bench 755"]
    for i in range(1, count):
        if i % 2:
            steps.append(f'- name: dir {i}\n  file: {{path: /srv/bench/d{i}, state: directory, mode: "0755"}}\n')
            script.append(f"d /srv/bench/d{i} 755")
        else:
            steps.append(
                f'- name: file {i}\n  copy: {{content: "value {i}\\n", dest: /srv/bench/f{i}, mode: "0644"}}\n'
            )
            script.append(f"f /srv/bench/f{i} 644 'value {i}'")
    return "".join(steps), FLOOR_PRELUDE + "\n".join(script) + "\n"


#: The floor's idempotent resources: look, then change only what differs (as any tool must).
FLOOR_PRELUDE = """\
set -e
d() { [ -d "$1" ] || mkdir -p "$1"; [ "$(stat -c %a "$1")" = "$2" ] || chmod "$2" "$1"; }
f() { printf '%s\\n' "$3" | cmp -s - "$1" || printf '%s\\n' "$3" > "$1"; [ "$(stat -c %a "$1")" = "$2" ] || chmod "$2" "$1"; }
"""


def web_floor(site_conf: str, index_html: str) -> str:
    """The base and web roles as one shell script (the rendered templates read from the box)."""
    return f"""\
set -e
[ "$(readlink /etc/localtime)" = /usr/share/zoneinfo/Etc/UTC ] || ln -sfn /usr/share/zoneinfo/Etc/UTC /etc/localtime
echo Etc/UTC | cmp -s - /etc/timezone || echo Etc/UTC > /etc/timezone
[ -d /etc/ssh/sshd_config.d ] || mkdir -p -m 0755 /etc/ssh/sshd_config.d
reload_ssh=
cat > /tmp/floor-sshd <<'EOF'
# managed by kiln (role base)
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
EOF
cmp -s /tmp/floor-sshd /etc/ssh/sshd_config.d/50-kiln.conf || {{ cp /tmp/floor-sshd /etc/ssh/sshd_config.d/50-kiln.conf; reload_ssh=1; }}
dpkg-query -W -f='${{Status}}' nginx-light 2>/dev/null | grep -q 'install ok installed' || \\
  {{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light; }}
reload_nginx=
cat > /tmp/floor-site <<'EOF'
{site_conf}EOF
cmp -s /tmp/floor-site /etc/nginx/sites-available/default || {{ cp /tmp/floor-site /etc/nginx/sites-available/default; reload_nginx=1; }}
cat > /tmp/floor-index <<'EOF'
{index_html}EOF
cmp -s /tmp/floor-index /var/www/html/index.html || cp /tmp/floor-index /var/www/html/index.html
[ "$(stat -c %a /var/www/html/index.html)" = 644 ] || chmod 644 /var/www/html/index.html
systemctl is-enabled -q nginx || systemctl enable -q nginx
systemctl is-active -q nginx || systemctl start nginx
[ -z "$reload_ssh" ] || systemctl reload ssh
[ -z "$reload_nginx" ] || systemctl reload nginx
rm -f /tmp/floor-sshd /tmp/floor-site /tmp/floor-index
"""


def make_workdir(root: Path, counts: list[int]) -> None:
    playbooks = root / "playbooks"
    (playbooks / "roles").mkdir(parents=True)
    shutil.copy(REPO / "playbooks" / "kiln.yaml", playbooks / "kiln.yaml")
    for role in ("base", "web"):
        shutil.copytree(REPO / "playbooks" / "roles" / role, playbooks / "roles" / role)
    for count in counts:
        role = playbooks / "roles" / f"steps{count}"
        role.mkdir()
        (role / "role.yml").write_text(f"description: {count} generated steps\nbase:\n  local: {BASE_IMAGE}\n")
        (role / "steps.yml").write_text(generated_steps(count)[0])


# --- running ----------------------------------------------------------------------------------
def checkout_env(repo: Path, scratch: Path) -> dict[str, str]:
    """The environment that makes ``invoke -r repo`` import *that* checkout's ``kiln`` package.

    The venv's editable install maps ``kiln.controller`` and ``kiln.agent`` to this checkout; for
    another one, a ``kiln`` package of links to its folders goes first on PYTHONPATH (the editable
    finder comes after the path's)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if repo.resolve() == installed_checkout():
        return env
    package = scratch / "kiln-checkout" / "kiln"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").touch()
    for folder in ("controller", "agent"):
        link = package / folder
        if not link.is_symlink():
            link.symlink_to(repo.resolve() / folder)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package.parent), env.get("PYTHONPATH", "")]))
    return env


def installed_checkout() -> Path:
    """The checkout the venv's ``kiln`` package is (the editable install's)."""
    spec = importlib.util.find_spec("kiln.controller")
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


class Bench:
    def __init__(self, root: Path, repo: Path) -> None:
        self.root = root
        self.repo = repo
        self.env = checkout_env(repo, root)
        self.env.update(
            KILN_STATE_DIR=str(root / "state"), KILN_IMAGE_PREFIX="localhost/kiln-bench", KILN_JSON="", CI=""
        )

    def invoke(self, *args: str) -> float:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", "-r", str(self.repo), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        took = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"invoke {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return took

    def as_root(self, role: str) -> list[str]:
        """The floor, like kiln, works as root: through ``sudo -n`` when the box's login is a build user."""
        user = json.loads(state_path(self.root / "builds", role).read_text())["instance"]["ssh_user"]
        return [] if user == "root" else ["sudo", "-n"]

    def ssh(self, role: str, script: str) -> float:
        argv = [*login_argv(role, self.root / "builds"), *self.as_root(role)]
        started = time.monotonic()
        proc = subprocess.run([*argv, "bash", "-s"], input=script, capture_output=True, text=True, timeout=900)
        took = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"floor script for {role} failed ({proc.returncode}): {proc.stderr}")
        return took

    def box(self, role: str, command: str) -> str:
        sudo = self.as_root(role)
        remote = [*sudo, "sh", "-c", shlex.quote(command)] if sudo else [command]  # ssh joins them with spaces
        argv = [*login_argv(role, self.root / "builds"), *remote]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


def interleaved(reps: int, contenders: dict[str, Callable[[], float]], before: Callable[[], None] | None = None):
    """Each contender once per repetition, in turn (``before`` untimed, ahead of each): the medians."""
    seen: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, run in contenders.items():
            if before:
                before()
            seen[name].append(run())
    return {name: statistics.median(values) for name, values in seen.items()}


def bench_steps(bench: Bench, count: int, reps: int) -> list[str]:
    role = f"steps{count}"
    bench.invoke("converge", "--role", role)  # the instance, and a first apply
    script = generated_steps(count)[1]
    contenders = {"floor": lambda: bench.ssh(role, script), "kiln": lambda: bench.invoke("converge", "--role", role)}
    first = interleaved(reps, contenders, before=lambda: bench.box(role, "rm -rf /srv/bench"))
    noop = interleaved(reps, contenders)
    return [
        row(f"{count} steps, first apply", first["floor"], first["kiln"]),
        row(f"{count} steps, no-op re-run", noop["floor"], noop["kiln"]),
    ]


def bench_watch(bench: Bench, role: str, reps: int) -> tuple[float, float]:
    """(median seconds of a no-op re-apply, of a one-template change) in `converge --watch`, as it logs them."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(bench.repo), "converge", "--watch", "--role", role],
        cwd=bench.root,
        env={**bench.env, "KILN_JSON": "1"},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )

    def next_event(name: str) -> dict:
        for line in proc.stderr:
            if line.startswith("{") and json.loads(line).get("event") == name:
                return json.loads(line)
        raise SystemExit(f"watch ended before '{name}'")

    template = bench.root / "playbooks/roles/web/templates/index.html.j2"
    original = template.read_text()
    noop, one = [], []
    try:
        next_event("watching")
        for i in range(reps):
            os.utime(template)
            noop.append(next_event("re-applied")["seconds"])
            template.write_text(original + f"<!-- {i} -->\n")
            one.append(next_event("re-applied")["seconds"])
    finally:
        template.write_text(original)
        proc.send_signal(2)
        proc.wait(timeout=60)
    return statistics.median(noop), statistics.median(one)


def row(label: str, floor: float, kiln: float) -> str:
    return f"| {label} | {floor:.3f} s | {kiln:.3f} s | {kiln / floor:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="web,steps10,steps100")
    parser.add_argument("--keep", action="store_true", help="keep the dev instances and the work directory")
    parser.add_argument("--watch", action="store_true", help="also time re-applies in `converge --watch` (web)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the kiln checkout to time (e.g. an older one)")
    args = parser.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    counts = [int(w.removeprefix("steps")) for w in wanted if w.startswith("steps")]
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    make_workdir(root, counts)
    bench = Bench(root, args.repo)
    rows = ["| workload | floor | kiln | kiln / floor |", "|---|---|---|---|"]
    try:
        for count in counts:
            rows += bench_steps(bench, count, args.reps)
            print("\n".join(rows[-2:]), flush=True)
        if "web" in wanted:
            bench.invoke("converge", "--role", "web")
            script = web_floor(
                bench.box("web", "cat /etc/nginx/sites-available/default"),
                bench.box("web", "cat /var/www/html/index.html"),
            )
            noop = interleaved(
                args.reps,
                {"floor": lambda: bench.ssh("web", script), "kiln": lambda: bench.invoke("converge", "--role", "web")},
            )
            rows.append(row("web role, no-op re-run", noop["floor"], noop["kiln"]))
            print(rows[-1], flush=True)
            if args.watch:
                watch_noop, watch_one = bench_watch(bench, "web", args.reps)
                rows.append(
                    f"| web role, --watch no-op re-apply | {noop['floor']:.3f} s | {watch_noop:.3f} s | "
                    f"{watch_noop / noop['floor']:.2f}x |"
                )
                rows.append(f"| web role, --watch one template changed | - | {watch_one:.3f} s | - |")
        startup = interleaved(
            args.reps,
            {
                "validate": lambda: bench.invoke("validate", "--role", "web"),
                "list": lambda: bench.invoke("--list"),
            },
        )
        print("\n".join(rows))
        print(f"\ninvoke validate --role web: {startup['validate']:.3f} s (median of {args.reps})")
        print(f"invoke --list:              {startup['list']:.3f} s (median of {args.reps})")
    finally:
        if not args.keep:
            subprocess.run(
                [sys.executable, "-m", "invoke", "-r", str(args.repo), "destroy"],
                cwd=root,
                env=bench.env,
                capture_output=True,
                timeout=300,
            )
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept: {root} (remove with `cd {shlex.quote(str(root))} && invoke -r {REPO} destroy`)")


if __name__ == "__main__":
    main()
