"""The local provider: build machines are podman (or docker) containers booting systemd.

The per-bake client key and a per-instance SSH host key are placed into the
container before it boots, the way cloud-init would, so the host key is pinned
exactly. Images are ``<prefix>/<role>:<version>`` (prefix ``localhost/kiln`` unless
configured); ``:latest`` moves only after verify passed, and only to a newer version.

Ownership: neither the build container nor the image carries a temporary or expiry
mark (``podman commit`` would copy them into every workload started from the image).
Instead the version reservation ``<state>/versions/<role>/<version>`` is the build
record: the :class:`BuildClaim` plus the container and image the build made. ``sweep``
removes a thing only when a record names it exactly and its claim says the build is over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from kiln.controller.engine import (
    BASE_BUILD_TIMEOUT,
    BASE_IMAGE,
    HOSTKEYS_UNIT,
    HOSTKEYS_UNIT_PATH,
    Engine,
    EngineError,
    base_staleness_of,
    image_prefix,
    labels_of,
)
from kiln.controller.model import BaseImage, Image, Machine, Publication, PublishSpec
from kiln.controller.ownership import BuildClaim
from kiln.controller.providers.base import ImageSpec, Lock, MachineSpec, ProviderError
from kiln.controller.versions import next_version, sort_key

if TYPE_CHECKING:  # paramiko: a bake loads it while its first engine calls run (bake.py)
    from kiln.controller.ssh import HostKeyExpectation, KeyPair

log = structlog.get_logger("kiln.local")

LABEL_PREFIX = "kiln."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_files(host_key: KeyPair) -> dict[str, tuple[bytes | None, int]]:
    """What cloud-init would write before sshd starts: this instance's host key.

    Also the current host-key unit: base images built before it only made keys when the
    ed25519 one was missing, so a machine with its pinned ed25519 key had no rsa/ecdsa keys.
    Placing it here reaches every existing base image without rebuilding it.
    """
    return {
        "/etc/ssh/ssh_host_ed25519_key": (host_key.private_openssh, 0o600),
        "/etc/ssh/ssh_host_ed25519_key.pub": (host_key.public_openssh.encode() + b"\n", 0o644),
        HOSTKEYS_UNIT_PATH: (HOSTKEYS_UNIT.encode(), 0o644),
    }


#: who kiln logs in as: a user of its own with passwordless sudo, as a cloud image's default user, never root
#: (a role may forbid root's SSH login, as hardening roles do; the image must still serve as a kiln base)
BUILD_USER = "kiln-build"
#: where its uid and gid are looked for: above UID_MAX/GID_MAX (60000) and below systemd's dynamic users
#: (61184), so the users and groups a role creates get the ids they get without kiln
BUILD_USER_IDS = (60100, 61100)
#: why the script below says the image cannot run kiln's build user, by its exit status (the reason is
#: in the status: a quick exec's output can be lost by the engine under load)
CANNOT_SERVE = {
    3: "the image has no sudo",
    4: "the image has no groupadd",
    5: "the image has no useradd",
    6: "the image has no runuser",
    7: f"sudo does not let {BUILD_USER} run commands as root",
}

# Made as the container starts, before kiln's first connection; kept across the dev loop's converges
# (the key is the instance's own) and removed by the clean stage (REMOVE_BUILD_USER).
ADD_BUILD_USER = f"""
set -e
user={BUILD_USER}
for needed in 3:sudo 4:groupadd 5:useradd 6:runuser; do
  tool=${{needed#*:}}
  command -v $tool >/dev/null || {{ echo "the image has no $tool"; exit ${{needed%%:*}}; }}
done
if ! id -u $user >/dev/null 2>&1; then
  id={BUILD_USER_IDS[0]}
  while getent passwd $id >/dev/null || getent group $id >/dev/null; do
    id=$((id + 1)); [ $id -lt {BUILD_USER_IDS[1]} ] || {{ echo "no free uid for $user" >&2; exit 1; }}
  done
  shell=/bin/sh; [ -x /bin/bash ] && shell=/bin/bash
  # password '*': no password logs in, yet the account is not locked ('!'), which sshd refuses without PAM
  groupadd --gid $id $user
  useradd --uid $id --gid $id --create-home --shell $shell --password '*' \\
    --comment "kiln build user (removed before the image is made)" $user
fi
echo "$user ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/$user
chmod 0440 /etc/sudoers.d/$user
home=$(getent passwd $user | cut -d: -f6)
install -d -m 0700 -o $user -g $user "$home/.ssh"
cat > "$home/.ssh/authorized_keys"
chown $user:$user "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
runuser -u $user -- sudo -n true >&2 || {{ echo "sudo does not let $user run commands as root"; exit 7; }}
"""

# Part of the clean stage (run as root): no account, group, home, mail, sudoers file or key of the build
# user reaches the image. userdel --force: the bake's own session still runs as it. The shadow tools' backup
# files (/etc/passwd- ...) hold the entries as they were before the removal (one sed for those there are: each
# command is a fork and exec on the bake's path).
REMOVE_BUILD_USER = f"""
rm -f /etc/sudoers.d/{BUILD_USER}
if id -u {BUILD_USER} >/dev/null 2>&1; then userdel --force --remove {BUILD_USER}; fi
backups=
for file in /etc/passwd- /etc/shadow- /etc/group- /etc/gshadow- /etc/subuid- /etc/subgid-; do
  if [ -f $file ]; then backups="$backups $file"; fi
done
if [ -n "$backups" ]; then sed -i '/^{BUILD_USER}:/d' $backups; fi
"""


def add_build_user(engine: Engine, container: str, client_key: KeyPair, image: str) -> None:
    """The build user with ``client_key`` authorised and passwordless sudo, before kiln's first connection.

    An image that cannot have it (no sudo, as a base built by hand may be) is refused, saying why."""
    key = client_key.public_openssh.encode() + b"\n"
    rc, _, stderr = engine.exec_status(container, "sh", "-c", ADD_BUILD_USER, input=key, timeout=120)
    if rc in CANNOT_SERVE:
        raise ProviderError(
            f"{image} cannot serve as a base: {CANNOT_SERVE[rc]}. kiln logs in as a build user ({BUILD_USER}) "
            "and runs as root through sudo; install sudo in the image (kiln's own base has it)"
        )
    if rc != 0:
        raise ProviderError(f"could not add the build user {BUILD_USER} to {container} (exit {rc}): {stderr.strip()}")


def base_image_lock() -> Path:
    """The lock around building kiln's base image: one per engine storage (this user's), whatever
    ``KILN_STATE_DIR`` a bake uses, as the base image is shared by all of them."""
    return Path(tempfile.gettempdir()) / f"kiln-base-image-{os.geteuid()}.lock"


@contextlib.contextmanager
def flocked(path: Path, timeout: float) -> Iterator[None]:
    """flock on ``path``, waited for at most ``timeout`` seconds (ProviderError past it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ProviderError(f"{path} stayed locked for {timeout:.0f}s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_kiln_base(engine: Engine, ref: str = BASE_IMAGE, prefetched: Prefetch | None = None) -> dict:
    """kiln's own base, built with debootstrap when missing or stale (its recipe label is not today's):
    one bake builds it while concurrent ones wait for it. The stale one is left to the engine (untagged).

    Returns the base as ``image inspect`` describes it (a current base costs that one engine call, none when
    ``prefetched`` holds the answer of one made while the role compiled)."""
    inspected = prefetched.inspected if prefetched is not None else engine.inspect_image(ref)
    if not base_staleness_of(inspected):
        return inspected
    with flocked(base_image_lock(), BASE_BUILD_TIMEOUT + 60):
        why = engine.base_staleness(ref)
        if why:
            log.info("base image: building it with debootstrap (about a minute)", image=ref, why=why)
            engine.build_base_image(ref)
    return engine.image_inspect(ref)


#: seconds a prefetched answer about the base stays good to use (a bake uses it right after its compile)
PREFETCH_FRESH_SECONDS = 60.0
#: seconds the resolve stage waits for a prefetch still under way (the engine call itself is bounded: 60 s)
PREFETCH_WAIT_SECONDS = 90.0


class BackgroundRead:
    """One engine read made in a thread while the bake does other work, for a stage after it.

    The stage waits for it (bounded: ``PREFETCH_WAIT_SECONDS``) and uses it only if it ended well, in time and, as
    each kind checks in its own way, is still true; otherwise the stage reads again itself and reports what fails
    then. A kind says what it reads (:meth:`read`) and how long an answer stays good (``fresh_seconds``; None: as long
    as its own check holds)."""

    thread_name = "kiln-background-read"
    fresh_seconds: float | None = PREFETCH_FRESH_SECONDS

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.value: Any = None
        self.ok = False
        self.thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def read(self) -> Any:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self.value = self.read()
            self.ok = True
        except Exception:  # the stage reads again, and reports what fails then
            self.ok = False

    def answered(self) -> bool:
        """Whether it holds a fresh answer (waiting, bounded, for one under way)."""
        self.thread.join(PREFETCH_WAIT_SECONDS)
        fresh = self.fresh_seconds is None or time.monotonic() - self.started < self.fresh_seconds
        return not self.thread.is_alive() and self.ok and fresh


class Prefetch(BackgroundRead):
    """One ``image inspect`` of a base image, made while the bake compiles its role."""

    thread_name = "kiln-base-image"

    def __init__(self, engine: Engine, ref: str) -> None:
        self.engine, self.ref = engine, ref
        super().__init__()

    def read(self) -> dict | None:
        return self.engine.inspect_image(self.ref)

    @property
    def inspected(self) -> dict | None:
        return self.value


_PREFETCHES: dict[tuple[str, str | None, str], Prefetch] = {}
_PREFETCHES_LOCK = threading.Lock()


def prefetch_kiln_base(settings: dict[str, Any] | None) -> Prefetch:
    """Ask the engine about kiln's base image in the background: a local bake starts it before compiling its role,
    and the resolve stage takes the answer (once) instead of asking then (one podman call off the bake's path)."""
    engine = engine_for(settings or {})
    prefetch = Prefetch(engine, BASE_IMAGE)
    with _PREFETCHES_LOCK:
        _PREFETCHES[(engine.command, engine.runtime, BASE_IMAGE)] = prefetch
    prefetch.thread.start()
    return prefetch


def take_prefetch(engine: Engine, ref: str) -> Prefetch | None:
    """The answer a prefetch holds about ``ref`` for ``engine``, taken once; None when there is no fresh one."""
    with _PREFETCHES_LOCK:
        prefetch = _PREFETCHES.pop((engine.command, engine.runtime, ref), None)
    return prefetch if prefetch is not None and prefetch.answered() else None


def folder_state(folder: Path) -> tuple[int, frozenset[str]] | None:
    """A folder's modification time and entries, read as one: (0, no entries) when there is no such folder; None
    if it kept changing while read."""
    for _ in range(5):
        try:
            before = folder.stat().st_mtime_ns
            names = frozenset(os.listdir(folder))
            if folder.stat().st_mtime_ns == before:
                return before, names
        except FileNotFoundError:
            return 0, frozenset()
    return None


class VersionsPrefetch(BackgroundRead):
    """A role's version reservations, then its images' versions (the allocate stage's order), read while the bake
    compiles its role.

    They are still true while the reservations folder is as it was read (the same entries and modification time):
    no version was reserved or given back since, so no image was published since either (a version stays reserved
    until its image exists). The stage checks that, then takes its reservation itself."""

    thread_name = "kiln-versions"

    def __init__(self, provider: LocalProvider, role: str) -> None:
        self.provider, self.role = provider, role
        super().__init__()

    def read(self) -> tuple[tuple[int, frozenset[str]], list[str]]:
        """Creates nothing (the role is not validated yet): a folder not there yet reads as empty."""
        state = folder_state(self.provider.reservations_folder(self.role))
        if state is None:
            raise ProviderError("the reservations folder kept changing while read")
        held = [name for name in state[1] if not name.startswith(".")]
        return state, held + self.provider.image_versions(self.role)

    def still_true(self, folder: Path) -> list[str] | None:
        """The versions read, if nothing was reserved or given back since (waiting, bounded, for a read under way)."""
        if not self.answered():
            return None
        state, versions = self.value
        return versions if folder_state(folder) == state else None


_VERSION_PREFETCHES: dict[tuple[str, str | None, str, str, str], VersionsPrefetch] = {}


def _versions_key(provider: LocalProvider, role: str) -> tuple[str, str | None, str, str, str]:
    return (provider.engine.command, provider.engine.runtime, provider.prefix, str(provider.shared_dir), role)


def prefetch_versions(settings: dict[str, Any] | None, role: str) -> VersionsPrefetch:
    """Read what the allocate stage needs to choose ``role``'s next version in the background (one podman call off
    the bake's path); the stage takes it once, if still true (:meth:`VersionsPrefetch.still_true`)."""
    provider = LocalProvider(settings=settings)
    prefetch = VersionsPrefetch(provider, role)
    with _PREFETCHES_LOCK:
        _VERSION_PREFETCHES[_versions_key(provider, role)] = prefetch
    prefetch.thread.start()
    return prefetch


def take_versions_prefetch(provider: LocalProvider, role: str) -> VersionsPrefetch | None:
    with _PREFETCHES_LOCK:
        return _VERSION_PREFETCHES.pop(_versions_key(provider, role), None)


def engine_for(settings: dict[str, Any]) -> Engine:
    """The engine ``providers.local`` names (its ``engine`` and ``runtime``; ``auto``: detected)."""
    engine = Engine()
    if settings.get("engine") not in (None, "", "auto"):
        engine.command = settings["engine"]
    if settings.get("runtime") not in (None, "", "auto"):
        engine.runtime = settings["runtime"]
    return engine


def shared_state_dir() -> Path:
    """Machine-wide state of the local provider: ``KILN_STATE_DIR``, else /var/lib/kiln as root,
    else ~/.local/state/kiln (one per engine storage, as podman's own is per user)."""
    if os.environ.get("KILN_STATE_DIR"):
        return Path(os.environ["KILN_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/kiln")
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "kiln"


def make_provider(settings: dict[str, Any] | None, config: Any, builds_dir: Path, sandbox: bool) -> LocalProvider:
    """``providers.local`` was checked with kiln.yaml (local_settings.py's LOCAL_SCHEMA)."""
    return LocalProvider(settings=settings)


class LocalProvider:
    name = "local"
    makes_images = True
    #: the clean stage's ``sync`` is not needed: the commit reads the container's files through this host's kernel,
    #: which has every write the machine made (a ``sync`` in a container flushes the whole host's disks)
    flushes_before_snapshot = False
    #: the build machine goes in a thread once the snapshot is made, while the image is tested (the engine runs
    #: the two containers' calls side by side)
    removes_in_background = True

    def __init__(self, engine: Engine | None = None, settings: dict[str, Any] | None = None) -> None:
        settings = settings or {}
        self.engine = engine if engine is not None else engine_for(settings)
        self.prefix = image_prefix(str(settings.get("image_prefix") or ""))
        # versions and locks must be seen by every bake using this engine's storage,
        # whichever checkout or builds/ directory it runs from
        self.shared_dir = shared_state_dir()
        self._locks: dict[str, Any] = {}
        #: the listing each role's last publish made, for the retire that follows it
        self._published: dict[str, RoleListing] = {}
        #: each role's images listed while its new image was tested, for its publish
        self._early: dict[str, EarlyListing] = {}

    def repo(self, role: str) -> str:
        return f"{self.prefix}/{role}"

    # --- base ------------------------------------------------------------------------
    def resolve_base(self, spec: Any) -> BaseImage:
        ref = (spec.get("image") if isinstance(spec, dict) else spec) or BASE_IMAGE
        if ref == BASE_IMAGE:
            inspected = ensure_kiln_base(self.engine, ref, take_prefetch(self.engine, ref))
        else:
            inspected = self.engine.inspect_image(ref)
        if inspected is None:
            raise ProviderError(f"base image {ref} not found in {self.engine.command}")
        return BaseImage(id=inspected["Id"], name=ref, spec=str(spec or BASE_IMAGE))

    # --- versions: each reservation is the build's record ------------------------------
    def reservations_folder(self, role: str) -> Path:
        return self.shared_dir / "versions" / role

    def _reservations(self, role: str) -> Path:
        path = self.reservations_folder(role)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _reserved(self, role: str) -> list[str]:
        return [p.name for p in self._reservations(role).iterdir() if not p.name.startswith(".")]

    def allocate_version(self, role: str, claim: BuildClaim) -> str:
        prefetched = take_versions_prefetch(self, role)
        # what was read while the role compiled, if still true (checked before this creates the folder)
        known = prefetched.still_true(self.reservations_folder(role)) if prefetched is not None else None
        reserved = self._reservations(role)
        content = json.dumps({"role": role, "claim": json.loads(claim.to_json())}, sort_keys=True)
        for _ in range(100):
            if known is None:  # nothing prefetched, or a clash: read now
                known = self._versions_known(role)
            version = next_version(known)
            known = None
            staged = _staged_copy(reserved / version, content)
            try:  # link() never replaces: exactly one concurrent bake gets each version, its record whole
                os.link(staged, reserved / version)
                return version
            except FileExistsError:
                continue
            finally:
                staged.unlink(missing_ok=True)
        raise ProviderError(f"could not reserve a version for {role}")

    def _versions_known(self, role: str) -> list[str]:
        # reservations first, then images: a version is reserved until its image exists (committed at
        # snapshot, released at publish), so read in this order no published version can slip between
        held = self._reserved(role)
        return held + self.image_versions(role)

    def image_versions(self, role: str) -> list[str]:
        """The versions the engine lists images of ``role`` under (published or not: one listing)."""
        found = []
        for row in self.engine.images(self.repo(role)):
            labels = row.get("Labels") or {}
            if labels.get("kiln.role") == role and labels.get("kiln.version"):
                found.append(labels["kiln.version"])
        return found

    def release_version(self, role: str, version: str) -> None:
        (self._reservations(role) / version).unlink(missing_ok=True)

    def _note(self, role: str, version: str, build_id: str, **facts: Any) -> None:
        """Add what the build made to its record (before it exists, so a crash cannot hide it)."""
        path = self.shared_dir / "versions" / role / version
        record = read_record(path)
        if record is None or record["claim"].build_id != build_id:
            return  # not a bake's machine (the developer loop keeps its own)
        write_record(path, {**record, **facts})

    def keep_build(self, spec: MachineSpec) -> None:
        """--keep-on-error: the record stays, held by nobody; only the deadline (or destroy) ends it."""
        path = self.shared_dir / "versions" / spec.role / spec.version
        record = read_record(path)
        if record is not None and record["claim"].build_id == spec.build_id:
            write_record(path, {**record, "claim": record["claim"].keep()})

    # --- the per-role lock (a second scheduler waits or skips) ------------------------
    def acquire_lock(self, role: str, owner: str, wait: bool, ttl: float = 4 * 3600) -> Lock:
        """flock on <machine-wide state>/locks/<role>.lock (shared_state_dir: not builds/), which names its holder.

        The kernel drops a flock when its holder dies; a holder recorded there that did not
        release (killed) is reported as taken over. A lock still flocked by a dead or expired
        holder (e.g. an inherited descriptor) is broken: its file is replaced.
        """
        path = self.shared_dir / "locks" / f"{role}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        broken: BuildClaim | None = None
        while True:
            handle = open(path, "a+")  # noqa: SIM115 - held until release_lock
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(handle)
                # unlike a build, a lock has a ttl that ends it even while its holder lives on
                if holder is not None and (holder.holder_alive() is False or holder.expired()):
                    log.warning("breaking a lock held by a dead or expired holder", role=role, holder=holder.describe())
                    _unlink_if_same(path, handle)
                    handle.close()
                    broken = holder
                    continue
                handle.close()
                if not wait:
                    return Lock(False)
                time.sleep(1)
                continue
            if not _same_file(path, handle):  # broken and replaced while we waited: take the new one
                handle.close()
                continue
            previous = _lock_holder(handle) or broken
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
            handle.seek(0)
            handle.truncate()
            handle.write(BuildClaim.for_build(owner, expires).to_json())
            handle.flush()
            self._locks[role] = handle
            return Lock(True, took_over=_stale_lock_holder(previous) if previous else "")

    def release_lock(self, role: str, owner: str) -> None:
        handle = self._locks.pop(role, None)
        if handle is not None:
            handle.seek(0)
            handle.truncate()  # a lock left empty was released; one naming a holder was not
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def _latest_lock(self, role: str, timeout: float = 120) -> contextlib.AbstractContextManager[None]:
        """A short per-role lock around compare-and-tag of ``latest`` (two publishes never interleave)."""
        return flocked(self.shared_dir / "locks" / f"{role}.latest.lock", timeout)

    def _generation_file(self, role: str) -> Path:
        return self.shared_dir / "locks" / f"{role}.latest.generation"

    def latest_generation(self, role: str) -> str:
        """A token that changes whenever kiln moves the role's ``latest`` ("" before the first time)."""
        try:
            return self._generation_file(role).read_text()
        except FileNotFoundError:
            return ""

    def _moved_latest(self, role: str) -> None:
        """A new token, written whole (under the ``latest`` lock): a listing made before it no longer says what
        ``latest`` names."""
        path = self._generation_file(role)
        staged = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
        staged.write_text(f"{time.time_ns()}-{os.getpid()}-{os.urandom(6).hex()}")
        os.replace(staged, path)

    def list_before_publish(self, role: str) -> EarlyListing:
        """List the role's images in a thread now (the image was just made and is tested next: engine time), for
        :meth:`publish` (:class:`EarlyListing`)."""
        early = EarlyListing(self, role)
        self._early[role] = early
        early.thread.start()
        return early

    # --- the build machine -----------------------------------------------------------
    def launch(self, spec: MachineSpec) -> Machine:
        """A container from ``spec.base`` (the base image; for the test stage, the image just committed).

        Interrupted or failed half way, the container is removed before the error goes on."""
        name = f"kiln-{spec.machine}-{spec.role}-{spec.build_id}"
        try:
            return self._launch(spec, name)
        except BaseException:  # noqa: B036 - an interrupt too: what was made goes, a second signal waits
            from kiln.controller.pipeline import signals_deferred

            with signals_deferred():
                self.engine.remove_container(name)
            raise

    def _launch(self, spec: MachineSpec, name: str) -> Machine:
        # no temporary/expiry label: podman commit would copy it into the image and every workload
        labels = {"kiln.build-id": spec.build_id, "kiln.role": spec.role}
        record_key = machine_record_key(spec.machine)
        self._note(spec.role, spec.version, spec.build_id, **{record_key: name})
        for attempt in range(3):
            port = free_port()
            try:
                container_id = self.engine.create_machine(spec.base.name, name, labels, ssh_port=port)
                break
            except EngineError as exc:
                self.engine.remove_container(name)
                if "address already in use" not in str(exc) or attempt == 2:
                    raise ProviderError(str(exc)) from exc
        self._note(spec.role, spec.version, spec.build_id, **{record_key: name, f"{record_key}_id": container_id})
        self.engine.copy_in(name, seed_files(spec.host_key))
        try:
            self.engine.start(name)
            add_build_user(self.engine, name, spec.client_key, spec.base.name)
        except EngineError as exc:
            raise ProviderError(str(exc)) from exc
        return Machine(
            id=name,
            provider=self.name,
            ssh_port=port,
            ssh_user=BUILD_USER,
            host_public_key=spec.host_key.public_openssh,
        )

    def machine_status(self, machine: Machine) -> str:
        return self.engine.status(machine.id)

    def start(self, machine: Machine) -> None:
        self.engine.start(machine.id)

    def reboot_wait(self, machine: Machine, timeout: float = 300) -> None:
        """A container's systemd exits on reboot: the engine starts it again (see Engine)."""
        try:
            status = self.engine.restart_after_reboot(machine.id, timeout)
        except EngineError as exc:
            raise ProviderError(str(exc)) from exc
        log.info("container was down for its reboot; started again", instance=machine.id, status=status)

    def host_key_expectation(self, machine: Machine) -> HostKeyExpectation:
        """The host key placed into the container before it booted: pinned exactly."""
        from kiln.controller.ssh import HostKeyExpectation, KeyPair

        return HostKeyExpectation(fingerprints={KeyPair(b"", machine.host_public_key).fingerprint})

    def hygiene_script(self) -> str:
        return REMOVE_BUILD_USER

    def prepare_snapshot(self, machine: Machine) -> None:
        """podman commit pauses the container itself."""

    def terminate(self, machine: Machine) -> None:
        self.engine.remove_container(machine.id)

    # --- images --------------------------------------------------------------------
    def snapshot(self, spec: ImageSpec, on_created: Callable[[Image], None]) -> Image:
        ref = f"{self.repo(spec.role)}:{spec.version}"
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        labels = {f"{LABEL_PREFIX}{k}": v for k, v in spec.labels.items()}
        labels.update(
            {
                "org.opencontainers.image.version": spec.version,
                "org.opencontainers.image.created": now,
                "org.opencontainers.image.revision": labels["kiln.git-commit"],
                "org.opencontainers.image.title": f"kiln {spec.role}",
                "org.opencontainers.image.description": spec.description,
            }
        )
        image = Image(
            id="",
            role=spec.role,
            version=spec.version,
            provider=self.name,
            name=ref,
            created=now,
            base=spec.base.name,
            inputs_hash=spec.inputs_hash,
            build_id=spec.build_id,
        )
        # owned before it exists: an interrupt during the commit still finds (and removes) it
        on_created(image)
        self._note(spec.role, spec.version, spec.build_id, image=ref)
        image.id = self.engine.commit(spec.machine.id, ref, labels)
        return image

    def discard(self, image: Image) -> None:
        """Only an image of the build that made it (its ``kiln.build-id`` label): never another's under its name."""
        if self._built_by(image.name, image.build_id):
            self.engine.remove_image(image.name)

    def _built_by(self, ref: str, build_id: str) -> bool:
        labels = self.engine.image_labels(ref)
        return labels is not None and labels.get("kiln.build-id") == build_id

    def publish(self, spec: PublishSpec, on_started: Callable[[Publication], None]) -> Publication:
        """One image, no copies: ``:latest`` moves to it unless it names a newer version.

        The role's images are listed once, under the lock: the listing says what ``latest`` names (its version
        label and its id) and is kept for :meth:`retire`, which comes next."""
        image = spec.images[0]
        publication = Publication(spec, images=[image])
        on_started(publication)
        latest = f"{self.repo(spec.role)}:latest"
        self.release_version(spec.role, spec.version)  # the image itself now holds the version
        early = self._early.pop(spec.role, None)
        with self._latest_lock(spec.role):
            listed = early.still_true() if early is not None else None
            listed = listed if listed is not None else self._listing_or_none(spec.role)
            shown = listed.latest if listed else None
            current = labels_of(shown).get("kiln.version", "") if shown else ""
            if current and sort_key(current) >= sort_key(spec.version):
                log.warning(
                    "latest stays at the newer version; this version is kept beside it",
                    latest=current,
                    version=spec.version,
                    image=image.name,
                )
                self._keep_listing(spec.role, listed)
                return publication
            publication.previous_latest[image.id] = shown["Id"] if current else ""
            self.engine.tag(image.name, latest)
            self._moved_latest(spec.role)
            if listed is not None:
                listed.latest_id = image.id
            self._keep_listing(spec.role, listed)
        image.latest = True
        return publication

    def _keep_listing(self, role: str, listed: RoleListing | None) -> None:
        if listed is not None:
            self._published[role] = listed

    def _listing_or_none(self, role: str) -> RoleListing | None:
        """The role's images as the engine lists them (one call); None when the engine cannot say (then ``latest``
        is taken to name nothing, as an image the engine cannot describe)."""
        try:
            return RoleListing(self.engine.images(self.repo(role)), f"{self.repo(role)}:latest")
        except (EngineError, ValueError, TypeError):
            return None

    def unpublish(self, publication: Publication) -> None:
        """Give ``latest`` back only if it still names this bake's image (a newer one stays)."""
        moved = publication.previous_latest
        latest = f"{self.repo(publication.spec.role)}:latest"
        self._published.pop(publication.spec.role, None)  # no retire follows it
        with self._latest_lock(publication.spec.role):
            if not moved or not self.engine.image_exists(latest):
                return
            current = self.engine.image_id(latest)
            if current not in moved:
                return
            if moved[current]:
                self.engine.tag(moved[current], latest)
            else:
                self.engine.untag(latest)
            self._moved_latest(publication.spec.role)

    def images(self, role: str) -> list[Image]:
        """Published versions; an image whose build record is still there is a build's, not available."""
        return self._images_of(role, RoleListing(self.engine.images(self.repo(role)), f"{self.repo(role)}:latest"))

    def _images_of(self, role: str, listed: RoleListing) -> list[Image]:
        repo = self.repo(role)
        unpublished = set(self._reserved(role))
        found: dict[str, Image] = {}
        for row in listed.rows:
            labels = row.get("Labels") or {}
            version = labels.get("kiln.version")
            if not version or labels.get("kiln.role") != role or version in unpublished:
                continue
            created = row.get("CreatedAt") or labels.get("org.opencontainers.image.created", "")
            found[version] = Image(
                id=row["Id"],
                role=role,
                version=version,
                provider=self.name,
                name=f"{repo}:{version}",
                created=str(created),
                base=labels.get("kiln.base-image", ""),
                inputs_hash=labels.get("kiln.inputs-hash", ""),
                build_id=labels.get("kiln.build-id", ""),
                nightly_run=labels.get("kiln.nightly-run", ""),
            )
        images = sorted(found.values(), key=lambda i: sort_key(i.version), reverse=True)
        for image in images:
            image.latest = image.id == listed.latest_id
            image.status = "latest" if image.latest else "available"
        return images

    def retire(self, role: str, keep: int) -> list[Image]:
        """Remove the versions past the newest ``keep`` (never ``latest``'s), each with one engine call.

        Right after a publish, from the listing it made (a version published since by another bake is missing from
        it: kept, not removed; ``latest`` as that publish left it). ``rmi`` of a version's name removes its tag, and
        the image with its last tag; an image a container still uses keeps its tag: the next bake retires it."""
        listed = self._published.pop(role, None)
        images = self._images_of(role, listed) if listed is not None else self.images(role)
        retired = [i for i in images[keep:] if not i.latest]
        for image in retired:
            self.engine.run("rmi", image.name, check=False)
        return retired

    # --- what a dead build left ---------------------------------------------------------
    def sweep(self, apply: bool) -> list[str]:
        """Everything a build record names whose build is over: its machine, its image, the record.

        Nothing without a record is touched (workloads, the sandbox's containers, dev instances).
        """
        found = []
        versions = self.shared_dir / "versions"
        for path in sorted(versions.glob("*/*")) if versions.is_dir() else []:
            if path.name.startswith("."):
                found += self._sweep_staged(path, apply)
                continue
            record = read_record(path)
            if record is None:
                continue
            claim: BuildClaim = record["claim"]
            if not claim.over():
                continue
            why = _why_over(claim)
            found += [f"{what} of build {claim.build_id}: {why}" for what in self._remove_build(path, record, apply)]
        return found

    def destroy_build(self, build_id: str) -> list[str]:
        """`invoke destroy --build-id`: what the records of ``build_id`` name (a kept failed bake)."""
        removed = []
        versions = self.shared_dir / "versions"
        for path in sorted(versions.glob("*/*")) if versions.is_dir() else []:
            record = read_record(path)
            if record is not None and record["claim"].build_id == build_id:
                removed += self._remove_build(path, record, apply=True)
        return removed

    def _remove_build(self, path: Path, record: dict[str, Any], apply: bool) -> list[str]:
        """The record's container (only that exact one), image (only if that build made it), and the record."""
        claim: BuildClaim = record["claim"]
        what = []
        for key in map(machine_record_key, MACHINES):  # the test machine first: it runs from the image
            name, wanted_id = record.get(key, ""), record.get(f"{key}_id", "")
            if not name:
                continue
            actual_id = self.engine.container_id(name)
            # no recorded id: the bake died inside `create`, whose container bears the build's unique name
            if actual_id and (not wanted_id or actual_id == wanted_id):
                what.append(f"container {name}")
                if apply:
                    self.engine.remove_container(actual_id)
        ref = record.get("image", "")
        if ref and self._built_by(ref, claim.build_id):
            what.append(f"image {ref}")
            if apply:
                self.engine.remove_image(ref)
        what.append(f"version reservation {record.get('role', path.parent.name)} {path.name}")
        if apply:
            path.unlink(missing_ok=True)
        return what

    def _sweep_staged(self, path: Path, apply: bool) -> list[str]:
        """A record being written when its writer died (never linked): an hour old is certainly stale."""
        try:
            stale = time.time() - path.stat().st_mtime > 3600
        except OSError:
            return []
        if not stale:
            return []
        if apply:
            path.unlink(missing_ok=True)
        return [f"unfinished record {path}: older than an hour"]


class RoleListing:
    """A role's images as one ``images`` call listed them, and the one its ``latest`` tag names."""

    def __init__(self, rows: list[dict], latest_name: str) -> None:
        self.rows = rows
        self.latest = next((row for row in rows if latest_name in (row.get("Names") or [])), None)
        self.latest_id = self.latest["Id"] if self.latest else ""


class EarlyListing(BackgroundRead):
    """A role's images listed while the new image is tested (engine time), for the publish after it.

    Publish decides under the ``latest`` lock from what ``latest`` names. The listing, made before that lock is
    taken, still says so if the role's latest-generation token (rewritten under the lock whenever a publish or an
    unpublish moves ``latest``) is the one read before the listing began; else publish lists again."""

    thread_name = "kiln-early-listing"
    fresh_seconds = None  # the token says whether it is still true, however long the test took

    def __init__(self, provider: LocalProvider, role: str) -> None:
        self.provider, self.role = provider, role
        super().__init__()

    def read(self) -> tuple[str, RoleListing | None]:
        generation = self.provider.latest_generation(self.role)
        return generation, self.provider._listing_or_none(self.role)

    def still_true(self) -> RoleListing | None:
        """The listing, if ``latest`` moved by no publish since (call under the lock; waits, bounded, for it)."""
        if not self.answered():
            return None
        generation, listed = self.value
        if listed is None:
            return None
        return listed if self.provider.latest_generation(self.role) == generation else None


#: the machines a bake launches, each recorded in its build record: a fresh one from the image, the build machine
MACHINES = ("test", "build")


def machine_record_key(machine: str) -> str:
    """The build record's key for a machine's container (``container`` for the build machine, as ever)."""
    return "container" if machine == "build" else f"{machine}_container"


def read_record(path: Path) -> dict[str, Any] | None:
    """A build record, its claim parsed; None when absent or not a record (e.g. an old empty reservation)."""
    try:
        data = json.loads(path.read_text())
        claim = BuildClaim.from_json(json.dumps(data["claim"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {**data, "claim": claim} if claim is not None else None


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Replace a record whole (a reader sees the old one or the new one, never half)."""
    data = {**record, "claim": json.loads(record["claim"].to_json())}
    staged = _staged_copy(path, json.dumps(data, sort_keys=True))
    os.replace(staged, path)


def _staged_copy(path: Path, content: str) -> Path:
    staged = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    with open(staged, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return staged


def _why_over(claim: BuildClaim) -> str:
    if claim.kept:
        return f"kept for debugging, deadline {claim.expires} passed"
    if claim.holder_alive() is False:
        return f"its holder (pid {claim.pid} on {claim.host}) is dead"
    return f"deadline {claim.expires} passed"


def _stale_lock_holder(holder: BuildClaim) -> str:
    """A holder named in a lock we could take: it ended without releasing (killed), or was broken."""
    alive = holder.holder_alive()
    state = "dead" if alive is False else "expired" if holder.expired() else "ended without releasing"
    return f"{holder.build_id} (pid {holder.pid} on {holder.host}, {state})"


def _lock_holder(handle: Any) -> BuildClaim | None:
    handle.seek(0)
    return BuildClaim.from_json(handle.read())


def _same_file(path: Path, handle: Any) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _unlink_if_same(path: Path, handle: Any) -> None:
    if _same_file(path, handle):
        path.unlink(missing_ok=True)
