"""The per-role bake lock: ``/kiln/<role>/lock``, a lease a heartbeat renews while its holder lives."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import ClientError

from kiln.controller.ownership import BuildClaim
from kiln.controller.providers.aws.tags import (
    claim_value,
    error_code,
    lock_parameter,
    now_utc,
    read_claim,
    stale_reason,
)
from kiln.controller.providers.base import Lock, ProviderError

if TYPE_CHECKING:
    from kiln.controller.providers.aws.api import AwsApi

log = structlog.get_logger("kiln.aws")

CLAIM_RACES = 1000  # a bound on a lock's take-over loop: waits are bounded by time, this by attempts


class Locks:
    """The locks this process holds, renewed by one heartbeat thread while they are held."""

    def __init__(self, api: AwsApi) -> None:
        self.api = api
        self._held: dict[str, tuple[str, float, float]] = {}  # role -> (owner, lease, renew until) of held locks
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._lock = threading.Lock()
        self._lease_lock = threading.Lock()  # a renewal and a release of a lock never interleave

    def stop(self) -> None:
        self._heartbeat_stop.set()

    def acquire_lock(self, role: str, owner: str, wait: bool, ttl: float = 4 * 3600) -> Lock:
        """``/kiln/<role>/lock`` created with Overwrite=False, holding who holds it (owner, pid on host)
        and a short lease (``lock_lease``) a heartbeat renews while the holder lives, for at most ``ttl``.

        A holder that died on this host, or whose lease lapsed (killed elsewhere, or past ``ttl``),
        is taken over and the answer says so. ``wait`` waits at most ``ttl`` for a live holder."""
        name = lock_parameter(role)
        lease = min(self.api.settings.lock_lease, ttl)
        give_up = time.monotonic() + max(0.0, ttl)
        took_over = ""
        for _ in range(CLAIM_RACES):
            value = claim_value(BuildClaim.for_build(owner, now_utc() + dt.timedelta(seconds=lease)), owner=owner)
            try:
                self.api.ssm().put_parameter(
                    Name=name,
                    Type="String",
                    Overwrite=False,
                    Value=value,
                    Description="kiln: per-role lock (a lease renewed while held)",
                )
                self._hold(role, owner, lease, ttl)
                return Lock(True, took_over=took_over)
            except ClientError as exc:
                if error_code(exc) != "ParameterAlreadyExists":
                    raise ProviderError(f"taking the lock of {role} failed: {exc}") from exc
            held = self.api._read_parameter(name)
            if held is None:
                continue
            claim, _ = read_claim(held)
            holder = str(json.loads(held).get("owner", "")) if claim else held
            if holder == owner:
                return Lock(True)
            if reason := stale_reason(claim):
                took_over = f"{holder} ({claim.describe() if claim else 'unreadable value'}, {reason})"
                log.warning("taking over a stale lock", role=role, holder=took_over)
                self.api._delete_if_unchanged(name, held)
                continue
            if not wait:
                return Lock(False)
            if time.monotonic() >= give_up:
                raise ProviderError(
                    f"waited {ttl:.0f}s (the lock's ttl) for the lock of {role}, held by {holder} "
                    f"({claim.describe()}); it is still renewed, so its holder is alive: giving up"
                )
            self.api.sleep(min(10.0, max(0.5, lease / 3)))
        raise ProviderError(
            f"the lock of {role} changed hands {CLAIM_RACES} times while kiln tried to take it; giving up (see {name})"
        )

    def _hold(self, role: str, owner: str, lease: float, ttl: float) -> None:
        with self._lock:
            self._held[role] = (owner, lease, time.monotonic() + ttl)
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat_stop.clear()
                self._heartbeat = threading.Thread(target=self._renew_locks, name="kiln-lock-heartbeat", daemon=True)
                self._heartbeat.start()

    def _renew_locks(self) -> None:
        """Renew every held lock's lease a third of a lease before it lapses; a kill -9 stops this
        thread with its process, so the lease lapses and the next scheduler takes the lock over."""
        while True:
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._heartbeat = None
                    return
            interval = max(0.2, min(lease for _, lease, _ in held.values()) / 3)
            if self._heartbeat_stop.wait(interval):
                return
            for role, (owner, lease, until) in held.items():
                if time.monotonic() >= until:
                    log.warning("lock held longer than its ttl: no longer renewed", role=role, owner=owner)
                    with self._lock:
                        self._held.pop(role, None)
                    continue
                with self._lease_lock:  # never renew a lock that release_lock is deleting: it would come back
                    if self._held.get(role, ("",))[0] != owner:
                        continue
                    try:
                        self._renew(role, owner, lease)
                    except Exception as exc:  # a missed renewal is retried; the lease is three renewals long
                        log.warning("could not renew the lock", role=role, error=str(exc))

    def _renew(self, role: str, owner: str, lease: float) -> None:
        name = lock_parameter(role)
        held = self.api._read_parameter(name)
        if held is None or json.loads(held).get("owner") != owner:
            with self._lock:
                self._held.pop(role, None)
            log.error("lost the lock: another scheduler took it over", role=role, owner=owner)
            return
        value = claim_value(BuildClaim.for_build(owner, now_utc() + dt.timedelta(seconds=lease)), owner=owner)
        self.api.ssm().put_parameter(Name=name, Type="String", Overwrite=True, Value=value)

    def release_lock(self, role: str, owner: str) -> None:
        name = lock_parameter(role)
        with self._lease_lock:
            with self._lock:
                if self._held.get(role, ("",))[0] == owner:
                    self._held.pop(role)
            try:
                held = self.api._read_parameter(name)
                claim, _ = read_claim(held) if held is not None else (None, False)
                if claim is not None and json.loads(held).get("owner", claim.build_id) == owner:
                    self.api._delete_parameter(self.api.ssm(), name)
            except ClientError as exc:
                log.error("could not release the lock; remove by hand", parameter=name, error=str(exc))
