"""Key rotation and key status, through the one audited elevated door.

Rotation order (a crash at any step leaves every value readable, and re-running finishes it):
1. a new KEK is added to the key file (written atomically; the old KEKs stay in it);
2. every data key and every KEK-wrapped secret is rewrapped under it, in one transaction;
3. only then are KEKs that nothing references any more removed from the key file.
With re-encryption, each facility also gets a new data key (committed before any value uses
it), then every ciphertext is re-encrypted in small transactions while the service runs: old
data keys stay loadable, so readers never meet a value they cannot open.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import ColumnElement, LargeBinary, bindparam, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind, PurposeOfUse
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.crypto.keyring import ACTIVE_KEY_REFRESH_SECONDS
from carnet.crypto.keys import FileKeyProvider, RotatableKeyProvider
from carnet.crypto.models import DataKey
from carnet.identity import totp
from carnet.identity.models import TotpDevice
from carnet.kernel import clock
from carnet.kernel.errors import ConfigurationError, InvalidInput
from carnet.org.models import Facility
from carnet.phi.encrypted_columns import ENCRYPTED_TABLES, EncryptedTable, aad_field
from carnet.phi.name_index import reindex_names
from carnet.phi.system import SystemAccess, system_access
from carnet.runtime import Runtime

DEFAULT_BATCH_SIZE = 200
DEFAULT_PRUNE_GRACE = dt.timedelta(hours=1)
MIN_PRUNE_GRACE = dt.timedelta(seconds=2 * ACTIVE_KEY_REFRESH_SECONDS)
MAX_BATCH_SIZE = 2000
MAX_PAUSE = 10.0
# Workers keep writing under the old data key until their keyring refreshes (30 s); a few
# passes over the stragglers catch what they wrote meanwhile.
MAX_PASSES = 3


@dataclass(frozen=True)
class RotationReport:
    previous_kek_ids: list[str]
    kek_id: str
    data_keys_rewrapped: int
    secrets_rewrapped: int
    retired_kek_ids: list[str]
    new_data_keys: int = 0
    reencrypted: int = 0
    # Ciphertexts still under a data key that is no longer active (0 after a full re-encryption).
    remaining: int = 0


@dataclass(frozen=True)
class DataKeyStatus:
    id: uuid.UUID
    facility_id: uuid.UUID
    facility_name: str
    version: int
    kek_id: str
    active: bool
    created_at: dt.datetime
    ciphertexts: int


@dataclass(frozen=True)
class KeyStatus:
    active_kek_id: str
    kek_ids: list[str]
    key_file: Path | None
    key_file_mode: int | None
    data_keys: list[DataKeyStatus]
    # KEK-wrapped secrets (TOTP) per KEK id.
    wrapped_secrets: dict[str, int] = field(default_factory=dict)
    # Ciphertexts naming a data key that does not exist (should be 0).
    orphan_ciphertexts: int = 0

    @property
    def key_file_too_open(self) -> bool:
        return self.key_file_mode is not None and self.key_file_mode & 0o077 != 0


def _rotatable(runtime: Runtime) -> RotatableKeyProvider:
    if not isinstance(runtime.keys, RotatableKeyProvider):
        raise ConfigurationError(
            "this key provider does not rotate from carnet: rotate the key-encryption key in the "
            "KMS, then run `carnet keys rotate` there"
        )
    return runtime.keys


def _system_actor(operator: str) -> Actor:
    return Actor(
        kind=ActorKind.SYSTEM,
        username=f"system:{operator}",
        roles=frozenset(),
        purpose_of_use=PurposeOfUse.SECURITY,
    )


def _audit(access: SystemAccess, kind: AuditKind, detail: dict[str, str]) -> None:
    access.audit.append(
        access.session, AuditRecord(kind=kind, outcome=Outcome.SUCCESS, actor=access.actor, detail=detail)
    )


# -- KEK rotation ----------------------------------------------------------------------------


def _rewrap_secrets(session: Session, keys: RotatableKeyProvider) -> int:
    """TOTP secrets are wrapped by the KEK itself (carnet.identity), so they move with it."""
    devices = session.scalars(select(TotpDevice).where(TotpDevice.kek_id != keys.active_kek_id)).all()
    for device in devices:
        secret = totp.unwrap_secret(keys, device.id, device.kek_id, device.secret_wrapped)
        device.kek_id, device.secret_wrapped = totp.wrap_secret(keys, device.id, secret)
    session.flush()
    return len(devices)


def _referenced_keks(session: Session) -> set[str]:
    used = set(session.scalars(select(DataKey.kek_id).distinct()))
    return used | set(session.scalars(select(TotpDevice.kek_id).distinct()))


def rotate_keys(
    runtime: Runtime,
    *,
    reencrypt: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pause: float = 0.0,
    operator: str = "carnet",
) -> RotationReport:
    """Rotate the KEK (data keys rewrapped); with `reencrypt`, also renew every data key.

    `pause` (seconds between re-encryption batches) leaves the database and CPUs to the service.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidInput(f"the batch size must be between 1 and {MAX_BATCH_SIZE}")
    if not 0 <= pause <= MAX_PAUSE:
        raise InvalidInput(f"the pause between batches must be between 0 and {MAX_PAUSE:.0f} seconds")
    with _rotatable(runtime).rotation_lock():
        return _rotate(runtime, reencrypt=reencrypt, batch_size=batch_size, pause=pause, operator=operator)


def _rotate(
    runtime: Runtime, *, reencrypt: bool, batch_size: int, pause: float, operator: str
) -> RotationReport:
    keys = _rotatable(runtime)
    previous = keys.kek_ids
    new_kek = keys.add_kek()  # step 1: on disk before any row names it
    with system_access(
        runtime, reason=f"key rotation: rewrap data keys under {new_kek}", operator=operator
    ) as access:
        rewrapped = runtime.keyring.rewrap_data_keys(access.session)
        secrets = _rewrap_secrets(access.session, keys)
        _audit(
            access,
            AuditKind.KEK_ROTATED,
            {
                "kek": new_kek,
                "previous": ",".join(previous),
                "data_keys": str(rewrapped),
                "secrets": str(secrets),
            },
        )
    retired = retire_unused_keks(runtime, operator=operator)
    report = RotationReport(
        previous_kek_ids=previous,
        kek_id=new_kek,
        data_keys_rewrapped=rewrapped,
        secrets_rewrapped=secrets,
        retired_kek_ids=retired,
    )
    if not reencrypt:
        return report
    created = renew_data_keys(runtime, operator=operator)
    done, remaining = reencrypt_all(runtime, batch_size=batch_size, pause=pause, operator=operator)
    return RotationReport(
        previous_kek_ids=previous,
        kek_id=new_kek,
        data_keys_rewrapped=rewrapped,
        secrets_rewrapped=secrets,
        retired_kek_ids=retired,
        new_data_keys=created,
        reencrypted=done,
        remaining=remaining,
    )


def retire_unused_keks(runtime: Runtime, *, operator: str = "carnet") -> list[str]:
    """Remove from the key file every KEK that no stored key names any more."""
    keys = _rotatable(runtime)
    runtime.keyring.load()  # every data key opens with the file as it is now, or we stop here
    with runtime.session_factory() as session:
        keep = _referenced_keks(session)
    retired = keys.retire_keks(keep)
    if retired:
        with runtime.session_factory.begin() as session:
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.KEK_RETIRED,
                    outcome=Outcome.SUCCESS,
                    actor=_system_actor(operator),
                    detail={"retired": ",".join(retired), "active": keys.active_kek_id},
                ),
            )
    return retired


# -- data keys and re-encryption ---------------------------------------------------------------


def renew_data_keys(runtime: Runtime, *, operator: str = "carnet") -> int:
    """A new active data key for every facility that has one; committed before any use."""
    with system_access(
        runtime, reason="key rotation: new data key per facility", operator=operator
    ) as access:
        facilities = access.session.scalars(select(DataKey.facility_id).distinct()).all()
        for facility_id in facilities:
            dek_id = runtime.keyring.create_data_key(access.session, facility_id)
            _audit(
                access, AuditKind.DATA_KEY_CREATED, {"facility": str(facility_id), "data_key": str(dek_id)}
            )
    return len(facilities)


def _key_id_expr(column: ColumnElement[bytes]) -> ColumnElement[bytes]:
    # Bytes 2..17 of a ciphertext name its data key (see carnet.crypto.keyring). Literal
    # positions, so PostgreSQL sees the same expression in SELECT and GROUP BY.
    return func.substr(column, literal_column("2"), literal_column("16"), type_=LargeBinary)


def _active_key_ids(session: Session) -> list[bytes]:
    return [k.bytes for k in session.scalars(select(DataKey.id).where(DataKey.active.is_(True)))]


def _stale_filter(spec: EncryptedTable, active: list[bytes]) -> ColumnElement[bool]:
    return or_(*(_key_id_expr(spec.column(c)).not_in(active) for c in spec.columns))


def _reencrypt_table(
    runtime: Runtime, spec: EncryptedTable, *, batch_size: int, pause: float, operator: str
) -> int:
    """Re-encrypt one table's stale ciphertexts, one small transaction per batch of rows."""
    changed = 0
    after: object | None = None
    table = spec.table
    while True:
        with system_access(
            runtime, reason=f"key rotation: re-encrypt {spec.name}", operator=operator
        ) as access:
            session = access.session
            active = _active_key_ids(session)
            stmt = spec.select_rows(after=after, limit=batch_size).where(_stale_filter(spec, active))
            rows = session.execute(stmt).all()
            if not rows:
                return changed
            params: list[dict[str, object]] = []
            batch = 0
            for row in rows:
                row_id, facility_id, *blobs = row
                values: dict[str, object] = {"_id": row_id}
                fresh_count = 0
                for i, (column, blob) in enumerate(zip(spec.columns, blobs, strict=True)):
                    fresh = runtime.keyring.reencrypt(
                        blob,
                        facility_id=facility_id,
                        table=spec.name,
                        column=aad_field(column),
                        row_id=row_id,
                    )
                    values[f"_old{i}"] = blob
                    values[f"_new{i}"] = blob if fresh is None else fresh
                    fresh_count += fresh is not None
                if fresh_count:
                    params.append(values)
                    batch += fresh_count
            if params:
                # Compare-and-set on the whole row: a row the service rewrote meanwhile is left
                # alone (a later pass picks it up if still under an old key), never overwritten.
                # One statement for the batch: the database round trips are the cost here.
                stmt_update = (
                    update(table)
                    .where(
                        table.c.id == bindparam("_id"),
                        *(
                            table.c[c].is_not_distinct_from(bindparam(f"_old{i}", type_=LargeBinary))
                            for i, c in enumerate(spec.columns)
                        ),
                    )
                    .values({c: bindparam(f"_new{i}", type_=LargeBinary) for i, c in enumerate(spec.columns)})
                )
                session.connection().execute(stmt_update, params)
            _audit(access, AuditKind.DATA_REENCRYPTED, {"table": spec.name, "values": str(batch)})
            changed += batch
            after = rows[-1][0]
        if pause:
            time.sleep(pause)  # after the commit: the audit lane's head is not held meanwhile


def reencrypt_all(
    runtime: Runtime, *, batch_size: int = DEFAULT_BATCH_SIZE, pause: float = 0.0, operator: str = "carnet"
) -> tuple[int, int]:
    """Move every ciphertext to its facility's active data key. Returns (re-encrypted, remaining)."""
    total = 0
    for _ in range(MAX_PASSES):
        changed = sum(
            _reencrypt_table(runtime, spec, batch_size=batch_size, pause=pause, operator=operator)
            for spec in ENCRYPTED_TABLES
        )
        total += changed
        if changed == 0:
            break
    reindex_names(runtime, operator=operator)  # patients written before name prefixes existed
    counts = count_ciphertexts(runtime, operator=operator)
    with runtime.session_factory() as session:
        active = {uuid.UUID(bytes=k) for k in _active_key_ids(session)}
    return total, sum(n for dek, n in counts.items() if dek not in active)


# -- status ------------------------------------------------------------------------------------


def count_ciphertexts(runtime: Runtime, *, operator: str = "carnet") -> dict[uuid.UUID | None, int]:
    """How many stored values each data key encrypts (None: not a readable carnet ciphertext)."""
    with system_access(
        runtime, reason="key status: count ciphertexts per data key", operator=operator
    ) as access:
        return _count(access.session)


def _count(session: Session) -> dict[uuid.UUID | None, int]:
    counts: dict[uuid.UUID | None, int] = {}
    for spec in ENCRYPTED_TABLES:
        for column in spec.columns:
            col = spec.column(column)
            key = _key_id_expr(col)
            stmt = select(key, func.count()).where(col.is_not(None)).group_by(key)
            for raw, n in session.execute(stmt):
                dek = uuid.UUID(bytes=bytes(raw)) if raw is not None and len(raw) == 16 else None
                counts[dek] = counts.get(dek, 0) + int(n)
    return counts


def prune_data_keys(
    runtime: Runtime, *, grace: dt.timedelta = DEFAULT_PRUNE_GRACE, operator: str = "carnet"
) -> list[uuid.UUID]:
    """Destroy inactive data keys that encrypt no stored value; returns their ids.

    Only keys replaced at least `grace` ago: until every worker has refreshed its keyring, one
    may still be writing under the old key. A destroyed key leaves old backups of the database
    unreadable with the current key file, which is the point of rotating.
    """
    if grace < MIN_PRUNE_GRACE:
        raise InvalidInput(
            f"the grace period must be at least {int(MIN_PRUNE_GRACE.total_seconds())} seconds: "
            "workers may still write under a key replaced more recently"
        )
    cutoff = clock.now() - grace
    with system_access(
        runtime, reason="key pruning: destroy unused old data keys", operator=operator
    ) as access:
        session = access.session
        counts = _count(session)
        keys = session.scalars(select(DataKey).order_by(DataKey.facility_id, DataKey.version)).all()
        destroyed: list[uuid.UUID] = []
        for key in keys:
            successors = [k for k in keys if k.facility_id == key.facility_id and k.version > key.version]
            if key.active or counts.get(key.id, 0) or not successors:
                continue
            # A key stops receiving writes when its successor is created, at the latest.
            if min(k.created_at for k in successors) > cutoff:
                continue
            session.delete(key)
            destroyed.append(key.id)
            _audit(
                access,
                AuditKind.DATA_KEY_DESTROYED,
                {"facility": str(key.facility_id), "data_key": str(key.id), "version": str(key.version)},
            )
    runtime.keyring.load()
    return destroyed


def _secrets_per_kek(session: Session) -> dict[str, int]:
    stmt = select(TotpDevice.kek_id, func.count()).group_by(TotpDevice.kek_id)
    return {str(k): int(n) for k, n in session.execute(stmt)}


def key_status(runtime: Runtime, *, operator: str = "carnet") -> KeyStatus:
    counts = count_ciphertexts(runtime, operator=operator)
    with runtime.session_factory() as session:
        rows = session.execute(
            select(DataKey, Facility.name)
            .join(Facility, Facility.id == DataKey.facility_id)
            .order_by(Facility.name, DataKey.version)
        ).all()
        secrets = _secrets_per_kek(session)
    data_keys = [
        DataKeyStatus(
            id=dek.id,
            facility_id=dek.facility_id,
            facility_name=name,
            version=dek.version,
            kek_id=dek.kek_id,
            active=dek.active,
            created_at=dek.created_at,
            ciphertexts=counts.get(dek.id, 0),
        )
        for dek, name in rows
    ]
    known = {d.id for d in data_keys}
    keys = runtime.keys
    path = keys.path if isinstance(keys, FileKeyProvider) else None
    return KeyStatus(
        active_kek_id=keys.active_kek_id,
        kek_ids=keys.kek_ids if isinstance(keys, RotatableKeyProvider) else [keys.active_kek_id],
        key_file=path,
        key_file_mode=keys.mode if isinstance(keys, FileKeyProvider) else None,
        data_keys=data_keys,
        wrapped_secrets=secrets,
        orphan_ciphertexts=sum(n for dek, n in counts.items() if dek not in known),
    )
