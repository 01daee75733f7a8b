"""``providers.aws`` of kiln.yaml: every setting with its default, checked before anything is launched.

A bad value is an :class:`InvalidInput` (exit status 2) pinned to its place in kiln.yaml,
reported with every other problem at once. docs/aws.md documents each setting.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.schema import did_you_mean
from controller.model import Diagnostic, InvalidInput

ADDRESS_KINDS = ("public_ip", "private_ip", "public_dns", "private_dns")
HOST_KEY_POLICIES = ("warn", "refuse")
RETRY_MODES = ("standard", "adaptive")
VOLUME_TYPES = ("gp3", "gp2", "io1", "io2", "st1", "sc1", "standard")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
ACCOUNT_RE = re.compile(r"^\d{12}$")
ORG_ARN_RE = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:organization/o-[a-z0-9]{10,32}$")
OU_ARN_RE = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$")
DEVICE_RE = re.compile(r"^/dev/(sd[b-z]|xvd[b-z]|xvd[a-z][a-z]?|sd[a-z][a-z]?)$")
EPHEMERAL_RE = re.compile(r"^ephemeral([0-9]|1[0-9]|2[0-3])$")
DEFAULT_ARCH = "x86_64"
ARCHITECTURES = ("x86_64", "arm64")
#: instance types when kiln.yaml names none: small burstable ones (Graviton for arm64)
DEFAULT_INSTANCE_TYPES = {"x86_64": ["t3.small"], "arm64": ["t4g.small"]}

TOP_KEYS = (
    "regions",
    "profile",
    "instance_types",
    "instance_type",
    "subnet_id",
    "associate_public_ip",
    "iam_instance_profile",
    "root_volume",
    "extra_volumes",
    "ephemeral_volumes",
    "spot",
    "ssh",
    "share",
    "kms_keys",
    "waiter",
    "retention",
    "retries",
    "tags",
    "user_data",
    "ena_support",
    "lock_lease",
    "virtualization_type",
    "root_device_type",
    "architectures",
    "publish",  # the new image's consumers: checked and used by controller/consumers
)
SSH_KEYS = ("address", "user", "cidrs", "security_group_id", "host", "port", "host_key_policy", "console_timeout")
SHARE_KEYS = ("accounts", "org_arns", "ou_arns", "public", "allow_public")
VOLUME_KEYS = (
    "device",
    "size",
    "type",
    "iops",
    "throughput",
    "encrypted",
    "kms_key_id",
    "in_image",
    "delete_on_termination",
)
EPHEMERAL_KEYS = ("device", "name")
WAITER_KEYS = ("delay", "max_attempts")
RETRIES_KEYS = ("mode", "max_attempts")
SPOT_KEYS = ("max_price",)


@dataclass
class Volume:
    device: str = ""  # "" for the root volume: the base AMI's root device
    size: int | None = None  # GiB; None: the snapshot's size
    type: str = "gp3"
    iops: int | None = None
    throughput: int | None = None
    encrypted: bool = False
    kms_key_id: str = ""
    in_image: bool = True  # extra volumes: part of the AMI's block device mappings
    delete_on_termination: bool = True

    def ebs(self, for_launch: bool = True) -> dict[str, Any]:
        ebs: dict[str, Any] = {"VolumeType": self.type, "DeleteOnTermination": self.delete_on_termination}
        if self.size:
            ebs["VolumeSize"] = self.size
        if self.iops:
            ebs["Iops"] = self.iops
        if self.throughput:
            ebs["Throughput"] = self.throughput
        if self.encrypted:
            ebs["Encrypted"] = True
            if self.kms_key_id:
                ebs["KmsKeyId"] = self.kms_key_id
        return ebs


@dataclass
class SSHSettings:
    address: str = "public_ip"
    user: str = "ec2-user"
    cidrs: list[str] = field(default_factory=list)  # empty: the controller's own address /32
    security_group_id: str = ""  # an existing group: used as is, never deleted
    host: str = ""  # explicit address (a tunnel, a bastion's forwarded port)
    port: int = 22
    host_key_policy: str = "warn"  # when cloud-init prints no fingerprints: warn and go on, or refuse
    console_timeout: float = 180.0  # seconds to wait for the fingerprints on the console


@dataclass
class ShareSettings:
    accounts: list[str] = field(default_factory=list)
    org_arns: list[str] = field(default_factory=list)
    ou_arns: list[str] = field(default_factory=list)
    public: bool = False
    allow_public: bool = False

    @property
    def any(self) -> bool:
        return bool(self.accounts or self.org_arns or self.ou_arns or self.public)

    def launch_permissions(self) -> list[dict[str, str]]:
        perms: list[dict[str, str]] = [{"UserId": a} for a in self.accounts]
        perms += [{"OrganizationArn": a} for a in self.org_arns]
        perms += [{"OrganizationalUnitArn": a} for a in self.ou_arns]
        if self.public:
            perms.append({"Group": "all"})
        return perms


@dataclass
class AwsSettings:
    regions: list[str] = field(default_factory=lambda: ["us-east-1"])
    profile: str = ""
    instance_types: list[str] = field(default_factory=lambda: ["t3.small"])
    subnet_id: str = ""
    associate_public_ip: bool | None = None
    iam_instance_profile: str = ""
    root_volume: Volume = field(default_factory=lambda: Volume())
    extra_volumes: list[Volume] = field(default_factory=list)
    ephemeral_volumes: list[tuple[str, str]] = field(default_factory=list)  # (device, ephemeralN)
    spot: bool = False
    spot_max_price: str = ""
    ssh: SSHSettings = field(default_factory=SSHSettings)
    share: ShareSettings = field(default_factory=ShareSettings)
    kms_keys: dict[str, str] = field(default_factory=dict)
    waiter_delay: float = 15.0
    waiter_max_attempts: int = 240
    retention: int | None = None
    retry_mode: str = "standard"
    retry_max_attempts: int = 10
    tags: dict[str, str] = field(default_factory=dict)
    user_data: str = ""
    ena_support: bool = True
    root_device_type: str = "ebs"  # the only kind kiln makes (create_image); instance-store is refused
    lock_lease: float = 120.0  # a held lock's expiry, renewed every third of it while its holder lives
    architectures: list[str] = field(default_factory=lambda: [DEFAULT_ARCH])  # one AMI of each per version
    types_by_arch: dict[str, list[str]] = field(default_factory=dict)  # instance_types as a mapping

    @property
    def build_region(self) -> str:
        return self.regions[0]

    def instance_types_for(self, arch: str) -> list[str]:
        """The instance types tried, in order, for a build machine of ``arch`` ("" : the only architecture)."""
        return self.types_by_arch.get(arch or self.architectures[0]) or self.instance_types

    @property
    def encrypted(self) -> bool:
        return self.root_volume.encrypted or any(v.encrypted for v in self.extra_volumes)


DiagFn = Callable[[tuple[Any, ...], str], Diagnostic]


def whole_internet(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """ "0.0.0.0/0" or "::/0" when the networks' union is all of it (e.g. 0.0.0.0/1 + 128.0.0.0/1), else ""."""
    for everything in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")):
        family = [n for n in networks if n.version == everything.version]
        if everything in ipaddress.collapse_addresses(family):
            return str(everything)
    return ""


class _Reader:
    """Typed reads of one mapping, collecting every problem instead of stopping at the first."""

    def __init__(
        self,
        data: dict[str, Any],
        path: tuple[Any, ...],
        diag: DiagFn,
        problems: list[Diagnostic],
        known: tuple[str, ...],
    ) -> None:
        self.data, self.path, self.diag, self.problems = data, path, diag, problems
        for key in data:
            if key not in known:
                self.fail((key,), f"unknown setting '{self.dotted(key)}'{did_you_mean(str(key), list(known))}")

    def dotted(self, *keys: Any) -> str:
        return ".".join(str(k) for k in (*self.path, *keys) if not isinstance(k, int))

    def fail(self, keys: tuple[Any, ...], message: str) -> None:
        self.problems.append(self.diag((*self.path, *keys), message))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            self.fail((key,), f"{self.dotted(key)} must be {what}, got {value!r}")
            return default
        return value

    def string(self, key: str, default: str = "") -> str:
        return str(self.get(key, (str,), default, "a string"))

    def boolean(self, key: str, default: bool | None = False) -> bool | None:
        return self.get(key, bool, default, "true or false")

    def number(self, key: str, default: float | None, minimum: float = 0, integer: bool = False) -> Any:
        value = self.get(key, int if integer else (int, float), default, "a whole number" if integer else "a number")
        if value is not None and value < minimum:
            self.fail((key,), f"{self.dotted(key)} must be >= {minimum}, got {value!r}")
            return default
        return value

    def strings(
        self, key: str, default: list[str] | None = None, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> list[str]:
        value = self.data.get(key)
        if value is None:
            return list(default or [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            self.fail((key,), f"{self.dotted(key)} must be a list of strings, got {value!r}")
            return list(default or [])
        out = [str(v) for v in value]
        if pattern is not None:
            for i, v in enumerate(out):
                if not pattern.match(v):
                    self.fail((key, i), f"{self.dotted(key)}: '{v}' is not {what}")
        return out

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail((key,), f"{self.dotted(key)} must be a mapping, got {value!r}")
            return {}
        return value


def _volume(data: Any, path: tuple[Any, ...], diag: DiagFn, problems: list[Diagnostic], root: bool) -> Volume:
    if not isinstance(data, dict):
        problems.append(
            diag(path, f"{'.'.join(str(p) for p in path[2:])} must be a mapping like {{device: /dev/sdf, size: 20}}")
        )
        return Volume()
    r = _Reader(data, path, diag, problems, VOLUME_KEYS)
    vol = Volume(
        device=r.string("device"),
        size=r.number("size", None, 1, integer=True),
        type=r.string("type", "gp3"),
        iops=r.number("iops", None, 100, integer=True),
        throughput=r.number("throughput", None, 125, integer=True),
        encrypted=bool(r.boolean("encrypted", False)),
        kms_key_id=r.string("kms_key_id"),
        in_image=bool(r.boolean("in_image", True)),
        delete_on_termination=bool(r.boolean("delete_on_termination", True)),
    )
    if vol.type not in VOLUME_TYPES:
        r.fail(
            ("type",),
            f"{r.dotted('type')}: unknown volume type '{vol.type}'{did_you_mean(vol.type, list(VOLUME_TYPES))}",
        )
    if vol.kms_key_id and not vol.encrypted:
        r.fail(("kms_key_id",), f"{r.dotted('kms_key_id')} is set but encrypted is not true")
    if root and data.get("in_image") is not None:
        r.fail(("in_image",), "the root volume is always part of the image")
    if not root and not DEVICE_RE.match(vol.device):
        r.fail(("device",), f"{r.dotted('device')} must be a device name like /dev/sdf, got {vol.device!r}")
    if not root and not vol.size:
        r.fail(("size",), f"{r.dotted('size')} is required for an extra volume (GiB)")
    return vol


def _architectures(r: _Reader) -> list[str]:
    """``architectures``: x86_64 and/or arm64, each once; the first is the one ``latest`` alone has always named."""
    arches = r.strings("architectures", [DEFAULT_ARCH])
    for i, arch in enumerate(arches):
        if arch not in ARCHITECTURES:
            r.fail(
                ("architectures", i),
                f"architectures: '{arch}' is not one kiln bakes ({', '.join(ARCHITECTURES)})"
                f"{did_you_mean(arch, list(ARCHITECTURES))}",
            )
    if not arches:
        r.fail(("architectures",), "providers.aws.architectures needs at least one architecture")
    if len(set(arches)) != len(arches):
        r.fail(("architectures",), "providers.aws.architectures lists an architecture twice")
    return [a for a in dict.fromkeys(arches) if a in ARCHITECTURES] or [DEFAULT_ARCH]


def _types_by_arch(r: _Reader, arches: list[str]) -> dict[str, list[str]]:
    """``instance_types: {x86_64: [t3.micro], arm64: [t4g.micro]}``: one list per architecture baked."""
    mapping = r.data["instance_types"]
    found: dict[str, list[str]] = {}
    for arch in mapping:
        if arch not in arches:
            r.fail(
                ("instance_types", arch),
                f"instance_types: '{arch}' is not one of architectures ({', '.join(arches)})"
                f"{did_you_mean(str(arch), arches)}",
            )
    sub = _Reader(
        {k: v for k, v in mapping.items() if k in arches},
        (*r.path, "instance_types"),
        r.diag,
        r.problems,
        tuple(arches),
    )
    for arch in arches:
        found[arch] = sub.strings(arch, DEFAULT_INSTANCE_TYPES[arch] if arch not in mapping else [])
        if not found[arch]:
            sub.fail((arch,), f"instance_types.{arch} needs at least one instance type")
            found[arch] = DEFAULT_INSTANCE_TYPES[arch]
    return found


def _one_list_for_one_architecture(r: _Reader, s: AwsSettings) -> None:
    """The list form of instance_types fits one architecture; several need one list each."""
    key = "instance_type" if "instance_type" in r.data else "instance_types"
    if key in r.data and not s.instance_types:
        r.fail((key,), "providers.aws.instance_types needs at least one instance type")
    if len(s.architectures) > 1 and key in r.data:
        example = ", ".join(f"{a}: [{DEFAULT_INSTANCE_TYPES[a][0]}]" for a in s.architectures)
        r.fail(
            (key,),
            f"{key} is one list, but {len(s.architectures)} architectures are baked: give each its own, "
            f"e.g. instance_types: {{{example}}}",
        )
    if not s.instance_types or len(s.architectures) > 1:
        s.types_by_arch = {a: list(DEFAULT_INSTANCE_TYPES[a]) for a in s.architectures}
        s.instance_types = s.types_by_arch[s.architectures[0]]


def _root_device_type(r: _Reader) -> str:
    """``ebs`` only: instance-store-backed AMIs need the legacy bundle tools and an S3 upload."""
    value = r.string("root_device_type", "ebs")
    if value == "instance-store":
        r.fail(
            ("root_device_type",),
            "root_device_type 'instance-store' is refused: instance-store-backed AMIs are made with the legacy "
            "AMI tools (ec2-bundle-vol, ec2-upload-bundle to S3, register-image), not create_image; bake an "
            "EBS-backed AMI and map instance-store volumes with ephemeral_volumes (docs/aws.md)",
        )
    elif value != "ebs":
        r.fail(("root_device_type",), f"root_device_type must be ebs (the default), got {value!r}")
    return "ebs"


def parse_settings(raw: dict[str, Any] | None, diag: DiagFn) -> AwsSettings:
    """Read and check ``providers.aws``; raise InvalidInput listing every problem."""
    raw = raw or {}
    problems: list[Diagnostic] = []
    base = ("providers", "aws")
    r = _Reader(raw, base, diag, problems, TOP_KEYS)
    s = AwsSettings()

    s.regions = r.strings("regions", s.regions, REGION_RE, "a region name like eu-west-1")
    if not s.regions:
        r.fail(("regions",), "providers.aws.regions needs at least one region (the first one builds)")
        s.regions = ["us-east-1"]
    if len(set(s.regions)) != len(s.regions):
        r.fail(("regions",), "providers.aws.regions lists a region twice")
    s.profile = r.string("profile")
    if "instance_type" in raw and "instance_types" in raw:
        r.fail(("instance_type",), "set instance_types (a list tried in order) or instance_type, not both")
    s.architectures = _architectures(r)
    if isinstance(raw.get("instance_types"), dict):
        s.types_by_arch = _types_by_arch(r, s.architectures)
        s.instance_types = s.types_by_arch[s.architectures[0]]
    else:
        s.instance_types = r.strings("instance_types", r.strings("instance_type", []))
        _one_list_for_one_architecture(r, s)
    s.root_device_type = _root_device_type(r)
    s.subnet_id = r.string("subnet_id")
    s.associate_public_ip = r.boolean("associate_public_ip", None)
    s.iam_instance_profile = r.string("iam_instance_profile")
    s.root_volume = (
        _volume(raw["root_volume"], (*base, "root_volume"), diag, problems, root=True)
        if raw.get("root_volume") is not None
        else Volume()
    )
    extra = raw.get("extra_volumes") or []
    if not isinstance(extra, list):
        r.fail(("extra_volumes",), "providers.aws.extra_volumes must be a list of volumes")
        extra = []
    s.extra_volumes = [_volume(v, (*base, "extra_volumes", i), diag, problems, root=False) for i, v in enumerate(extra)]
    devices = [v.device for v in s.extra_volumes]
    ephemeral = raw.get("ephemeral_volumes") or []
    if not isinstance(ephemeral, list):
        r.fail(("ephemeral_volumes",), "providers.aws.ephemeral_volumes must be a list of {device, name}")
        ephemeral = []
    for i, item in enumerate(ephemeral):
        if not isinstance(item, dict):
            r.fail(("ephemeral_volumes", i), "an ephemeral volume is {device: /dev/sdb, name: ephemeral0}")
            continue
        er = _Reader(item, (*base, "ephemeral_volumes", i), diag, problems, EPHEMERAL_KEYS)
        device, name = er.string("device"), er.string("name")
        if not DEVICE_RE.match(device):
            er.fail(("device",), f"ephemeral_volumes: device must be like /dev/sdb, got {device!r}")
        if not EPHEMERAL_RE.match(name):
            er.fail(("name",), f"ephemeral_volumes: name must be ephemeral0..ephemeral23, got {name!r}")
        devices.append(device)
        s.ephemeral_volumes.append((device, name))
    if len(set(devices)) != len(devices):
        r.fail(("extra_volumes",), "two volumes use the same device name")

    spot = raw.get("spot")
    if isinstance(spot, dict):
        sr = _Reader(spot, (*base, "spot"), diag, problems, SPOT_KEYS)
        s.spot, s.spot_max_price = True, str(sr.get("max_price", (str, int, float), "", "a price"))
    else:
        s.spot = bool(r.boolean("spot", False))

    ssh = _Reader(r.mapping("ssh"), (*base, "ssh"), diag, problems, SSH_KEYS)
    s.ssh = SSHSettings(
        address=ssh.string("address", "public_ip"),
        user=ssh.string("user", "ec2-user"),
        cidrs=ssh.strings("cidrs"),
        security_group_id=ssh.string("security_group_id"),
        host=ssh.string("host"),
        port=ssh.number("port", 22, 1, integer=True),
        host_key_policy=ssh.string("host_key_policy", "warn"),
        console_timeout=float(ssh.number("console_timeout", 180.0, 0)),
    )
    if s.ssh.address not in ADDRESS_KINDS:
        ssh.fail(
            ("address",),
            f"ssh.address must be one of {', '.join(ADDRESS_KINDS)}, got {s.ssh.address!r}"
            f"{did_you_mean(s.ssh.address, list(ADDRESS_KINDS))}",
        )
    if s.ssh.host_key_policy not in HOST_KEY_POLICIES:
        ssh.fail(("host_key_policy",), f"ssh.host_key_policy must be warn or refuse, got {s.ssh.host_key_policy!r}")
    networks = []
    for i, cidr in enumerate(s.ssh.cidrs):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            ssh.fail(("cidrs", i), f"ssh.cidrs: '{cidr}' is not a CIDR like 203.0.113.7/32")
    if s.ssh.security_group_id and s.ssh.cidrs:
        ssh.fail(
            ("cidrs",),
            "ssh.cidrs applies to the temporary security group; with ssh.security_group_id "
            "set, the existing group's rules are used as they are",
        )
    if whole := whole_internet(networks):
        ssh.fail(("cidrs",), f"ssh.cidrs must not open SSH to the whole internet: together they cover {whole}")
    if s.ssh.user == "":
        ssh.fail(("user",), "ssh.user must not be empty")

    share = _Reader(r.mapping("share"), (*base, "share"), diag, problems, SHARE_KEYS)
    s.share = ShareSettings(
        accounts=share.strings("accounts"),
        org_arns=share.strings("org_arns", pattern=ORG_ARN_RE, what="an organization ARN"),
        ou_arns=share.strings("ou_arns", pattern=OU_ARN_RE, what="an organizational unit ARN"),
        public=bool(share.boolean("public", False)),
        allow_public=bool(share.boolean("allow_public", False)),
    )
    if "all" in s.share.accounts:
        s.share.accounts.remove("all")
        s.share.public = True
    for i, account in enumerate(s.share.accounts):
        if not ACCOUNT_RE.match(account):
            share.fail(("accounts", i), f"share.accounts: '{account}' is not a 12-digit account id")
    if s.share.public and not s.share.allow_public:
        share.fail(
            ("public",) if "public" in share.data else ("accounts",),
            "sharing publicly makes the AMI launchable by every AWS account: refused unless "
            "share.allow_public: true is set as well",
        )

    kms = r.mapping("kms_keys")
    for region, key in kms.items():
        if region not in s.regions:
            r.fail(
                ("kms_keys", region),
                f"kms_keys: '{region}' is not one of the regions "
                f"{', '.join(s.regions)}{did_you_mean(str(region), s.regions)}",
            )
        elif not isinstance(key, str) or not key:
            r.fail(("kms_keys", region), f"kms_keys.{region} must be a key id, ARN or alias")
        else:
            s.kms_keys[region] = key
    if s.kms_keys and not s.encrypted:
        r.fail(("kms_keys",), "kms_keys is set but no volume is encrypted (root_volume.encrypted: true)")
    if s.encrypted and s.root_volume.kms_key_id and s.build_region not in s.kms_keys:
        s.kms_keys[s.build_region] = s.root_volume.kms_key_id
    if s.encrypted and s.share.any:
        if s.share.public:
            r.fail(("share",), "encrypted AMIs cannot be public")
        missing = [reg for reg in s.regions if reg not in s.kms_keys]
        if missing:
            r.fail(
                ("kms_keys",),
                "AMIs encrypted with the default aws/ebs key cannot be shared with other "
                f"accounts: set a customer managed key for {', '.join(missing)} "
                "(root_volume.kms_key_id for the build region, kms_keys for the others)",
            )

    waiter = _Reader(r.mapping("waiter"), (*base, "waiter"), diag, problems, WAITER_KEYS)
    s.waiter_delay = float(waiter.number("delay", 15.0, 0))
    s.waiter_max_attempts = int(waiter.number("max_attempts", 240, 1, integer=True))
    retention = raw.get("retention")
    if isinstance(retention, dict):
        rr = _Reader(retention, (*base, "retention"), diag, problems, ("keep",))
        s.retention = rr.number("keep", None, 1, integer=True)
    else:
        s.retention = r.number("retention", None, 1, integer=True)
    retries = _Reader(r.mapping("retries"), (*base, "retries"), diag, problems, RETRIES_KEYS)
    s.retry_mode = retries.string("mode", "standard")
    if s.retry_mode not in RETRY_MODES:
        retries.fail(("mode",), f"retries.mode must be standard or adaptive, got {s.retry_mode!r}")
    s.retry_max_attempts = int(retries.number("max_attempts", 10, 1, integer=True))
    tags = r.mapping("tags")
    for key, value in tags.items():
        if str(key).lower().startswith(("kiln:", "aws:")):
            r.fail(("tags", key), f"tags: '{key}' is reserved (kiln: and aws: tags are kiln's and AWS's own)")
        else:
            s.tags[str(key)] = str(value)
    s.user_data = r.string("user_data")
    s.ena_support = bool(r.boolean("ena_support", True))
    s.lock_lease = float(r.number("lock_lease", 120.0, 1))
    virtualization = r.string("virtualization_type", "hvm")
    if virtualization != "hvm":
        r.fail(
            ("virtualization_type",),
            f"virtualization_type '{virtualization}' is refused: kiln bakes HVM "
            "images only (paravirtual AMIs cannot use current instance types, "
            "ENA or IMDSv2)",
        )
    if problems:
        raise InvalidInput(problems)
    return s
