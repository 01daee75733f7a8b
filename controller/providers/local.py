"""The local provider: build machines are podman (or docker) containers booting systemd.

The per-bake client key and a per-instance SSH host key are placed into the
container before it boots, the way cloud-init would, so the host key is pinned
exactly. Images are ``localhost/kiln/<role>:<version>``; ``:latest`` moves only
after verify passed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

import structlog

from controller.context import BakeContext
from controller.engine import BASE_IMAGE, Engine, EngineError
from controller.model import BaseImage, Image, Instance
from controller.ownership import BuildClaim
from controller.providers.base import ProviderError
from controller.ssh import HostKeyExpectation, KeyPair
from controller.versions import next_version, sort_key

log = structlog.get_logger("kiln.local")

LABEL_PREFIX = "kiln."


def image_repo(role: str) -> str:
    return f"localhost/kiln/{role}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_files(client_key: KeyPair, host_key: KeyPair) -> dict[str, tuple[bytes | None, int]]:
    """What cloud-init would write: the authorised key and this instance's host key."""
    return {
        "/root/.ssh": (None, 0o700),
        "/root/.ssh/authorized_keys": (client_key.public_openssh.encode() + b"\n", 0o600),
        "/etc/ssh/ssh_host_ed25519_key": (host_key.private_openssh, 0o600),
        "/etc/ssh/ssh_host_ed25519_key.pub": (host_key.public_openssh.encode() + b"\n", 0o644),
    }


def shared_state_dir() -> Path:
    """Machine-wide state of the local provider: ``KILN_STATE_DIR``, else /var/lib/kiln as root,
    else ~/.local/state/kiln (one per engine storage, as podman's own is per user)."""
    if os.environ.get("KILN_STATE_DIR"):
        return Path(os.environ["KILN_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/kiln")
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "kiln"


class LocalProvider:
    name = "local"

    def __init__(self, engine: Engine | None = None, state_dir: Path = Path("builds"),
                 settings: dict[str, Any] | None = None) -> None:
        settings = settings or {}
        if engine is None:
            engine = Engine()
            if settings.get("engine") not in (None, "", "auto"):
                engine.command = settings["engine"]
            if settings.get("runtime") not in (None, "", "auto"):
                engine.runtime = settings["runtime"]
        self.engine = engine
        self.state_dir = state_dir
        # versions and locks must be seen by every bake using this engine's storage,
        # whichever checkout or builds/ directory it runs from
        self.shared_dir = shared_state_dir()
        self._locks: dict[str, Any] = {}

    # --- base and versions -----------------------------------------------------------
    def resolve_base(self, spec: Any) -> BaseImage:
        ref = (spec.get("image") if isinstance(spec, dict) else spec) or BASE_IMAGE
        if not self.engine.image_exists(ref):
            if ref != BASE_IMAGE:
                raise ProviderError(f"base image {ref} not found in {self.engine.command}")
            log.info("base image missing: building it once with debootstrap (about a minute)", image=ref)
            self.engine.build_base_image(ref)
        return BaseImage(id=self.engine.image_id(ref), name=ref, spec=str(spec or BASE_IMAGE))

    def _reservations(self, role: str) -> Path:
        path = self.shared_dir / "versions" / role
        path.mkdir(parents=True, exist_ok=True)
        return path

    def allocate_version(self, role: str, claim: BuildClaim) -> str:
        reserved = self._reservations(role)
        for _ in range(100):
            taken = [i.version for i in self.images(role)] + [p.name for p in reserved.iterdir()]
            version = next_version(taken)
            try:  # O_EXCL: exactly one concurrent bake gets each version
                os.close(os.open(reserved / version, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return version
            except FileExistsError:
                continue
        raise ProviderError(f"could not reserve a version for {role}")

    def release_version(self, role: str, version: str) -> None:
        (self._reservations(role) / version).unlink(missing_ok=True)

    # --- the per-role lock (a second scheduler waits or skips) ------------------------
    def acquire_lock(self, role: str, owner: str, wait: bool, ttl: float = 4 * 3600) -> bool:
        """flock on builds/locks/<role>.lock: released by the kernel if this process dies."""
        path = self.shared_dir / "locks" / f"{role}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(owner)
        handle.flush()
        self._locks[role] = handle
        return True

    def release_lock(self, role: str, owner: str) -> None:
        handle = self._locks.pop(role, None)
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # --- the build machine -----------------------------------------------------------
    def launch(self, ctx: BakeContext) -> Instance:
        name = f"kiln-build-{ctx.role}-{ctx.build_id}"
        labels = {"kiln.temporary": "true", "kiln.build-id": ctx.build_id, "kiln.role": ctx.role,
                  "kiln.expires": ctx.expires.isoformat(timespec="seconds")}
        for attempt in range(3):
            port = free_port()
            ctx.instance = Instance(id=name, provider=self.name, ssh_port=port)
            try:
                self.engine.create_machine(ctx.base.name, name, labels, ssh_port=port)
                break
            except EngineError as exc:
                self.engine.remove_container(name)
                if "address already in use" not in str(exc) or attempt == 2:
                    raise ProviderError(str(exc)) from exc
        self.engine.copy_in(name, seed_files(ctx.client_key, ctx.host_key))
        try:
            self.engine.start(name)
        except EngineError as exc:
            raise ProviderError(str(exc)) from exc
        return ctx.instance

    def reboot_wait(self, ctx: BakeContext, timeout: float = 300) -> None:
        """A container's systemd exits on reboot: the engine starts it again (see Engine)."""
        try:
            status = self.engine.restart_after_reboot(ctx.instance.id, timeout)
        except EngineError as exc:
            raise ProviderError(str(exc)) from exc
        log.info("container was down for its reboot; started again", instance=ctx.instance.id, status=status)

    def host_key_expectation(self, ctx: BakeContext) -> HostKeyExpectation:
        return HostKeyExpectation(fingerprints={ctx.host_key.fingerprint})

    def hygiene_script(self) -> str:
        return ""

    def prepare_snapshot(self, ctx: BakeContext) -> None:
        """podman commit pauses the container itself."""

    def terminate(self, ctx: BakeContext | None, instance: Instance) -> None:
        self.engine.remove_container(instance.id)

    # --- images --------------------------------------------------------------------
    def snapshot(self, ctx: BakeContext) -> Image:
        ref = f"{image_repo(ctx.role)}:{ctx.version}"
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        labels = {f"{LABEL_PREFIX}{k}": v for k, v in ctx.labels().items()}
        labels.update({
            "org.opencontainers.image.version": ctx.version,
            "org.opencontainers.image.created": now,
            "org.opencontainers.image.revision": labels["kiln.git-commit"],
            "org.opencontainers.image.title": f"kiln {ctx.role}",
            "org.opencontainers.image.description": ctx.compiled.description,
        })
        image_id = self.engine.commit(ctx.instance.id, ref, labels)
        return Image(id=image_id, role=ctx.role, version=ctx.version, provider=self.name, name=ref,
                     created=now, base=ctx.base.name, inputs_hash=ctx.inputs_hash)

    def discard(self, ctx: BakeContext, image: Image) -> None:
        self.engine.remove_image(image.name)

    def publish(self, ctx: BakeContext, image: Image) -> list[Image]:
        latest = f"{image_repo(ctx.role)}:latest"
        ctx.previous_latest = self.engine.image_id(latest) if self.engine.image_exists(latest) else ""
        self.engine.tag(image.name, latest)
        self.release_version(ctx.role, ctx.version)  # the image itself now holds the version
        image.latest = True
        return [image]

    def unpublish(self, ctx: BakeContext, images: list[Image]) -> None:
        latest = f"{image_repo(ctx.role)}:latest"
        previous = ctx.previous_latest
        if previous:
            self.engine.tag(previous, latest)
        else:
            self.engine.untag(latest)

    def images(self, role: str) -> list[Image]:
        rows = self.engine.images(image_repo(role))
        latest_id = ""
        found: dict[str, Image] = {}
        for row in rows:
            labels = row.get("Labels") or {}
            names = row.get("Names") or []
            if f"{image_repo(role)}:latest" in names:
                latest_id = row["Id"]
            version = labels.get("kiln.version")
            if not version or labels.get("kiln.role") != role:
                continue
            created = row.get("CreatedAt") or labels.get("org.opencontainers.image.created", "")
            found[version] = Image(
                id=row["Id"], role=role, version=version, provider=self.name,
                name=f"{image_repo(role)}:{version}", created=str(created),
                base=labels.get("kiln.base-image", ""), inputs_hash=labels.get("kiln.inputs-hash", ""),
                extra={"build_id": labels.get("kiln.build-id", "")},
            )
        images = sorted(found.values(), key=lambda i: sort_key(i.version), reverse=True)
        for image in images:
            image.latest = image.id == latest_id
            image.status = "latest" if image.latest else "available"
        return images

    def retire(self, role: str, keep: int) -> list[Image]:
        images = self.images(role)
        retired = [i for i in images[keep:] if not i.latest]
        for image in retired:
            self.engine.untag(image.name)
            self.engine.run("rmi", image.id, check=False)  # refused while another tag still uses it
        return retired

    def sweep(self, apply: bool) -> list[str]:
        now = dt.datetime.now(dt.UTC)
        expired = []
        for row in self.engine.containers("kiln.temporary=true"):
            labels = row.get("Labels") or {}
            try:
                expires = dt.datetime.fromisoformat(labels.get("kiln.expires", ""))
            except ValueError:
                continue
            if expires <= now:
                name = (row.get("Names") or [row["Id"]])[0]
                expired.append(f"container {name} (build {labels.get('kiln.build-id')}, expired {expires})")
                if apply:
                    self.engine.remove_container(row["Id"])
        return expired
