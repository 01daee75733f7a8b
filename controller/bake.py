"""``bake(role, provider, options)``: validate, then run the stages; the library behind tasks.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from kiln.controller.config import Config, load_config
from kiln.controller.context import BakeContext, BakeOptions
from kiln.controller.model import CompiledRole, Image, InvalidInput
from kiln.controller.pipeline import Stage, run_stages
from kiln.controller.providers.base import Provider, ProviderError

if TYPE_CHECKING:  # the consumers' stage loads boto3: a local bake never pays for it
    from kiln.controller.stages.publish_consumers import PublishConsumers

log = structlog.get_logger("kiln")

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@dataclass
class BakeResult:
    ctx: BakeContext | None
    exit_code: int
    error: str = ""

    @property
    def image(self) -> Image | None:
        return self.ctx.image if self.ctx else None


def with_build_settings(options: BakeOptions, config: Config) -> BakeOptions:
    """The options with kiln.yaml's ``build:`` settings (SSH wait and keepalives, deadline, step limit) applied."""
    return dataclasses.replace(
        options,
        ssh_timeout=config.ssh_timeout,
        deadline_hours=config.deadline_hours,
        step_timeout=config.step_timeout,
        ssh_keepalive=config.ssh_keepalive,
        ssh_keepalive_misses=config.ssh_keepalive_misses,
        test_image=options.test_image and config.test_image,
    )


def new_build_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def make_provider(name: str, config: Config, builds_dir: Path, sandbox: bool = False, images: bool = True) -> Provider:
    """The provider registered under ``name`` (controller/providers/__init__.py), its settings checked.

    ``images``: the caller makes or lists images (bake, images, sweep, nightly); a provider that makes
    none (``makes_images = False``) is refused: invalid input, exit 2, nothing launched."""
    from kiln.controller.providers import REGISTRY

    if name not in REGISTRY:
        raise InvalidInput([_config_diag(config, f"unknown provider '{name}' ({', '.join(REGISTRY)})")])
    provider = REGISTRY[name](config.provider(name), config, builds_dir, sandbox)
    if images and not getattr(provider, "makes_images", True):
        reason = getattr(provider, "no_images_reason", f"the {name} provider makes no images")
        raise InvalidInput([_config_diag(config, reason)])
    return provider


def _config_diag(config: Config, message: str):
    from kiln.controller.model import Diagnostic

    return Diagnostic(str(config.path), 1, 1, message)


#: what the SSH stages load (~50 ms quiet, with invoke already loaded), loaded in a thread once the role is compiled:
#: the first stages (the base image, the version, the machine's launch) wait on the engine meanwhile; beside the compile
#: it would only slow it (one interpreter lock). Third-party modules only: none of them imports kiln's, so the thread
#: and the bake never wait on each other's import locks.
SSH_MODULES = ("cryptography.hazmat.primitives.asymmetric.ed25519", "paramiko", "fabric")


def preload_ssh() -> threading.Thread:
    """Start loading :data:`SSH_MODULES` in the background (a module the bake imports meanwhile waits for it)."""

    def load() -> None:
        for name in SSH_MODULES:
            importlib.import_module(name)

    thread = threading.Thread(target=load, name="kiln-preload-ssh", daemon=True)
    thread.start()
    return thread


def prefetch_engine_reads(provider_name: str, config: Config, role: str) -> None:
    """A local bake asks the engine what its first stages need while its role compiles: about kiln's base image
    (the resolve stage's podman call) and the role's versions (the allocate stage's: its reservations, then its
    images), each ~50-100 ms (controller/providers/local.py ``prefetch_kiln_base``, ``prefetch_versions``)."""
    if provider_name == "local":
        from kiln.controller.providers.local import prefetch_kiln_base, prefetch_versions

        prefetch_kiln_base(config.provider("local"))
        prefetch_versions(config.provider("local"), role)


def stages_for(options: BakeOptions, keep: int) -> list[Stage]:
    """The bake, in order; check mode stops after the apply (nothing is published).

    The test stage (a fresh machine from the new image) sits between the snapshot and publish: a failure
    there removes the image before anything points at it."""
    from kiln.controller.stages.allocate_version import AllocateVersion
    from kiln.controller.stages.apply_steps import ApplySteps, IdempotenceCheck
    from kiln.controller.stages.clean_machine import CleanMachine
    from kiln.controller.stages.connect import Connect
    from kiln.controller.stages.launch_instance import LaunchInstance
    from kiln.controller.stages.push_bundle import PushBundle
    from kiln.controller.stages.record import Record
    from kiln.controller.stages.resolve_base import ResolveBase
    from kiln.controller.stages.snapshot import Publish, Retire, Snapshot
    from kiln.controller.stages.test_image import TestImage
    from kiln.controller.stages.verify import Verify

    push = PushBundle()
    connect = Connect(while_booting=push.prepare_while_booting)  # the payload is made while the machine boots
    stages: list[Stage] = [ResolveBase(), AllocateVersion(), LaunchInstance(), connect, push, ApplySteps()]
    if options.idempotence_gate and not options.check_mode:
        stages.append(IdempotenceCheck())
    if options.check_mode:
        return stages
    stages += [Verify(), CleanMachine(), Snapshot()]
    if options.test_image:
        stages.append(TestImage())
    stages += [Publish(), Retire(keep), Record()]
    return stages


def with_consumers(stages: list[Stage], consumers: PublishConsumers | None) -> list[Stage]:
    """``stages`` with the consumers' stage right after publish (none in check mode: nothing is published)."""
    from kiln.controller.stages.snapshot import Publish

    at = next((i + 1 for i, stage in enumerate(stages) if stage.name == Publish.name), None)
    if consumers is None or at is None:
        return stages
    return [*stages[:at], consumers, *stages[at:]]


def bake_stages(ctx: BakeContext, options: BakeOptions, keep: int, consumers: PublishConsumers | None) -> list[Stage]:
    """The stages; a provider that bakes several architectures gets each one's machine stages in parallel
    under the one version (controller/stages/architectures.py), one architecture is the context's."""
    arches = list(getattr(ctx.provider, "architectures", None) or [])
    if len(arches) > 1:
        from kiln.controller.stages.architectures import by_architecture

        return by_architecture(lambda: with_consumers(stages_for(options, keep), consumers), arches)
    ctx.arch = arches[0] if arches else ""
    return with_consumers(stages_for(options, keep), consumers)


def consumers_stage(provider: Provider, config: Config, role: str, options: BakeOptions) -> PublishConsumers | None:
    """The consumers of providers.aws.publish / role.yml ``publish:``, checked before anything is launched
    (InvalidInput: exit 2); None when there are none (or the provider has none)."""
    if provider.name != "aws":
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    from kiln.controller import consumers

    settings = consumers.settings_for(config, options.playbooks_dir, role)
    if not settings.any:
        return None
    base_dir = options.playbooks_dir.parent
    try:
        consumers.check_before_launch(provider, settings, base_dir)
    except (BotoCoreError, ClientError) as exc:
        raise ProviderError(f"checking the consumers failed: {exc}") from exc
    from kiln.controller.stages.publish_consumers import PublishConsumers

    return PublishConsumers(settings, base_dir)


def compile_for_bake(
    role: str,
    provider_name: str,
    config: Config,
    options: BakeOptions,
    overrides: dict[str, Any],
    tags: list[str] | None,
    skip_tags: list[str] | None,
) -> CompiledRole:
    from kiln.controller.stepfiles.compile_cache import CompileCache, compile_cached

    # compiled once per inputs (converge's cache): an unchanged role is read back, not compiled again
    _, compiled, _ = compile_cached(
        CompileCache(options.builds_dir / "cache" / "compile"),
        options.playbooks_dir,
        role,
        provider_name,
        overrides,
        tags,
        skip_tags,
        options.check_mode,
        options.diff,
        summarize=lambda _config: None,
        config=config,
    )
    from kiln.controller.log import REDACT

    # every log line from here on (terminal, JSON) masks the values no_log steps use; added to,
    # never replaced, so concurrent bakes in one process (nightly) keep each other's secrets masked
    REDACT.secrets = [*REDACT.secrets, *compiled.no_log_values]
    return compiled


def bake(
    role: str,
    provider_name: str = "local",
    options: BakeOptions | None = None,
    overrides: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    sandbox: bool = False,
    provider: Provider | None = None,
) -> BakeResult:
    """Bake one role into one new image version. Never raises for user-facing failures."""
    options = options or BakeOptions()
    try:
        config = load_config(options.playbooks_dir / "kiln.yaml")
        options = with_build_settings(options, config)
        if provider is None:
            prefetch_engine_reads(provider_name, config, role)
        compiled = compile_for_bake(role, provider_name, config, options, overrides or {}, tags, skip_tags)
        provider = provider or make_provider(provider_name, config, options.builds_dir, sandbox)
        consumers = consumers_stage(provider, config, role, options)
    except InvalidInput as exc:
        log.error("invalid input; nothing was launched", errors=len(exc.diagnostics))
        print(exc.render())
        return BakeResult(None, EXIT_INVALID, exc.render())
    except ProviderError as exc:  # the cloud, asked about the consumers
        log.error("checking the consumers failed; nothing was launched", error=str(exc))
        return BakeResult(None, EXIT_FAILED, str(exc))
    ctx = BakeContext(role=role, compiled=compiled, provider=provider, options=options, build_id=new_build_id())
    structlog.contextvars.bind_contextvars(role=role, build_id=ctx.build_id)
    log.info(
        "bake",
        provider=provider.name,
        chain=" -> ".join(compiled.chain),
        steps=len(compiled.steps),
        checks=len(compiled.checks),
        **({"check_mode": True} if options.check_mode else {}),
    )
    try:
        stages = bake_stages(ctx, options, config.retention, consumers)
        preload_ssh()  # after the stages' own imports, which it would slow (one interpreter lock)
        run_stages(stages, ctx)
    except InvalidInput as exc:  # the base names nothing that exists (found before anything was launched)
        log.error("invalid input; nothing was launched", errors=len(exc.diagnostics))
        print(exc.render())
        structlog.contextvars.unbind_contextvars("role", "build_id")
        return BakeResult(ctx, EXIT_INVALID, exc.render())
    except BaseException as exc:  # noqa: B036 - reported, exit code carries it
        recap(ctx)
        log.error("bake failed", stage=ctx.current_stage, error=ctx.failure or type(exc).__name__)
        structlog.contextvars.unbind_contextvars("role", "build_id")
        return BakeResult(ctx, EXIT_FAILED, ctx.failure)
    recap(ctx)
    if ctx.image:
        log.info(
            "baked",
            image=ctx.image.name,
            version=ctx.version,
            seconds=round(sum(v for k, v in ctx.timings.items() if not k.startswith("undo")), 2),
        )
    structlog.contextvars.unbind_contextvars("role", "build_id")
    return BakeResult(ctx, EXIT_OK)


def recap(ctx: BakeContext) -> None:
    """Ansible's PLAY RECAP, one line per role, plus where the time went."""
    c = ctx.apply_counts
    log.info(
        "recap",
        host=ctx.instance.id if ctx.instance else "-",
        ok=c.ok,
        changed=c.changed,
        failed=c.failed,
        skipped=c.skipped,
        ignored=c.ignored,
        checks_passed=ctx.checks.get("passed", 0),
        version=(ctx.version if not ctx.options.check_mode else "") or "-",
        result="ok" if ctx.succeeded else "failed",
        **({"check_mode": True} if ctx.options.check_mode else {}),
    )
    log.info("timings", **{k.replace(" ", "_"): v for k, v in ctx.timings.items()})
