"""The local container engine (podman, or the docker CLI) as a few typed calls.

Everything the local provider and the AWS sandbox need from a container engine
goes through :class:`Engine`, so engine quirks (runtime, ulimits) live in one place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger("kiln.engine")

BASE_IMAGE = "localhost/kiln-base/debian:bookworm"
DEFAULT_IMAGE_PREFIX = "localhost/kiln"


def image_prefix(configured: str = "") -> str:
    """Where kiln's own images live: ``<prefix>/<role>:<version>`` (and the sandbox's ``<prefix>-sandbox/ami``).

    ``KILN_IMAGE_PREFIX`` wins over kiln.yaml's ``providers.local.image_prefix``, so a test
    session bakes into a namespace of its own and never touches a user's images.
    """
    return (os.environ.get("KILN_IMAGE_PREFIX", "") or configured or DEFAULT_IMAGE_PREFIX).rstrip("/")


BASE_PACKAGES = "openssh-server,python3,sudo,systemd,systemd-sysv,ca-certificates,iproute2"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_BUILD_TIMEOUT = 1800  # debootstrap over a slow mirror; a hung one must still end

# A fresh copy of an image must get its own SSH host keys; Debian only creates them
# when the package is installed, so the base image carries this oneshot unit.
# ssh-keygen -A makes each missing type (rsa, ecdsa, ed25519) and keeps the others, so a
# build machine with its pinned ed25519 key still gets the rsa and ecdsa keys a stock image has.
HOSTKEYS_UNIT_PATH = "/etc/systemd/system/kiln-ssh-hostkeys.service"
HOSTKEYS_UNIT = """\
[Unit]
Description=kiln: generate missing SSH host keys
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


#: the label on kiln's base image naming the recipe it was built from (:func:`base_recipe`)
BASE_RECIPE_LABEL = "kiln.base-recipe"


def base_recipe() -> str:
    """What kiln's base image is made of, hashed: a base whose label differs (or an older kiln's, with none)
    is stale and built again, never silently reused (kiln's launch needs what the recipe puts there, e.g. sudo
    for the build user)."""
    recipe = {"suite": "bookworm", "variant": "minbase", "packages": BASE_PACKAGES, "hostkeys_unit": HOSTKEYS_UNIT}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


#: how podman and docker say an image does not exist (anything else is an engine failure)
NOT_FOUND = ("image not known", "no such image", "no such object")


def labels_of(inspected: dict) -> dict[str, str]:
    """An image's labels as ``image inspect`` shows them (podman at the top, docker under Config)."""
    return inspected.get("Labels") or (inspected.get("Config") or {}).get("Labels") or {}


def base_staleness_of(inspected: dict | None) -> str:
    """Why an inspected image is not kiln's base of today's recipe ("missing", "stale: ..."); "" when it is."""
    if inspected is None:
        return "missing"
    built_from = labels_of(inspected).get(BASE_RECIPE_LABEL, "")
    if built_from == base_recipe():
        return ""
    if not built_from:
        return "stale: built by an older kiln (no recipe label)"
    return f"stale: built from recipe {built_from}, kiln's is now {base_recipe()}"


class EngineError(RuntimeError):
    """The container engine refused or failed a command."""


def run_to_completion(argv: list[str], input: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
    """Run an engine command in its own session, and let it finish even when we are interrupted.

    A terminal's Ctrl-C goes to the whole process group; killing ``podman create`` halfway
    could leave a container the undo cannot see. So the engine runs apart from our group,
    and if a signal interrupts the wait, the command still completes (briefly) before the
    interruption goes on to unwind the bake, which then removes whatever it created.
    """
    # Signals wait while the child is being started, so an interruption always finds it known.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            return 124, stdout, stderr + f"\ntimed out after {timeout:.0f}s".encode()
        except BaseException:
            try:
                proc.communicate(timeout=60)
            except BaseException:  # noqa: B036 - a second signal: give up on it
                proc.kill()
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return proc.returncode, stdout, stderr


def _detect_runtime() -> str | None:
    """crun cannot run on hosts with hybrid cgroups ("cgroups in hybrid mode not supported"); runc can."""
    hybrid = Path("/sys/fs/cgroup/unified").is_dir() or not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    if hybrid and shutil.which("runc"):
        return "runc"
    return None


def _ulimit_args() -> list[str]:
    """Ask for limits within this host's hard limits (podman's defaults may exceed them)."""
    args = []
    for name, rlimit, cap in (
        ("nofile", resource.RLIMIT_NOFILE, 65536),
        ("nproc", resource.RLIMIT_NPROC, 32768),
    ):
        hard = resource.getrlimit(rlimit)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        args += ["--ulimit", f"{name}={value}:{value}"]
    return args


@dataclass
class Engine:
    """A container engine CLI: ``podman`` (preferred) or ``docker``."""

    command: str = field(default_factory=lambda: os.environ.get("KILN_ENGINE", "") or _default_engine())
    runtime: str | None = field(default_factory=lambda: os.environ.get("KILN_RUNTIME") or _detect_runtime())

    def _global_args(self) -> list[str]:
        if self.runtime and Path(self.command).name == "podman":
            return ["--runtime", self.runtime]
        return []

    def run(self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 600) -> str:
        argv = [self.command, *self._global_args(), *args]
        rc, stdout, stderr = run_to_completion(argv, input, timeout)
        if check and rc != 0:
            raise EngineError(f"{' '.join(argv[:4])}... exited {rc}: {stderr.decode(errors='replace').strip()[-800:]}")
        return stdout.decode(errors="replace")

    # --- images -------------------------------------------------------------
    def succeeds(self, *args: str, timeout: float = 60) -> bool:
        """Whether an engine command exits 0 (bounded, like every engine call)."""
        rc, _, _ = run_to_completion([self.command, *self._global_args(), *args], None, timeout)
        return rc == 0

    def image_exists(self, ref: str) -> bool:
        """Whether image ``ref`` exists. An engine that cannot answer (a timeout, a busy storage lock)
        raises instead: "missing" would make a caller build or replace what is there."""
        return self.inspect_image(ref) is not None

    def inspect_image(self, ref: str) -> dict | None:
        """Image ``ref`` as the engine describes it (one call); None when there is no such image. An engine that
        cannot answer raises (EngineError), as :meth:`image_exists` does."""
        rc, stdout, stderr = run_to_completion([self.command, *self._global_args(), "image", "inspect", ref], None, 60)
        if rc == 0:
            return json.loads(stdout)[0]
        said = stderr.decode(errors="replace")
        if any(phrase in said.lower() for phrase in NOT_FOUND):
            return None
        raise EngineError(f"{self.command} could not say whether image {ref} exists (exit {rc}): {said.strip()[-500:]}")

    def image_labels(self, ref: str) -> dict[str, str] | None:
        """The labels of image ``ref``; None when there is no such image."""
        try:
            inspected = json.loads(self.run("image", "inspect", ref, timeout=60))[0]
        except (EngineError, ValueError, IndexError):
            return None
        return labels_of(inspected)

    def base_staleness(self, ref: str) -> str:
        """Why image ``ref`` is not kiln's base of today's recipe ("missing", "stale: ..."); "" when it is.

        An engine that cannot answer raises (EngineError) rather than call the image missing or stale."""
        return base_staleness_of(self.inspect_image(ref))

    def image_inspect(self, ref: str) -> dict:
        return json.loads(self.run("image", "inspect", ref))[0]

    def image_id(self, ref: str) -> str:
        return self.image_inspect(ref)["Id"]

    def images(self, reference: str) -> list[dict]:
        """Images matching ``reference`` (e.g. ``localhost/kiln/web``), with labels."""
        out = self.run("images", "--format", "json", "--filter", f"reference={reference}")
        rows = json.loads(out or "[]")
        return rows

    def tag(self, ref: str, new: str) -> None:
        self.run("tag", ref, new)

    def untag(self, ref: str) -> None:
        """Remove the name ``ref`` only (podman's ``untag IMAGE`` alone removes every name of the image)."""
        if Path(self.command).name == "podman":
            self.run("untag", ref, ref, check=False)
        else:
            self.run("rmi", ref, check=False)

    def remove_image(self, ref: str) -> None:
        self.run("rmi", "-f", ref, check=False)

    # --- containers ---------------------------------------------------------
    def create_machine(
        self,
        image: str,
        name: str,
        labels: dict[str, str],
        ssh_port: int | None = None,
        publish: list[str] | None = None,
    ) -> str:
        """Create (not start) a container that boots systemd as PID 1."""
        args = ["create", "--name", name, "--hostname", name[:63]]
        args += _ulimit_args()
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if ssh_port is not None:
            args += ["-p", f"127.0.0.1:{ssh_port}:22"]
        for spec in publish or []:
            args += ["-p", spec]
        if Path(self.command).name == "podman":
            args += ["--systemd", "always"]
        else:  # docker needs the cgroup and tmpfs set up by hand for systemd
            args += ["--privileged", "--tmpfs", "/run", "--tmpfs", "/run/lock", "--cgroupns", "host"]
        args += ["--stop-signal", "SIGRTMIN+3", image, "/sbin/init"]
        return self.run(*args).strip()

    def copy_in(self, container: str, files: dict[str, tuple[bytes | None, int]]) -> None:
        """Place files (path -> (content, mode)) into a created container, before boot."""
        self.run("cp", "-", f"{container}:/", input=tar_of(files))

    def start(self, container: str) -> None:
        self.run("start", container)

    def exec(self, container: str, *cmd: str, input: bytes | None = None, check: bool = True) -> str:
        return self.run("exec", "-i" if input else "-t=false", container, *cmd, input=input, check=check)

    def exec_status(
        self, container: str, *cmd: str, input: bytes | None = None, timeout: float = 60
    ) -> tuple[int, str, str]:
        """Run ``cmd`` in ``container``: its exit status, stdout and stderr (bounded by ``timeout``)."""
        argv = [self.command, *self._global_args(), "exec", "-i" if input else "-t=false", container, *cmd]
        rc, stdout, stderr = run_to_completion(argv, input, timeout)
        return rc, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    def remove_container(self, container: str) -> None:
        """Remove ``container`` (gone already: nothing to do); one engine call unless the engine refuses."""
        if self.succeeds("rm", "-f", "-t", "2", container, timeout=120):
            return
        if self.status(container) == "paused":  # an engine that cannot remove a frozen container
            self.run("unpause", container, check=False, timeout=60)
            self.run("rm", "-f", "-t", "2", container, check=False, timeout=120)

    def container_id(self, container: str) -> str:
        """The full id of ``container`` (a name or an id); empty when there is none."""
        try:
            return self.run("container", "inspect", "--format", "{{.Id}}", container, timeout=60).strip()
        except EngineError:
            return ""

    def container_exists(self, container: str) -> bool:
        return bool(self.status(container))

    def containers(self, label: str) -> list[dict]:
        out = self.run("ps", "-a", "--format", "json", "--filter", f"label={label}")
        return json.loads(out or "[]")

    def commit(self, container: str, ref: str, labels: dict[str, str]) -> str:
        args = ["commit"]
        if Path(self.command).name == "podman":
            args += ["--pause=true"]
        for key, value in labels.items():
            args += ["--change", f"LABEL {key}={json.dumps(value)}"]
        args += ["--change", 'CMD ["/sbin/init"]', "--change", "STOPSIGNAL SIGRTMIN+3"]
        args += [container, ref]
        return self.run(*args, timeout=900).strip()

    def status(self, container: str) -> str:
        """``running``, ``exited``, ...; empty when the container does not exist."""
        try:
            return self.run("container", "inspect", "--format", "{{.State.Status}}", container, timeout=60).strip()
        except EngineError:
            return ""

    def restart_after_reboot(self, container: str, timeout: float) -> str:
        """systemd as PID 1 exits when told to reboot: wait for the stop, then start it again.

        The port mapping, host key and authorised keys live in the container, so the
        address and a pinned host key hold; /run and /tmp are fresh tmpfs, as after a boot.
        Returns the status it was found in; raises EngineError if it never went down or is gone.
        """
        deadline = time.monotonic() + timeout
        while (status := self.status(container)) in ("running", "stopping", "paused"):
            if time.monotonic() > deadline:
                raise EngineError(f"container {container} did not go down within {timeout:.0f}s of its reboot")
            time.sleep(0.2)
        if status in ("", "removing"):
            raise EngineError(f"container {container} is gone after its reboot")
        self.start(container)
        return status

    def port(self, container: str, private: int) -> int:
        out = self.run("port", container, f"{private}/tcp").strip().splitlines()[0]
        return int(out.rsplit(":", 1)[1])

    # --- base image ---------------------------------------------------------
    def build_base_image(self, ref: str = BASE_IMAGE, mirror: str = DEBIAN_MIRROR) -> str:
        """debootstrap a minimal bookworm that boots systemd with sshd, and import it."""
        if not shutil.which("debootstrap"):
            raise EngineError("debootstrap is not installed (apt-get install debootstrap)")
        with tempfile.TemporaryDirectory(prefix="kiln-rootfs-") as root:
            log.info("base image: debootstrap", image=ref, mirror=mirror)
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", root, mirror],
                check=True,
                capture_output=True,
                timeout=BASE_BUILD_TIMEOUT,
            )
            unit = Path(root, HOSTKEYS_UNIT_PATH.lstrip("/"))
            unit.write_text(HOSTKEYS_UNIT)
            wants = Path(root, "etc/systemd/system/multi-user.target.wants")
            wants.mkdir(parents=True, exist_ok=True)
            (wants / "kiln-ssh-hostkeys.service").symlink_to("/etc/systemd/system/kiln-ssh-hostkeys.service")
            for key in Path(root, "etc/ssh").glob("ssh_host_*"):
                key.unlink()
            Path(root, "etc/machine-id").write_text("")
            # apt's cache is not part of an image
            shutil.rmtree(Path(root, "var/cache/apt/archives"), ignore_errors=True)
            Path(root, "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            log.info("base image: import", image=ref)
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            proc = subprocess.run(
                [
                    self.command,
                    "import",
                    "--change",
                    'CMD ["/sbin/init"]',
                    "--change",
                    f"LABEL {BASE_RECIPE_LABEL}={base_recipe()}",
                    "-",
                    ref,
                ],
                stdin=tar.stdout,
                capture_output=True,
                timeout=BASE_BUILD_TIMEOUT,
            )
            tar.wait(timeout=60)
            if proc.returncode != 0:
                raise EngineError(f"import failed: {proc.stderr.decode(errors='replace')}")
        return ref


def _default_engine() -> str:
    for name in ("podman", "docker"):
        if shutil.which(name):
            return name
    return "podman"


def tar_of(files: dict[str, tuple[bytes | None, int]]) -> bytes:
    """A tar archive of root-owned entries: path -> (content, mode); None content is a directory.

    Parents not listed are left to the extractor, so existing directories keep their modes.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode = mode
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        end = tar.offset + 2 * tarfile.BLOCKSIZE
    # without the record's zero padding after the end-of-archive blocks: `podman cp -` into a running
    # container stops reading there, and the rest of a 10 KiB record then fails it ("closed pipe")
    return buf.getvalue()[:end]
