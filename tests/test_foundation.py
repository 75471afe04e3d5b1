"""Foundation: migrations on both databases, encryption round trip, key errors."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from carnet.crypto.blind import IndexKind
from carnet.crypto.keyring import DecryptionError
from carnet.crypto.keys import FileKeyProvider
from carnet.db.engine import make_engine
from carnet.kernel.errors import ConfigurationError
from carnet.org.models import Facility
from carnet.phi.schema import metadata
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Settings


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == [], "models and migrations disagree: run scripts/regen-initial-migration"


def _facility(runtime: Runtime) -> uuid.UUID:
    with runtime.session_factory.begin() as session:
        facility = Facility(name="Hôpital Test", finess="750000001", city="Paris")
        session.add(facility)
        session.flush()
        runtime.keyring.create_data_key(session, facility.id)
        return facility.id


def test_field_encryption_round_trip_and_binding(runtime: Runtime) -> None:
    facility_id = _facility(runtime)
    row = uuid.uuid4()
    blob = runtime.keyring.encrypt(
        "Lefèvre", facility_id=facility_id, table="patients", column="family", row_id=row
    )
    assert blob is not None and b"Lef" not in blob
    assert runtime.keyring.decrypt(blob, table="patients", column="family", row_id=row) == "Lefèvre"
    # Bound to its row and column: a value moved elsewhere does not open.
    with pytest.raises(DecryptionError):
        runtime.keyring.decrypt(blob, table="patients", column="family", row_id=uuid.uuid4())
    with pytest.raises(DecryptionError):
        runtime.keyring.decrypt(blob, table="patients", column="given", row_id=row)


def test_blind_index_normalises_and_separates_kinds(sqlite_runtime: Runtime) -> None:
    blind = sqlite_runtime.keyring.blind
    assert blind.index(IndexKind.FAMILY, "Lefèvre-Dupont") == blind.index(
        IndexKind.FAMILY, " lefevre dupont "
    )
    assert blind.index(IndexKind.PHONE, "+33 6 12 34 56 78") == blind.index(IndexKind.PHONE, "06.12.34.56.78")
    assert blind.index(IndexKind.FAMILY, "martin") != blind.index(IndexKind.GIVEN, "martin")


def test_a_wrong_key_file_stops_carnet_at_start(sqlite_runtime: Runtime, tmp_path: object) -> None:
    _facility(sqlite_runtime)
    settings = sqlite_runtime.settings
    other = settings.var_dir / "other-keys.json"
    FileKeyProvider.create(other)
    with pytest.raises(ConfigurationError, match=r"wrong or damaged key file|wrong key file"):
        build_runtime(settings.model_copy(update={"key_file": other}))


def test_a_missing_key_file_is_a_clear_error(settings: Settings, sqlite_url: str) -> None:
    missing = settings.var_dir / "nope.json"
    with pytest.raises(ConfigurationError, match="not found"):
        build_runtime(settings.model_copy(update={"database_url": sqlite_url, "key_file": missing}))


def test_a_stale_schema_is_refused(settings: Settings, tmp_path: object) -> None:
    url = f"sqlite:///{settings.var_dir / 'empty.db'}"
    with pytest.raises(ConfigurationError, match="carnet db upgrade"):
        build_runtime(settings.model_copy(update={"database_url": url}))


def test_timestamps_are_utc_on_both_databases(runtime: Runtime) -> None:
    facility_id = _facility(runtime)
    with runtime.session_factory() as session:
        key = session.execute(sa.text("select 1")).scalar()
        assert key == 1
        from carnet.crypto.models import DataKey

        stored = session.scalars(sa.select(DataKey).where(DataKey.facility_id == facility_id)).one()
        assert stored.created_at.tzinfo is not None
