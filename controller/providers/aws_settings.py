"""``providers.aws`` of kiln.yaml: every setting with its default, checked before anything is launched.

A bad value is an :class:`InvalidInput` (exit status 2) pinned to its place in kiln.yaml,
reported with every other problem at once. docs/aws.md documents each setting.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln.agent.schema import did_you_mean
from kiln.controller.declared import check_document
from kiln.controller.model import Diagnostic, InvalidInput
from kiln.controller.publish_settings import PUBLISH_SECTION

ADDRESS_KINDS = ("public_ip", "private_ip", "public_dns", "private_dns")
HOST_KEY_POLICIES = ("warn", "refuse")
RETRY_MODES = ("standard", "adaptive")
VOLUME_TYPES = ("gp3", "gp2", "io1", "io2", "st1", "sc1", "standard")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
ORG_ARN_RE = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:organization/o-[a-z0-9]{10,32}$")
OU_ARN_RE = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$")
DEVICE_RE = re.compile(r"^/dev/(sd[b-z]|xvd[b-z]|xvd[a-z][a-z]?|sd[a-z][a-z]?)$")
EPHEMERAL_RE = re.compile(r"^ephemeral([0-9]|1[0-9]|2[0-3])$")
DEFAULT_ARCH = "x86_64"
ARCHITECTURES = ("x86_64", "arm64")
#: instance types when kiln.yaml names none: small burstable ones (Graviton for arm64)
DEFAULT_INSTANCE_TYPES = {"x86_64": ["t3.small"], "arm64": ["t4g.small"]}


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

    def ebs(self) -> dict[str, Any]:
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


# --- the declaration: kiln.yaml validation, docs/kiln-yaml.md and the JSON Schema come from it ----------
Rule = Callable[[dict[str, Any]], list[tuple[tuple[Any, ...], str]]]
_SSH, _VOLUME, _AWS = SSHSettings(), Volume(), AwsSettings()


def _of(kind: str, description: str, expect: str, **spec: Any) -> dict[str, Any]:
    """A setting as kiln.yaml writes it: never templated, null for its default."""
    return {"type": kind, "templated": False, "nullable": True, "expect": expect, **spec, "description": description}


def _text(description: str, default: Any = "", **spec: Any) -> dict[str, Any]:
    return _of("str", description, spec.pop("expect", "a string"), strict=True, default=default, **spec)


def _flag(description: str, default: Any = False) -> dict[str, Any]:
    return _of("bool", description, "true or false", strict=True, default=default)


def _whole(description: str, minimum: int, default: Any) -> dict[str, Any]:
    return _of("int", description, f"a whole number >= {minimum}", strict=True, minimum=minimum, default=default)


def _number(description: str, minimum: float, default: float) -> dict[str, Any]:
    return _of("number", description, f"a number >= {minimum:g}", minimum=minimum, default=default)


def _strings(description: str, item: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A list of strings; one string is a list of one (``regions: us-east-1``)."""
    items = {"type": "str", "templated": False, **(item or {})}
    return _of("list", description, spec.pop("expect", "a list of strings"), items=items, **spec)


def _required(spec: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A setting that must be written: no default, never null."""
    return {**{k: v for k, v in spec.items() if k != "default"}, "required": True, "nullable": False, **more}


def _object(name: str, description: str, args: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return _of("object", description, "a mapping", key_noun=f"providers.aws.{name} setting", args=args, **spec)


def _cidr_problem(cidr: str) -> str | None:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return f"'{cidr}' is not a CIDR like 203.0.113.7/32"
    return None


def _ssh_rules(ssh: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    problems = []
    if ssh.get("security_group_id") and ssh.get("cidrs"):
        problems.append(
            (
                ("cidrs",),
                "ssh.cidrs applies to the temporary security group; with ssh.security_group_id "
                "set, the existing group's rules are used as they are",
            )
        )
    if whole := whole_internet([ipaddress.ip_network(c, strict=False) for c in ssh.get("cidrs", [])]):
        problems.append((("cidrs",), f"ssh.cidrs must not open SSH to the whole internet: together they cover {whole}"))
    return problems


def _share_rules(share: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    if (share["public"] or "all" in share["accounts"]) and not share["allow_public"]:
        return [
            (
                ("public",) if share["public"] else ("accounts",),
                "sharing publicly makes the AMI launchable by every AWS account: refused unless "
                "share.allow_public: true is set as well",
            )
        ]
    return []


def _volume_spec(where: str, root: bool) -> dict[str, Any]:
    """``root_volume`` (the base AMI's root device) or one of ``extra_volumes`` (a device of its own)."""
    dotted = f"providers.aws.{where}"
    args: dict[str, Any] = {
        "device": _text(
            "The device name: the base AMI's root device for the root volume.", pattern=r"^$|^/", templated=False
        )
        if root
        else _required(
            _text("The device name.", expect="a device name like /dev/sdf", pattern=DEVICE_RE.pattern),
            messages={"required": f"{dotted}.device is required: a device name like /dev/sdf"},
        ),
        "size": _whole("GiB; default: the snapshot's size.", 1, None)
        if root
        else _required(
            _whole("GiB.", 1, None), messages={"required": f"{dotted}.size is required for an extra volume (GiB)"}
        ),
        "type": _text(
            "The EBS volume type.",
            _VOLUME.type,
            choices=list(VOLUME_TYPES),
            messages={"choices": dotted + ".type: unknown volume type '{value}'{hint}"},
        ),
        "iops": _whole("Provisioned IOPS (io1, io2, gp3).", 100, None),
        "throughput": _whole("MiB/s (gp3).", 125, None),
        "encrypted": _flag("Encrypt the volume (and the AMI's snapshot)."),
        "kms_key_id": _text("The KMS key when encrypted (default: aws/ebs); needs `encrypted: true`."),
        "in_image": _flag("Always true for the root volume (setting it is refused).")
        if root
        else _flag("Part of the AMI's block device mappings (`false`: a scratch volume of the build only).", True),
        "delete_on_termination": _flag("Deleted with the instance.", _VOLUME.delete_on_termination),
    }
    if root:
        del args["in_image"]["default"]  # absent unless written, and then refused by the rule below

    def rules(volume: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
        problems = []
        if volume.get("kms_key_id") and not volume.get("encrypted"):
            problems.append((("kms_key_id",), f"{dotted}.kms_key_id is set but encrypted is not true"))
        if root and "in_image" in volume:
            problems.append((("in_image",), "the root volume is always part of the image"))
        return problems

    return {"type": "object", "key_noun": f"{dotted} setting", "args": args, "rules": [rules]}


def _encrypted(result: dict[str, Any]) -> bool:
    volumes = [result.get("root_volume") or {}] + list(result.get("extra_volumes") or [])
    return any(v.get("encrypted") for v in volumes)


def _kms_keys(result: dict[str, Any]) -> dict[str, str]:
    """kms_keys, the build region's defaulting to root_volume.kms_key_id when a volume is encrypted."""
    keys = dict(result.get("kms_keys") or {})
    root_key = (result.get("root_volume") or {}).get("kms_key_id")
    if _encrypted(result) and root_key:
        keys.setdefault(result["regions"][0], root_key)
    return keys


def _encryption_rules(result: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    regions, problems = result["regions"], []
    for region in result.get("kms_keys") or {}:
        if region not in regions:
            problems.append(
                (
                    ("kms_keys", region),
                    f"kms_keys: '{region}' is not one of the regions {', '.join(regions)}"
                    f"{did_you_mean(str(region), regions)}",
                )
            )
    if result.get("kms_keys") and not _encrypted(result):
        problems.append((("kms_keys",), "kms_keys is set but no volume is encrypted (root_volume.encrypted: true)"))
    share = result.get("share") or {}
    public = share.get("public") or "all" in share.get("accounts", [])
    shared = public or any(share.get(k) for k in ("accounts", "org_arns", "ou_arns"))
    if _encrypted(result) and shared:
        if public:
            problems.append((("share",), "encrypted AMIs cannot be public"))
        missing = [region for region in regions if region not in _kms_keys(result)]
        if missing:
            problems.append(
                (
                    ("kms_keys",),
                    "AMIs encrypted with the default aws/ebs key cannot be shared with other "
                    f"accounts: set a customer managed key for {', '.join(missing)} "
                    "(root_volume.kms_key_id for the build region, kms_keys for the others)",
                )
            )
    return problems


def _instance_type_rules(result: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """A mapping names only architectures baked; the list form fits one architecture."""
    arches, problems = result["architectures"], []
    given = next((k for k in ("instance_type", "instance_types") if k in result), "")
    if isinstance(result.get("instance_types"), dict):
        for arch in result["instance_types"]:
            if arch not in arches:
                problems.append(
                    (
                        ("instance_types", arch),
                        f"instance_types: '{arch}' is not one of architectures ({', '.join(arches)})"
                        f"{did_you_mean(str(arch), arches)}",
                    )
                )
    elif given and len(arches) > 1:
        example = ", ".join(f"{a}: [{DEFAULT_INSTANCE_TYPES[a][0]}]" for a in arches)
        problems.append(
            (
                (given,),
                f"{given} is one list, but {len(arches)} architectures are baked: give each its own, "
                f"e.g. instance_types: {{{example}}}",
            )
        )
    return problems


def _device_rules(result: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    devices = [v["device"] for v in result["extra_volumes"]] + [e["device"] for e in result["ephemeral_volumes"]]
    return [(("extra_volumes",), "two volumes use the same device name")] if len(set(devices)) != len(devices) else []


INSTANCE_TYPES = {**_strings("Instance types tried in order."), "min_items": 1, "expect": "a list of instance types"}
SSH_SCHEMA = _object(
    "ssh",
    "How kiln reaches the build machine.",
    {
        "address": _text(
            "Which address of the instance kiln connects to.",
            _SSH.address,
            choices=list(ADDRESS_KINDS),
            messages={
                "choices": f"ssh.address must be one of {', '.join(ADDRESS_KINDS)}, got {{value!r}}{{hint}}",
            },
        ),
        "user": _text(
            "The AMI's default user; commands run with `sudo -n` unless `root`.",
            _SSH.user,
            refused={"": "ssh.user must not be empty"},
        ),
        "cidrs": _strings(
            "Who may reach port 22 of the temporary security group (default: the controller's own address /32); "
            "entries whose union is the whole internet (`0.0.0.0/0`, `::/0`, `0.0.0.0/1` + `128.0.0.0/1`) "
            "are refused.",
            {"checks": [_cidr_problem]},
            default=[],
        ),
        "security_group_id": _text("An existing security group used instead (never deleted); excludes `cidrs`."),
        "host": _text("An explicit address (a tunnel, a bastion's forwarded port)."),
        "port": _whole("The SSH port.", 1, _SSH.port),
        "host_key_policy": _text(
            "No fingerprints on the console: `warn` and continue, or `refuse`.",
            _SSH.host_key_policy,
            choices=list(HOST_KEY_POLICIES),
            messages={"choices": "ssh.host_key_policy must be warn or refuse, got {value!r}"},
        ),
        "console_timeout": _number("Seconds to wait for cloud-init's fingerprints.", 0, _SSH.console_timeout),
    },
    rules=[_ssh_rules],
)
SHARE_SCHEMA = _object(
    "share",
    "Launch permissions on every copy of the AMI.",
    {
        "accounts": _strings(
            "12-digit account ids (`all` counts as public).",
            {"pattern": r"^(\d{12}|all)$", "pattern_message": "'{value}' is not a 12-digit account id"},
            default=[],
        ),
        "org_arns": _strings(
            "Organization ARNs.",
            {"pattern": ORG_ARN_RE.pattern, "pattern_message": "'{value}' is not an organization ARN"},
            default=[],
        ),
        "ou_arns": _strings(
            "Organizational unit ARNs.",
            {"pattern": OU_ARN_RE.pattern, "pattern_message": "'{value}' is not an organizational unit ARN"},
            default=[],
        ),
        "public": _flag("Launchable by every AWS account; only with `allow_public: true`."),
        "allow_public": _flag("The explicit consent `public` needs."),
    },
    rules=[_share_rules],
)
AWS_SCHEMA: dict[str, Any] = {
    "key_noun": "providers.aws setting",
    "description": "The AWS provider (docs/aws.md): where and how AMIs are baked.",
    "args": {
        "regions": _strings(
            "The first builds; the others receive copies.",
            {"pattern": REGION_RE.pattern, "pattern_message": "'{value}' is not a region name like eu-west-1"},
            default=list(_AWS.regions),
            min_items=1,
            unique=True,
            expect="a list of region names",
            messages={
                "min_items": "providers.aws.regions needs at least one region (the first one builds)",
                "unique": "providers.aws.regions lists a region twice",
            },
        ),
        "profile": _text("A named AWS profile (default: the credential chain)."),
        "architectures": _strings(
            "One AMI of each per version; the first is the one `latest` alone names.",
            {
                "choices": list(ARCHITECTURES),
                "messages": {
                    "choices": f"architectures: '{{value}}' is not one kiln bakes ({', '.join(ARCHITECTURES)}){{hint}}"
                },
            },
            default=[DEFAULT_ARCH],
            min_items=1,
            unique=True,
            expect="a list of architectures",
            messages={
                "min_items": "providers.aws.architectures needs at least one architecture",
                "unique": "providers.aws.architectures lists an architecture twice",
            },
        ),
        "instance_types": _of(
            "any_of",
            "Tried in order on InsufficientInstanceCapacity, Unsupported, ...; one list per architecture "
            "(`{x86_64: [t3.micro], arm64: [t4g.micro]}`) when several are baked. Default: "
            + ", ".join(f"`{a}: {t}`" for a, t in DEFAULT_INSTANCE_TYPES.items())
            + ".",
            "a list of instance types, or a mapping of architecture to one",
            options=[
                dict(
                    INSTANCE_TYPES,
                    messages={"min_items": "providers.aws.instance_types needs at least one instance type"},
                ),
                {"type": "map", "values": INSTANCE_TYPES, "expect": "a mapping of architecture to instance types"},
            ],
        ),
        "instance_type": dict(
            INSTANCE_TYPES,
            description="`instance_types` by another name.",
            messages={"min_items": "providers.aws.instance_types needs at least one instance type"},
        ),
        "subnet_id": _text("Where the build instance runs (its VPC gets the security group); default VPC if unset."),
        "associate_public_ip": _flag("`true`/`false` to force; default: the subnet's.", None),
        "iam_instance_profile": _text("A name or ARN (the policy lets kiln pass roles named `kiln-build-*`)."),
        "root_volume": {**_volume_spec("root_volume", root=True), **_of("object", "The root volume.", "a mapping")},
        "extra_volumes": _of(
            "list",
            "More EBS volumes, in the launch and (unless `in_image: false`) in the AMI.",
            "a list of volumes",
            strict_list=True,
            default=[],
            items={
                **_volume_spec("extra_volumes", root=False),
                "expect": "a mapping like {device: /dev/sdf, size: 20}",
            },
        ),
        "ephemeral_volumes": _of(
            "list",
            "Instance-store volumes in the launch and in the AMI's mappings.",
            "a list of {device, name}",
            strict_list=True,
            default=[],
            items={
                "type": "object",
                "key_noun": "providers.aws.ephemeral_volumes setting",
                "expect": "a mapping like {device: /dev/sdb, name: ephemeral0}",
                "args": {
                    "device": _required(
                        _text("The device name.", expect="a device name like /dev/sdb", pattern=DEVICE_RE.pattern)
                    ),
                    "name": _required(
                        _text("The instance store.", expect="ephemeral0..ephemeral23", pattern=EPHEMERAL_RE.pattern)
                    ),
                },
            },
        ),
        "spot": _of(
            "any_of",
            'One-time spot (`true` or `{max_price: "0.05"}`); not stopped (create_image reboots it).',
            "true, false or {max_price: ...}",
            default=False,
            options=[
                {"type": "bool", "strict": True, "templated": False},
                _object("spot", "", {"max_price": _of("str", "The highest hourly price.", "a price", default="")}),
            ],
        ),
        "ssh": SSH_SCHEMA,
        "share": SHARE_SCHEMA,
        "kms_keys": _of(
            "map",
            "`{region: key}` for encrypted copies (the build region defaults to `root_volume.kms_key_id`).",
            "a mapping of region to key",
            default={},
            values={**_text("", pattern="."), "nullable": False, "expect": "a key id, ARN or alias"},
        ),
        "waiter": _object(
            "waiter",
            "Polling of AMIs becoming available (and the cap of instance waits).",
            {
                "delay": _number("Seconds between polls.", 0, _AWS.waiter_delay),
                "max_attempts": _whole("Polls before giving up.", 1, _AWS.waiter_max_attempts),
            },
        ),
        "retention": _of(
            "object",
            "Versions kept per role and region, for AMIs (default: the global `retention.keep`); "
            "`retention: 5` is short for `{keep: 5}`.",
            "a mapping like {keep: 5}",
            free_form="keep",
            key_noun="providers.aws.retention setting",
            args={"keep": _whole("Versions kept.", 1, None)},
        ),
        "retries": _object(
            "retries",
            "botocore's retries.",
            {
                "mode": _text(
                    "botocore's retry mode.",
                    _AWS.retry_mode,
                    choices=list(RETRY_MODES),
                    messages={"choices": "retries.mode must be standard or adaptive, got {value!r}"},
                ),
                "max_attempts": _whole("Attempts per call.", 1, _AWS.retry_max_attempts),
            },
        ),
        "tags": _of(
            "map",
            "Extra tags on everything kiln creates (`kiln:` and `aws:` are reserved).",
            "a mapping",
            default={},
            key_pattern=r"^(?![kK][iI][lL][nN]:|[aA][wW][sS]:)",
            key_message="tags: '{key}' is reserved (kiln: and aws: tags are kiln's and AWS's own)",
            values={"type": "str", "templated": False},
        ),
        "user_data": _text("Your own user data, sent as a second MIME part after kiln's cloud-config."),
        "ena_support": _flag("Turn ENA on (instance stopped) when the base lacks it.", _AWS.ena_support),
        "lock_lease": _number(
            "Seconds a nightly's per-role lock lasts unless its holder renews it (every third of it).",
            1,
            _AWS.lock_lease,
        ),
        "virtualization_type": _text(
            "HVM only (paravirtual AMIs cannot use current instance types, ENA or IMDSv2).",
            "hvm",
            choices=["hvm"],
            messages={
                "choices": "virtualization_type '{value}' is refused: kiln bakes HVM images only (paravirtual AMIs "
                "cannot use current instance types, ENA or IMDSv2)"
            },
        ),
        "root_device_type": _text(
            "`ebs`, the only kind kiln makes; `instance-store` is refused (docs/aws.md).",
            _AWS.root_device_type,
            choices=["ebs"],
            messages={"choices": "root_device_type must be ebs (the default), got {value!r}"},
            refused={
                "instance-store": "root_device_type 'instance-store' is refused: instance-store-backed AMIs are made "
                "with the legacy AMI tools (ec2-bundle-vol, ec2-upload-bundle to S3, register-image), not "
                "create_image; bake an EBS-backed AMI and map instance-store volumes with ephemeral_volumes "
                "(docs/aws.md)"
            },
        ),
        "publish": PUBLISH_SECTION,
    },
    "mutually_exclusive": [["instance_types", "instance_type"]],
    "rules": [_instance_type_rules, _device_rules, _encryption_rules],
}


# --- the typed settings, from values the declaration has judged -----------------------------------
def _filled(spec: dict[str, Any], values: dict[str, Any] | None) -> dict[str, Any]:
    """An object's values, with its defaults when kiln.yaml leaves it out."""
    defaults = {name: arg["default"] for name, arg in spec["args"].items() if "default" in arg}
    return {**defaults, **(values or {})}


def _instance_types(values: dict[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    """(the first architecture's instance types, each architecture's when they are per architecture)."""
    arches = values["architectures"]
    given = values.get("instance_types", values.get("instance_type"))
    if isinstance(given, dict):
        by_arch = {a: given.get(a) or list(DEFAULT_INSTANCE_TYPES[a]) for a in arches}
    elif given and len(arches) == 1:
        return given, {}
    else:
        by_arch = {a: list(DEFAULT_INSTANCE_TYPES[a]) for a in arches}
    return by_arch[arches[0]], by_arch


def _share(values: dict[str, Any]) -> ShareSettings:
    share = ShareSettings(**_filled(SHARE_SCHEMA, values))
    if "all" in share.accounts:
        share.accounts = [a for a in share.accounts if a != "all"]
        share.public = True
    return share


def _spot(values: dict[str, Any]) -> tuple[bool, str]:
    spot = values["spot"]
    return (True, spot.get("max_price", "")) if isinstance(spot, dict) else (bool(spot), "")


def settings_from(values: dict[str, Any]) -> AwsSettings:
    """The typed settings of ``providers.aws`` values :data:`AWS_SCHEMA` has accepted (defaults filled in)."""
    values = copy.deepcopy(values)
    instance_types, types_by_arch = _instance_types(values)
    spot, spot_max_price = _spot(values)
    ssh = _filled(SSH_SCHEMA, values.get("ssh"))
    waiter = values.get("waiter") or {}
    retries = values.get("retries") or {}
    return AwsSettings(
        regions=values["regions"],
        profile=values["profile"],
        instance_types=instance_types,
        types_by_arch=types_by_arch,
        architectures=values["architectures"],
        subnet_id=values["subnet_id"],
        associate_public_ip=values["associate_public_ip"],
        iam_instance_profile=values["iam_instance_profile"],
        root_volume=Volume(**_filled(AWS_SCHEMA["args"]["root_volume"], values.get("root_volume"))),
        extra_volumes=[Volume(**v) for v in values["extra_volumes"]],
        ephemeral_volumes=[(e["device"], e["name"]) for e in values["ephemeral_volumes"]],
        spot=spot,
        spot_max_price=spot_max_price,
        ssh=SSHSettings(**dict(ssh, console_timeout=float(ssh["console_timeout"]))),
        share=_share(values.get("share")),
        kms_keys=_kms_keys(values),
        waiter_delay=float(waiter.get("delay", _AWS.waiter_delay)),
        waiter_max_attempts=waiter.get("max_attempts", _AWS.waiter_max_attempts),
        retention=(values.get("retention") or {}).get("keep"),
        retry_mode=retries.get("mode", _AWS.retry_mode),
        retry_max_attempts=retries.get("max_attempts", _AWS.retry_max_attempts),
        tags={str(k): v for k, v in values["tags"].items()},
        user_data=values["user_data"],
        ena_support=values["ena_support"],
        root_device_type=values["root_device_type"],
        lock_lease=float(values["lock_lease"]),
    )


def parse_settings(raw: dict[str, Any] | None, diag: DiagFn) -> AwsSettings:
    """Check ``providers.aws`` against :data:`AWS_SCHEMA`; raise InvalidInput listing every problem."""
    values, problems = check_document(
        AWS_SCHEMA, raw or {}, lambda where, message, _at_key: diag(where, message), ("providers", "aws")
    )
    if problems:
        raise InvalidInput(problems)
    return settings_from(values)


#: the whole ``providers.aws`` section (what the registry hands to controller/config.py)
AWS_SECTION: dict[str, Any] = {"type": "object", "nullable": True, "expect": "a mapping", **AWS_SCHEMA}
