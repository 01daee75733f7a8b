"""``--sandbox``: the unchanged AWS provider against moto, with local containers as the data plane.

* The control plane is moto: an embedded ``ThreadedMotoServer`` on 127.0.0.1 (a free
  port), or the server ``AWS_ENDPOINT_URL`` names (state that outlives one command:
  ``moto_server -H 127.0.0.1 -p 5000`` and ``export AWS_ENDPOINT_URL=http://127.0.0.1:5000``).
  Credentials are always dummies, so the sandbox can never touch a real account.
* The data plane is :class:`SandboxDataPlane`: for each instance moto launches it starts a
  container from ``localhost/kiln-base/debian:bookworm`` (or from the local image
  committed for the AMI, when the AMI was baked by kiln in the sandbox), reads the
  instance's key pair and user data from moto the way cloud-init reads them from the
  metadata service, installs the key for root and the default user (``ssh.user``, with
  passwordless sudo), and publishes SSH on 127.0.0.1:<free port>, which the provider
  gets as the explicit SSH address. ``create_image`` commits the container to
  ``<image prefix>-sandbox/ami:<ami-id>`` (``localhost/kiln-sandbox/ami`` unless
  ``KILN_IMAGE_PREFIX`` says otherwise); copies tag that image; terminate and
  deregister remove them.
* Ownership: every container and image the data plane makes is labelled with its owner,
  the moto server (its endpoint, and the process an embedded one lives in). Moto's state
  dies with its server, so once that owner is provably gone (the process died on this host,
  the endpoint no longer answers, or it no longer knows the instance or AMI) nothing can
  use them: ``invoke sweep --provider aws --sandbox --apply`` removes them. Nothing else is
  touched (the local provider's sweep leaves sandbox containers alone). A reboot (the ``reboot`` step) stops the container, whose
  systemd exits: the ``rebooting`` hook starts it again, where EC2 reboots in place.
* Host keys: the data plane generates the instance's host key and "prints" it the way
  cloud-init does: an ``after-call`` hook on the provider's session appends the
  fingerprint block to moto's canned console output. The provider then pins the key
  exactly as on real AWS (get_console_output), with no sandbox branch of its own.
"""

from __future__ import annotations

import atexit
import base64
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import boto3
import structlog
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from kiln.controller.engine import BASE_IMAGE, Engine, EngineError, image_prefix
from kiln.controller.ownership import BuildClaim
from kiln.controller.providers.aws import AwsProvider
from kiln.controller.providers.aws.cloud_init import cloud_config_parts, console_block
from kiln.controller.providers.aws.settings import AwsSettings
from kiln.controller.providers.aws.tags import BUILD_ID, error_code, tags_of
from kiln.controller.providers.base import ProviderError
from kiln.controller.providers.local import ensure_kiln_base
from kiln.controller.ssh import KeyPair

log = structlog.get_logger("kiln.sandbox")

ENDPOINT = "kiln.sandbox.endpoint"  # the moto server that owns a container or image...
OWNER_HOST, OWNER_PID, OWNER_STARTED = "kiln.sandbox.owner-host", "kiln.sandbox.owner-pid", "kiln.sandbox.owner-started"
# ...and, for an embedded server, the process it lived in (pid 0: an external server, owned by its endpoint only)
INSTANCE = "kiln.sandbox.instance"
AMI = "kiln.sandbox.ami"
FOREVER = "9999-12-31T00:00:00+00:00"  # the owner's liveness, never a deadline, ends its claim
CREDENTIALS = {"aws_access_key_id": "kiln-sandbox", "aws_secret_access_key": "kiln-sandbox"}
MOTO_ENV = {"MOTO_ENABLE_AMI_VALIDATION": "true", "MOTO_ENABLE_KEYPAIR_VALIDATION": "true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def root_authorized_keys(keys: list[str], user: str) -> bytes:
    """root's authorized_keys as cloud-init writes it (``disable_root``): with a default user, each key
    only says to log in as that user, so root's SSH login is refused as on a real instance."""
    if user == "root":
        return ("\n".join(keys) + "\n").encode()
    refusal = (
        "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user "
        f'\\"{user}\\" rather than the user \\"root\\".\';exit 142" '
    )
    return "".join(f"{refusal}{key}\n" for key in keys).encode()


def container_name(instance_id: str) -> str:
    return f"kiln-sandbox-{instance_id}"


def local_images() -> str:
    """The repository of the AMIs' local images, in kiln's image namespace (a test's, under KILN_IMAGE_PREFIX)."""
    return image_prefix() + "-sandbox/ami"


def __getattr__(name: str) -> str:
    if name == "LOCAL_IMAGES":  # the former constant (benchmarks import it): now under kiln's image prefix
        return local_images()
    raise AttributeError(name)


class Sandbox:
    """The moto endpoint: ``AWS_ENDPOINT_URL`` when set, else an embedded server on 127.0.0.1."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.server: Any = None
        url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL", "")
        if not url:
            from moto.server import ThreadedMotoServer

            for key, value in MOTO_ENV.items():
                os.environ.setdefault(key, value)
            logging.getLogger("werkzeug").disabled = True  # one line per request, tracebacks for moto's gaps
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            host, port = self.server.get_host_and_port()
            url = f"http://{host}:{port}"
        self.endpoint_url = url

    @property
    def embedded(self) -> bool:
        return self.server is not None

    def session(self, region: str) -> boto3.Session:
        return boto3.Session(region_name=region, **CREDENTIALS)

    def owner_labels(self) -> dict[str, str]:
        """Who owns what the data plane makes: this endpoint, run by this process when embedded.

        Plain values, one a label: an engine's LABEL instruction (commit) keeps JSON's escapes."""
        owner = BuildClaim(build_id=self.endpoint_url, expires=FOREVER)
        pid = owner.pid if self.embedded else 0  # an external server outlives this process
        return {
            ENDPOINT: self.endpoint_url,
            OWNER_HOST: owner.host,
            OWNER_PID: str(pid),
            OWNER_STARTED: owner.pid_started if pid else "",
        }

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class SandboxDataPlane:
    """Local containers standing in for the instances moto launches (see the module docstring)."""

    def __init__(
        self, sandbox: Sandbox, engine: Engine | None = None, default_user: str = "ec2-user", region: str = "us-east-1"
    ) -> None:
        self.sandbox = sandbox
        self.engine = engine or Engine()
        self.default_user = default_user
        self.session = sandbox.session(region)  # its own: the data plane's reads are not the provider's calls
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._console: dict[str, str] = {}
        self.containers: dict[str, str] = {}  # instance id -> container name
        self.images: set[str] = set()  # local image refs made here

    def _ec2(self, region: str) -> Any:
        with self._lock:
            if region not in self._clients:
                self._clients[region] = self.session.client(
                    "ec2", region_name=region, endpoint_url=self.sandbox.endpoint_url
                )
            return self._clients[region]

    # --- the hooks the provider calls ----------------------------------------------------
    def source_cidrs(self, address: str) -> list[str]:
        return ["127.0.0.1/32"]

    def launched(self, region: str, instance_ids: list[str]) -> None:
        for instance_id in instance_ids:
            self._boot(region, instance_id)

    def address(self, region: str, instance_id: str) -> tuple[str, int] | None:
        name = self.containers.get(instance_id, container_name(instance_id))
        try:
            return "127.0.0.1", self.engine.port(name, 22)
        except (EngineError, IndexError, ValueError):
            return None

    def image_created(self, region: str, instance_id: str, image_id: str) -> None:
        name = self.containers.get(instance_id, container_name(instance_id))
        if not self.engine.container_exists(name):
            log.warning("no container for the instance; the AMI has no local image", instance=instance_id)
            return
        ref = f"{local_images()}:{image_id}"
        self.engine.commit(
            name,
            ref,
            {
                AMI: image_id,
                "kiln.sandbox.region": region,
                INSTANCE: "",
                "kiln.build-id": "",
                **self.sandbox.owner_labels(),
            },
        )
        self.images.add(ref)
        log.info("sandbox: AMI committed as a local image", image=image_id, ref=ref)

    def image_copied(self, source_region: str, source_id: str, region: str, image_id: str) -> None:
        source = f"{local_images()}:{source_id}"
        if self.engine.image_exists(source):
            self.engine.tag(source, f"{local_images()}:{image_id}")
            self.images.add(f"{local_images()}:{image_id}")

    def image_removed(self, region: str, image_id: str) -> None:
        ref = f"{local_images()}:{image_id}"
        self.images.discard(ref)
        if self.engine.image_exists(ref):
            self.engine.untag(ref)
            self.engine.run("image", "prune", "-f", "--filter", f"label={AMI}", check=False)

    def terminated(self, region: str, instance_ids: list[str]) -> None:
        for instance_id in instance_ids:
            self.engine.remove_container(self.containers.pop(instance_id, container_name(instance_id)))
            self._console.pop(instance_id, None)

    def rebooting(self, region: str, instance_id: str, timeout: float) -> None:
        """EC2 reboots in place; a container's systemd exits instead: the engine starts it again."""
        name = self.containers.get(instance_id, container_name(instance_id))
        try:
            status = self.engine.restart_after_reboot(name, timeout)
        except EngineError as exc:
            raise ProviderError(f"{instance_id}: {exc}") from exc
        log.info(
            "sandbox: instance container was down for its reboot; started again",
            instance=instance_id,
            container=name,
            status=status,
        )

    # --- the console (installed on the provider's session) -------------------------------
    def install_console(self, session: boto3.Session) -> None:
        """Append cloud-init's host key block to moto's canned console output."""

        def on_console(parsed: dict[str, Any], **kwargs: Any) -> None:
            text = self._console.get(str(parsed.get("InstanceId", "")))
            if text:
                parsed["Output"] = (parsed.get("Output") or "") + "\n" + text

        session.events.register("after-call.ec2.GetConsoleOutput", on_console)

    # --- what cloud-init would do ---------------------------------------------------------
    def local_image(self, ami: str) -> str:
        ref = f"{local_images()}:{ami}"
        if self.engine.image_exists(ref):
            return ref
        ensure_kiln_base(self.engine)  # built when missing or stale, once however many bakes ask
        return BASE_IMAGE

    def authorized_keys(self, region: str, instance: dict[str, Any]) -> list[str]:
        """The key pair's public key (EC2 serves it as ``<type> <key> <key name>``) and cloud-config's."""
        ec2 = self._ec2(region)
        keys = []
        if instance.get("KeyName"):
            pair = ec2.describe_key_pairs(KeyNames=[instance["KeyName"]], IncludePublicKey=True)["KeyPairs"][0]
            kind, blob = pair["PublicKey"].split()[:2]
            keys.append(f"{kind} {blob} {instance['KeyName']}")
        attr = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        raw = (attr.get("UserData") or {}).get("Value")
        if raw:
            from ruamel.yaml import YAML

            for part in cloud_config_parts(base64.b64decode(raw).decode(errors="replace")):
                try:
                    config = YAML(typ="safe").load(part) or {}
                except Exception:  # cloud-init skips a broken part too
                    continue
                if isinstance(config, dict):
                    keys += [str(k) for k in config.get("ssh_authorized_keys") or []]
        return keys

    def _boot(self, region: str, instance_id: str) -> None:
        ec2 = self._ec2(region)
        instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        tags = tags_of(instance)
        keys = self.authorized_keys(region, instance)
        image = self.local_image(instance["ImageId"])
        name = container_name(instance_id)
        hostname = f"ip-{instance.get('PrivateIpAddress', '10-0-0-1').replace('.', '-')}"
        host_key = KeyPair.generate(comment=f"root@{hostname}")
        labels = {
            INSTANCE: instance_id,
            "kiln.sandbox.region": region,
            "kiln.build-id": tags.get(BUILD_ID, ""),
            **self.sandbox.owner_labels(),
        }
        for attempt in range(3):
            try:
                self.engine.create_machine(image, name, labels, ssh_port=free_port())
                break
            except EngineError as exc:
                self.engine.remove_container(name)
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
        self.containers[instance_id] = name
        authorized = ("\n".join(keys) + "\n").encode()
        user = self.default_user
        files: dict[str, tuple[bytes | None, int]] = {
            "/root/.ssh": (None, 0o700),
            "/root/.ssh/authorized_keys": (root_authorized_keys(keys, user), 0o600),
            "/etc/ssh/ssh_host_ed25519_key": (host_key.private_openssh, 0o600),
            "/etc/ssh/ssh_host_ed25519_key.pub": (host_key.public_openssh.encode() + b"\n", 0o644),
        }
        if user != "root":
            files["/etc/sudoers.d/90-cloud-init-users"] = (f"{user} ALL=(ALL) NOPASSWD:ALL\n".encode(), 0o440)
        self.engine.copy_in(name, files)
        self.engine.start(name)
        if user != "root":  # cloud-init's default user: created at first boot, the key installed for it
            home = f"/home/{user}"
            self.engine.exec(
                name,
                "sh",
                "-c",
                (
                    f"id -u {user} >/dev/null 2>&1 || useradd -m -s /bin/bash {user}; "
                    f"install -d -m 700 -o {user} -g {user} {home}/.ssh; "
                    f"cat > {home}/.ssh/authorized_keys; chown {user}:{user} {home}/.ssh/authorized_keys; "
                    f"chmod 600 {home}/.ssh/authorized_keys"
                ),
                input=authorized,
            )
        self._console[instance_id] = console_block([host_key.public_openssh], hostname)
        log.info("sandbox: instance booted as a container", instance=instance_id, container=name, image=image)

    # --- what outlived its moto server ----------------------------------------------------
    def sweep(self, apply: bool) -> list[str]:
        """Containers and AMI images whose owner (the moto server) is provably gone; removed when ``apply``.

        An image is removed only when its server is gone (a live server's AMIs are removed by
        deregistering them); a container also when its server says the instance is terminated
        or unknown. Anything without an owner label, or owned elsewhere, is not kiln's to judge."""
        found = []
        for row in self.engine.containers(INSTANCE):
            labels = row.get("Labels") or {}
            instance_id = labels.get(INSTANCE, "")
            reason = self._owner_gone(labels) or self._instance_gone(labels, instance_id)
            if not instance_id or not reason:
                continue
            name = (row.get("Names") or [row["Id"]])[0]
            found.append(f"sandbox container {name} of instance {instance_id} ({reason})")
            if apply:
                self.engine.remove_container(name)
        for row in self.engine.images(local_images()):
            labels = row.get("Labels") or {}
            if not labels.get(AMI) or not (reason := self._owner_gone(labels)):
                continue
            for ref in row.get("Names") or []:
                found.append(f"sandbox image {ref} ({reason})")
                if apply:
                    self.engine.remove_image(ref)
        return found

    def _owner_gone(self, labels: dict[str, str]) -> str:
        """Why the moto server that owned this is gone, or "" when it is not provably gone."""
        owner = owner_of(labels)
        if owner is None:
            return ""
        if owner.pid:  # an embedded server: it lived and died with its process
            alive = owner.holder_alive()
            return f"its embedded moto server died with process {owner.pid}" if alive is False else ""
        return "" if self._answers(owner.build_id) else f"nothing answers at {owner.build_id}, its moto server"

    def _instance_gone(self, labels: dict[str, str], instance_id: str) -> str:
        """A live external server that says the instance is terminated or unknown (it restarted)."""
        owner = owner_of(labels)
        if owner is None or owner.pid or not instance_id:
            return ""
        region = labels.get("kiln.sandbox.region", "us-east-1")
        try:
            rows = self._probe(owner.build_id, region).describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as exc:
            if error_code(exc).startswith("InvalidInstanceID"):
                return f"{owner.build_id} does not know instance {instance_id} (the server restarted)"
            return ""
        except BotoCoreError:
            return ""
        state = rows[0]["Instances"][0]["State"]["Name"] if rows else "unknown"
        return f"instance {instance_id} is {state} at {owner.build_id}" if state in ("terminated", "unknown") else ""

    def _answers(self, endpoint: str) -> bool:
        try:
            self._probe(endpoint, "us-east-1").describe_regions()
        except BotoCoreError:  # connection refused or timed out: moto's state went with it
            return False
        except ClientError:
            return True
        return True

    def _probe(self, endpoint: str, region: str) -> Any:
        config = BotoConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
        return self.session.client("ec2", region_name=region, endpoint_url=endpoint, config=config)

    def cleanup(self) -> None:
        """The embedded server's state dies with this process: so do its containers and images."""
        for instance_id in list(self.containers):
            self.engine.remove_container(self.containers.pop(instance_id))
        for ref in list(self.images):
            self.engine.remove_image(ref)
            self.images.discard(ref)


def owner_of(labels: dict[str, str]) -> BuildClaim | None:
    """The owner a container's or image's labels name (None: no owner labels, so no proof of anything)."""
    if not labels.get(ENDPOINT) or not labels.get(OWNER_PID, "").isdigit():
        return None
    return BuildClaim(
        build_id=labels[ENDPOINT],
        expires=FOREVER,
        host=labels.get(OWNER_HOST, ""),
        pid=int(labels[OWNER_PID]),
        pid_started=labels.get(OWNER_STARTED, ""),
    )


def make_sandbox_provider(
    settings: AwsSettings, state_dir: Path, engine: Engine | None = None, endpoint_url: str | None = None
) -> AwsProvider:
    sandbox = Sandbox(endpoint_url)
    session = sandbox.session(settings.build_region)
    plane = SandboxDataPlane(sandbox, engine, default_user=settings.ssh.user, region=settings.build_region)
    plane.install_console(session)
    provider = AwsProvider(
        settings, session=session, state_dir=state_dir, data_plane=plane, endpoint_url=sandbox.endpoint_url
    )
    provider.sandbox = sandbox
    if sandbox.embedded:
        atexit.register(plane.cleanup)
    log.info("sandbox", endpoint=sandbox.endpoint_url, embedded=sandbox.embedded, regions=settings.regions)
    if settings.architectures != ["x86_64"]:
        log.info(
            "sandbox: every architecture's instances run as local x86_64 containers (moto keeps each AMI's "
            "Architecture; the machines themselves are this host's)",
            architectures=settings.architectures,
        )
    return provider


def sandbox_client(service: str, region: str, endpoint_url: str) -> Any:
    """A client on the sandbox endpoint with its dummy credentials (tests, benchmarks)."""
    return boto3.Session(region_name=region, **CREDENTIALS).client(service, endpoint_url=endpoint_url)
