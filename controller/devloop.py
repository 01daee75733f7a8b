"""The developer loop (Molecule's, faster): converge, verify, login, destroy on a kept instance.

It works through the provider interface (controller/providers/base.py's ``Machines``): with
``--provider local`` (the default) the kept instance is an ordinary build machine that is not
removed at the end; its keys and address live in ``builds/dev/<role>.json``, so each
``converge`` reconnects (host key still pinned) and applies only what differs. With
``--provider ssh`` the machine is an existing host kiln.yaml names: its "launch" only gives
its address, key and pinned host key, and it is never removed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from kiln.controller.context import BakeContext, BakeOptions
from kiln.controller.model import Diagnostic, InvalidInput, Machine
from kiln.controller.pipeline import run_stages
from kiln.controller.ssh import Keepalive, KeyPair, SSHError

log = structlog.get_logger("kiln.dev")

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
DEV_VERSION = "dev"
KEPT_MACHINE_PREFIXES = ("kiln-build-", "kiln-sandbox-")
#: Seconds a kept instance's SSH may take to answer before kiln asks the engine about it.
QUICK_CONNECT = 3.0
#: Seconds of idleness after which the warm agent a converge leaves on its kept instance exits
#: (KILN_WARM_AGENT_SECONDS; 0: leave none).
WARM_AGENT_SECONDS = 900.0


def state_path(builds: Path, role: str) -> Path:
    return builds / "dev" / f"{role}.json"


def read_state(builds: Path, role: str) -> dict[str, Any] | None:
    path = state_path(builds, role)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_state(builds: Path, role: str, saved: dict[str, Any]) -> None:
    path = state_path(builds, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(saved))
    tmp.chmod(0o600)
    tmp.replace(path)


class AttachDevInstance:
    """Reconnect to the role's kept instance (host key still pinned), or launch one and keep it (no undo).

    The state file knows the instance, so the engine is asked nothing while its SSH
    answers; only when it does not is the engine asked whether it is gone (launch
    another) or stopped (start it again).
    """

    name = "attach dev instance"

    def __init__(self, early: EarlyConnect | None = None) -> None:
        self.early = early

    def run(self, ctx: BakeContext) -> None:
        saved = read_state(ctx.options.builds_dir, ctx.role)
        if saved is not None and saved.get("provider", "local") != ctx.provider.name:
            saved = None  # another provider's machine: this one launches (or reaches) its own
        if saved is not None and saved.get("client_key") and self._reattach(ctx, saved):
            return
        self._launch(ctx, saved)

    def _reattach(self, ctx: BakeContext, saved: dict[str, Any]) -> bool:

        ctx.instance = machine_of(saved["instance"])
        ctx.client_key = KeyPair(saved["client_key"].encode(), saved["client_pub"])
        ctx.host_key = KeyPair(b"", saved["host_pub"])
        # a state file written before machines carried their host key names it beside the machine
        ctx.instance.host_public_key = ctx.instance.host_public_key or saved["host_pub"]
        ctx.build_id = saved.get("build_id") or ctx.build_id
        try:
            if self.early is None or not self.early.adopt(ctx):
                connect(ctx, QUICK_CONNECT)
        except SSHError as exc:
            status = ctx.provider.machine_status(ctx.instance)
            if not status:
                log.info("dev instance gone; launching another", instance=ctx.instance.id)
                ctx.session.close()
                state_path(ctx.options.builds_dir, ctx.role).unlink(missing_ok=True)
                ctx.instance = ctx.session = None
                return False
            if status != "running":
                log.info("starting the stopped dev instance", instance=ctx.instance.id, status=status)
                ctx.provider.start(ctx.instance)
            elif "host key" in str(exc):
                raise
            ctx.session.close()
            connect(ctx, ctx.options.ssh_timeout)
        known_agent(ctx, saved)
        log.info("reusing dev instance", instance=ctx.instance.id)
        return True

    def _launch(self, ctx: BakeContext, saved: dict[str, Any] | None) -> None:
        from kiln.controller.stages.resolve_base import ResolveBase

        ResolveBase().run(ctx)
        ctx.client_key = KeyPair.generate(comment=f"kiln-build-{ctx.build_id}")
        ctx.host_key = KeyPair.generate(comment=f"kiln-host-{ctx.build_id}")
        ctx.instance = ctx.provider.launch(ctx.machine_spec())  # the machine, or nothing left of it
        ctx.client_key = ctx.instance.login_key or ctx.client_key
        state = {"provider": ctx.provider.name, "instance": machine_record(ctx.instance), "build_id": ctx.build_id}
        if ctx.instance.owned:  # kiln's own machine: its keys let the next converge reattach
            state |= {
                "client_key": ctx.client_key.private_openssh.decode(),
                "client_pub": ctx.client_key.public_openssh,
                "host_pub": ctx.host_key.public_openssh,
            }
        else:  # an existing host: reached afresh every time, with the user's key (never copied here)
            state |= {"agent": (saved or {}).get("agent")} if saved and saved["instance"] == state["instance"] else {}
        write_state(ctx.options.builds_dir, ctx.role, state)
        log.info("dev instance launched" if ctx.instance.owned else "existing host", instance=ctx.instance.id)
        connect(ctx, ctx.options.ssh_timeout)
        known_agent(ctx, state)

    def undo(self, ctx: BakeContext) -> None:
        """Kept on purpose: `invoke destroy` removes it. The connection closes."""
        if ctx.session is not None:
            ctx.session.close()


class EarlyConnect:
    """The kept instance's SSH connection, opened in a thread while the command compiles the role.

    sshd readies a new connection for its first channel after the handshake (~50 ms here), so
    the thread opens (and closes) one channel too: the agent's run then starts at once. Only
    kiln's own instance, with the host key its state file pins; the attach stage adopts the
    connection when the provider pins that same key, and connects itself otherwise."""

    def __init__(self, builds: Path, role: str, provider: str) -> None:
        saved = read_state(builds, role)
        usable = bool(saved and saved.get("client_key") and saved.get("provider", "local") == provider)
        self.saved = saved if usable and saved["instance"].get("owned", True) else None
        self.session: Any = None
        self.error: SSHError | None = None
        self.thread = threading.Thread(target=self._connect, name="kiln-early-connect", daemon=True)
        if self.saved is not None:
            self.thread.start()

    def _connect(self) -> None:
        from kiln.controller.ssh import HostKeyExpectation, Session

        inst, saved = self.saved["instance"], self.saved
        try:
            key = KeyPair(saved["client_key"].encode(), saved["client_pub"])
            pinned = HostKeyExpectation(fingerprints={self.fingerprint()})
            self.session = Session(inst["ssh_host"], inst["ssh_port"], inst["ssh_user"], key, pinned)
            self.session.wait_until_ready(QUICK_CONNECT)
            self.session.conn.client.get_transport().open_session(timeout=QUICK_CONNECT).close()
        except SSHError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - the attach stage connects itself, and says what is wrong
            self.error = SSHError(str(exc))

    def fingerprint(self) -> str:
        host_pub = self.saved["instance"].get("host_public_key") or self.saved["host_pub"]
        return KeyPair(b"", host_pub).fingerprint

    def adopt(self, ctx: BakeContext) -> bool:
        """Give ``ctx`` the early connection (True); raise the early attempt's SSHError; False: connect afresh."""
        if self.saved is None:
            return False
        self.thread.join(QUICK_CONNECT + 5)
        expected = ctx.provider.host_key_expectation(ctx.instance)
        if self.thread.is_alive() or ctx.instance.id != self.saved["instance"]["id"]:
            return False
        if self.session is None or self.fingerprint() not in expected.fingerprints:
            self.discard()
            return False
        ctx.host_key_expectation, ctx.session, self.session = expected, self.session, None
        if self.error is not None:
            raise self.error
        ctx.session.use_keepalive(Keepalive(ctx.options.ssh_keepalive, ctx.options.ssh_keepalive_misses))
        log.debug("connected", address=ctx.session.address, early=True)
        return True

    def discard(self) -> None:
        """Close the connection if nobody adopted it (a bounded close, in the thread's wake)."""
        if self.saved is not None and not self.thread.is_alive() and self.session is not None:
            self.session.close()
            self.session = None


def machine_record(machine: Machine) -> dict[str, Any]:
    """The machine's plain fields for the state file (never a key)."""
    return {k: v for k, v in asdict(machine).items() if k in MACHINE_FIELDS and k != "login_key"}


def machine_of(record: dict[str, Any]) -> Machine:
    return Machine(**{k: v for k, v in record.items() if k in MACHINE_FIELDS})


MACHINE_FIELDS = {f.name for f in dataclasses.fields(Machine)}


def known_agent(ctx: BakeContext, saved: dict[str, Any]) -> None:
    """The agent the state file says the box holds: sent before, checked by hash on the box, re-sent if it differs.

    On kiln's own instance (never on an existing host: nothing of kiln's stays running there) an apply leaves
    a warm agent for the next converge, and the one the state file names is tried first when it runs this
    very agent (controller/remote.py ``warm_run``; agent/warm.py)."""
    from kiln.controller.remote import box_agent

    box = box_agent(ctx)
    agent = saved.get("agent") or {}
    if agent.get("sha256") == box.sha256:
        box.sent, box.compiled = True, agent.get("compiled", "")
    if ctx.instance.owned:
        box.linger = warm_agent_seconds()
    warm = saved.get("warm") or {}
    if box.linger > 0 and box.sent and warm.get("agent") == box.sha256:
        box.warm = {"port": warm.get("port"), "token": warm.get("token")}


def warm_agent_seconds() -> float:
    try:
        return max(float(os.environ.get("KILN_WARM_AGENT_SECONDS") or WARM_AGENT_SECONDS), 0.0)
    except ValueError:
        return WARM_AGENT_SECONDS


def connect(ctx: BakeContext, timeout: float) -> None:
    from kiln.controller.ssh import Session

    inst = ctx.instance
    ctx.host_key_expectation = ctx.provider.host_key_expectation(ctx.instance)
    keepalive = Keepalive(ctx.options.ssh_keepalive, ctx.options.ssh_keepalive_misses)
    ctx.session = Session(
        inst.ssh_host, inst.ssh_port, inst.ssh_user, ctx.client_key, ctx.host_key_expectation, keepalive=keepalive
    )
    waited = ctx.session.wait_until_ready(timeout)
    log.debug("connected", address=ctx.session.address, waited=round(waited, 2))


def remember_agent(ctx: BakeContext) -> None:
    """Note in the state file which agent the box holds (it is still checked by hash on the box every run)."""
    from kiln.controller.remote import box_agent

    if ctx.session is None:
        return
    box = box_agent(ctx)
    saved = read_state(ctx.options.builds_dir, ctx.role)
    if saved is None or saved["instance"]["id"] != getattr(ctx.instance, "id", None) or not box.sent:
        return
    agent = {"sha256": box.sha256, "compiled": box.compiled}
    state = {**saved, "agent": agent, "build_id": saved.get("build_id") or ctx.build_id}  # kiln.build_id stays put
    state.pop("warm", None)
    if box.left_warm:  # this converge's apply left a warm agent (it replaces any earlier one)
        state["warm"] = {**box.left_warm, "agent": box.sha256}
    elif box.warm is not None and saved.get("warm"):  # the one it used is still there
        state["warm"] = saved["warm"]
    if state != saved:
        write_state(ctx.options.builds_dir, ctx.role, state)


class StageBundle:
    """Stage the bundle for the agent run that follows: push and apply (or verify) are one exec."""

    name = "stage bundle"

    def run(self, ctx: BakeContext) -> None:
        from kiln.controller.remote import stage_bundle

        size = stage_bundle(ctx, dev_bundle(ctx))
        log.debug("bundle staged", bytes=size)

    def undo(self, ctx: BakeContext) -> None:
        """Nothing was sent yet."""


def dev_bundle(ctx: BakeContext) -> dict[str, Any]:
    """``bundle_of(ctx)``, read back when the same compiled role, build and kiln code made it before.

    Resolving the role's variables needs the compiler's module (~45 ms to import, with Jinja2); a converge
    whose role did not change has its compiled role from the compile cache and needs none of it. A role
    that uses secrets (``no_log`` values) is never written: its bundle holds them."""
    key = bundle_key(ctx)
    path = ctx.options.builds_dir / "cache" / "bundle" / f"{key}.json"
    if key:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    from kiln.controller.stages.push_bundle import bundle_of

    bundle = bundle_of(ctx)
    if key and not ctx.compiled.no_log_values:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(bundle))
            tmp.replace(path)
        except (OSError, TypeError, ValueError):
            pass  # no entry: the next converge resolves it again
    return bundle


def bundle_key(ctx: BakeContext) -> str:
    """What the bundle is made of: the compiled role, the build's ``kiln`` variables, the step timeout, kiln's code."""
    import hashlib
    import pickle

    from kiln.controller.stepfiles.compile_cache import code_fingerprint

    try:
        compiled = pickle.dumps(ctx.compiled, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return ""
    build = json.dumps([ctx.role, ctx.version, ctx.build_id, ctx.provider.name, ctx.options.step_timeout]).encode()
    return hashlib.sha256(code_fingerprint().encode() + b"\0" + build + b"\0" + compiled).hexdigest()[:40]


BUILD_SETTINGS = ("ssh_timeout", "deadline_hours", "step_timeout", "ssh_keepalive", "ssh_keepalive_misses")


def config_summary(config: Any, provider: str, builds: Path) -> dict[str, Any]:
    """What converge needs of kiln.yaml, as plain values: the build settings and the provider's, checked
    here (InvalidInput, file:line:column) so a cached summary holds only settings that were valid."""
    from kiln.controller.bake import make_provider

    make_provider(provider, config, builds, images=False)
    settings = json.loads(json.dumps(config.provider(provider), default=str))
    return {"build": {name: getattr(config, name) for name in BUILD_SETTINGS}, "provider": settings}


def build_settings(options: BakeOptions, build: dict[str, Any]) -> BakeOptions:
    """The options with kiln.yaml's ``build:`` settings (those controller.bake.with_build_settings applies)."""
    return dataclasses.replace(options, **build)


def compile_for_dev(role: str, options: BakeOptions, overrides: dict, tags, skip_tags, provider: str = "local"):
    """(options with kiln.yaml's build settings, the provider's settings, compiled role): compiled once per inputs."""
    from kiln.controller.log import REDACT
    from kiln.controller.stepfiles.compile_cache import CompileCache, compile_cached

    cache = CompileCache(options.builds_dir / "cache" / "compile")
    summary, compiled, _ = compile_cached(
        cache,
        options.playbooks_dir,
        role,
        provider,
        overrides,
        tags,
        skip_tags,
        options.check_mode,
        options.diff,
        summarize=lambda config: config_summary(config, provider, options.builds_dir),
    )
    REDACT.secrets = [*REDACT.secrets, *compiled.no_log_values]
    return build_settings(options, summary["build"]), summary["provider"], compiled


def _context(
    role: str,
    options: BakeOptions,
    overrides: dict,
    tags: list[str] | None,
    skip_tags: list[str] | None,
    provider_name: str = "local",
) -> BakeContext:
    from kiln.controller.providers import REGISTRY

    if provider_name not in REGISTRY:
        raise InvalidInput(
            [
                Diagnostic(
                    str(options.playbooks_dir / "kiln.yaml"),
                    1,
                    1,
                    f"unknown provider '{provider_name}' ({', '.join(REGISTRY)})",
                )
            ]
        )
    options, settings, compiled = compile_for_dev(role, options, overrides, tags, skip_tags, provider_name)
    provider = REGISTRY[provider_name](settings, None, options.builds_dir, False)
    build_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    ctx = BakeContext(role=role, compiled=compiled, provider=provider, options=options, build_id=build_id)
    ctx.version = DEV_VERSION
    return ctx


def converge(
    role: str,
    options: BakeOptions,
    overrides: dict | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    verify: bool = False,
    provider: str = "local",
) -> int:
    early = EarlyConnect(options.builds_dir, role, provider)
    try:
        return _converge(early, role, options, overrides, tags, skip_tags, verify, provider)
    finally:
        early.discard()


def _converge(
    early: EarlyConnect,
    role: str,
    options: BakeOptions,
    overrides: dict | None,
    tags: list[str] | None,
    skip_tags: list[str] | None,
    verify: bool,
    provider: str,
) -> int:
    try:
        ctx = _context(role, options, overrides or {}, tags, skip_tags, provider)
    except InvalidInput as exc:
        print(exc.render())
        return EXIT_INVALID
    if verify:
        from kiln.controller.stages.verify import Verify

        last = Verify()
    else:
        from kiln.controller.stages.apply_steps import ApplySteps

        last = ApplySteps()
    try:
        run_stages([AttachDevInstance(early), StageBundle(), last], ctx)
    except BaseException as exc:  # noqa: B036 - reported through the exit code
        log.error("failed", stage=ctx.current_stage, error=str(exc))
        return EXIT_FAILED
    finally:
        remember_agent(ctx)
    from kiln.controller.remote import box_agent

    box = box_agent(ctx)
    sent = {"bytes_sent": box.bytes_sent, "round_trips": box.round_trips, "via": box.via}
    if not verify:
        c = ctx.apply_counts
        log.info(
            "converged", ok=c.ok, changed=c.changed, skipped=c.skipped, seconds=ctx.timings.get("apply steps"), **sent
        )
    else:
        log.info("verified", **sent)
    return EXIT_OK


def login_argv(role: str, builds: Path) -> list[str]:
    path = state_path(builds, role)
    if not path.exists():
        raise FileNotFoundError(f"no dev instance for {role}: run `invoke converge --role {role}` first")
    saved = json.loads(path.read_text())
    if "client_key" not in saved:
        raise FileNotFoundError(f"the dev machine of {role} is an existing host: log in to it with your own ssh")
    key = path.with_suffix(".key")
    key.write_text(saved["client_key"])
    key.chmod(0o600)
    inst = saved["instance"]
    known = path.with_suffix(".known_hosts")
    key_type, key_b64 = saved["host_pub"].split()[:2]
    known.write_text(f"[{inst['ssh_host']}]:{inst['ssh_port']} {key_type} {key_b64}\n")
    return [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(inst["ssh_port"]),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        f"{inst['ssh_user']}@{inst['ssh_host']}",
    ]


def destroy(role: str | None, builds: Path, build_id: str | None = None) -> list[str]:
    """Remove kept dev instances (one role, or all) and --keep-on-error leftovers of ``build_id``."""
    from kiln.controller.engine import Engine

    engine = Engine()
    removed = []
    dev = builds / "dev"
    for path in sorted(dev.glob("*.json")) if dev.exists() else []:
        if role and path.stem != role:
            continue
        saved = json.loads(path.read_text())
        if saved["instance"].get("owned", True) and saved.get("provider", "local") == "local":
            engine.remove_container(saved["instance"]["id"])
            removed.append(saved["instance"]["id"])
        for suffix in (".json", ".key", ".known_hosts"):
            path.with_suffix(suffix).unlink(missing_ok=True)
    if build_id:
        from kiln.controller.providers.local import LocalProvider

        removed += LocalProvider(engine=engine).destroy_build(build_id)
        # a sandbox build's machines have no local record; images made from a build inherit its
        # kiln.build-id label, so only kiln's own machine names are taken, never a workload
        for row in engine.containers(f"kiln.build-id={build_id}"):
            name = (row.get("Names") or [""])[0]
            if name.startswith(KEPT_MACHINE_PREFIXES):
                engine.remove_container(row["Id"])
                removed.append(name)
        key = builds / "keys" / f"{build_id}.key"
        key.unlink(missing_ok=True)
    return removed


def exec_login(role: str, builds: Path) -> None:
    argv = login_argv(role, builds)
    os.execvp(argv[0], argv)


def watch(
    role: str,
    options: BakeOptions,
    overrides: dict | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    provider: str = "local",
) -> int:
    """``converge --watch``: converge, then re-apply on every save until Ctrl-C (the instance is kept)."""
    from kiln.controller.pipeline import BakeFailed
    from kiln.controller.remote import box_agent
    from kiln.controller.watch import WarmAgent, Watch

    try:
        ctx = _context(role, options, overrides or {}, tags, skip_tags, provider)
    except InvalidInput as exc:
        print(exc.render())
        return EXIT_INVALID

    def recompile():
        return compile_for_dev(role, options, overrides or {}, tags, skip_tags, provider)[2]

    agent = WarmAgent(ctx)
    # Ctrl-C and SIGTERM end the watch alike (also where SIGINT was ignored, as in a background job)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        AttachDevInstance().run(ctx)
        StageBundle().run(ctx)
        box = box_agent(ctx)
        payload, box.pending = box.pending, None
        agent.start(payload)
        session = Watch(ctx, agent, recompile)
        session.first()
        log.info("watching", role=role, paths=len(session.watched()), hint="Ctrl-C ends; the instance is kept")
        session.loop()
    except KeyboardInterrupt:
        log.info("watch ended; the instance is kept", instance=getattr(ctx.instance, "id", None))
        return EXIT_OK
    except (BakeFailed, SSHError, OSError) as exc:
        log.error("watch failed", error=str(exc))
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        agent.close()
        if ctx.session is not None:
            ctx.session.close()
        remember_agent(ctx)
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
