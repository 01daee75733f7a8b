"""Benchmark: validating a 500-step role, and a no-op converge of `web` on its kept dev instance.

    .venv/bin/python benchmarks/stepfiles.py [--steps 500] [--repeat 5] [--skip-converge]

1. Generates a role of N steps mixing the modules and control keywords developers use
   (copy, file, template, line_in_file, command; when, loop, register, notify, tags,
   blocks) and times ``compile_role`` (load + validate + compile, what ``invoke validate``
   and every bake run first): best and median of ``--repeat`` runs.
2. Converges `web` twice on a kept local instance (``controller.devloop.converge``, in a
   temporary builds directory; the instance is destroyed afterwards) and prints both
   wall times; the second is the no-op re-run a developer waits for.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kiln.controller import log as kiln_log  # noqa: E402
from kiln.controller.config import load_config  # noqa: E402
from kiln.controller.context import BakeOptions  # noqa: E402
from kiln.controller.stepfiles.compile import compile_role  # noqa: E402


def generated_role(root: Path, steps: int) -> Path:
    playbooks = root / "playbooks"
    role = playbooks / "roles" / "bench"
    (role / "templates").mkdir(parents=True)
    (playbooks / "kiln.yaml").write_text("retention:\n  keep: 2\n")
    (role / "role.yml").write_text(
        "description: generated\nbase:\n  local: localhost/kiln-base/debian:bookworm\n"
        "defaults:\n  app_dir: /srv/bench\n  workers: 4\n  users: [a, b, c]\n"
    )
    (role / "templates" / "app.conf.j2").write_text("workers={{ workers }}\nhost={{ facts.hostname }}\n")
    (role / "handlers.yml").write_text("- name: reload app\n  command: {cmd: /bin/true}\n")
    kinds = [
        '- name: dir {i}\n  file: {{path: "{{{{ app_dir }}}}/d{i}", state: directory, mode: "0755"}}\n  tags: [dirs]\n',
        '- name: file {i}\n  copy: {{content: "value {i}\\n", dest: "{{{{ app_dir }}}}/f{i}", mode: "0644"}}\n'
        "  notify: reload app\n",
        '- name: template {i}\n  template: {{src: app.conf.j2, dest: "{{{{ app_dir }}}}/t{i}.conf", mode: "0640"}}\n'
        '  when: facts.os_family == "debian"\n',
        '- name: line {i}\n  line_in_file: {{path: "{{{{ app_dir }}}}/lines", line: "k{i}=v", create: true}}\n',
        '- name: probe {i}\n  command: {{cmd: "test -d {{{{ app_dir }}}}"}}\n  register: probe{i}\n'
        "  changed_when: false\n",
        '- name: per user {i}\n  file: {{path: "{{{{ app_dir }}}}/u{i}-{{{{ user }}}}", state: directory}}\n'
        '  loop: "{{{{ users }}}}"\n  loop_var: user\n',
        '- name: guarded {i}\n  block:\n    - name: inner {i}\n      file: {{path: "{{{{ app_dir }}}}/b{i}", '
        "state: directory}}\n  rescue:\n    - name: rescue {i}\n      command: {{cmd: /bin/true}}\n",
    ]
    lines = ["- name: base dir\n  file: {path: /srv/bench, state: directory}\n"]
    lines += [kinds[i % len(kinds)].format(i=i) for i in range(1, steps)]
    (role / "steps.yml").write_text("".join(lines))
    return playbooks


def bench_validate(steps: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        playbooks = generated_role(Path(tmp), steps)
        config = load_config(playbooks / "kiln.yaml")
        times = []
        compiled = None
        for _ in range(repeat):
            t0 = time.perf_counter()
            compiled = compile_role(playbooks, "bench", "local", config)
            times.append(time.perf_counter() - t0)
        lines = (playbooks / "roles/bench/steps.yml").read_text().count("\n")
        print(f"\n== validate a generated role: {len(compiled.steps)} steps ({lines} lines of YAML) ==")
        print(f"  {f'compile_role, best of {repeat}':<32} {min(times):8.3f} s")
        print(f"  {'compile_role, median':<32} {statistics.median(times):8.3f} s")
        print(f"  per step (best)                  {min(times) / len(compiled.steps) * 1000:8.3f} ms")


def bench_converge() -> None:
    from kiln.controller.devloop import converge, destroy

    with tempfile.TemporaryDirectory() as builds:
        options = BakeOptions(builds_dir=Path(builds), playbooks_dir=REPO / "playbooks")
        try:
            t0 = time.monotonic()
            first = converge("web", options)
            t1 = time.monotonic()
            second = converge("web", options)
            t2 = time.monotonic()
        finally:
            destroy("web", Path(builds))
    print("\n== converge web on its kept dev instance ==")
    if first or second:
        print(f"  converge failed (exit {first or second}); run `invoke converge --role web` to see why")
        return
    print(f"  first converge (launch + apply)  {t1 - t0:8.3f} s")
    print(f"  no-op re-run                     {t2 - t1:8.3f} s  (compile, connect, push, apply; aim: < 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-converge", action="store_true")
    args = parser.parse_args()
    kiln_log.configure(json_output=False, level=30)  # warnings only: the figures are the output
    bench_validate(args.steps, args.repeat)
    if not args.skip_converge:
        bench_converge()


if __name__ == "__main__":
    main()
