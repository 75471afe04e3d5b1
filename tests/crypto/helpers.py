"""Seed encrypted patients through the audited system door, keeping their plaintexts to check.

Values are long enough (family names of 6+ letters, formatted phones, 15-digit identifiers) that
a random ciphertext cannot contain one by chance, so "not found in the dump" means something.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from faker import Faker
from sqlalchemy import select

from carnet.crypto.blind import IndexKind
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.phi.encrypted_columns import aad_field
from carnet.phi.system import system_access
from carnet.runtime import Runtime

CARNET = Path(sys.executable).with_name("carnet")

# Patient attribute -> blind index kind, for the indexed fields.
_INDEXED = {
    "ins": IndexKind.IDENTIFIER,
    "family": IndexKind.FAMILY,
    "given": IndexKind.GIVEN,
    "birth_date": IndexKind.BIRTH_DATE,
    "phone": IndexKind.PHONE,
    "email": IndexKind.EMAIL,
}
FIELDS = ("ins", "family", "given", "birth_date", "address", "phone", "email")


@dataclass(frozen=True)
class PlainPatient:
    id: uuid.UUID
    facility_id: uuid.UUID
    ins: str
    family: str
    given: str
    birth_date: str
    address: str
    phone: str
    email: str

    def fields(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FIELDS}


def create_facility(
    runtime: Runtime, *, name: str = "Hôpital Saint-Exemple", finess: str = "750000001"
) -> uuid.UUID:
    with runtime.session_factory.begin() as session:
        facility = Facility(name=name, finess=finess, city="Paris")
        session.add(facility)
        session.flush()
        runtime.keyring.create_data_key(session, facility.id)
        return facility.id


def make_patients(count: int, facility_id: uuid.UUID, *, seed: int = 7) -> list[PlainPatient]:
    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    patients: list[PlainPatient] = []
    while len(patients) < count:
        family = fake.last_name()
        if len(family) < 6:
            continue
        i = len(patients)
        given = fake.first_name()
        birth = fake.date_of_birth(minimum_age=0, maximum_age=100)
        digits = f"{fake.random_number(digits=8, fix_len=True)}"
        phone = f"06 {digits[0:2]} {digits[2:4]} {digits[4:6]} {digits[6:8]}"
        ins = f"{1 + i % 2}{birth:%y%m}{fake.random_number(digits=10, fix_len=True)}"
        address = json.dumps(
            {"line": fake.street_address(), "postalCode": fake.postcode(), "city": fake.city()},
            ensure_ascii=False,
        )
        email = f"{given.lower()}.{family.lower()}.{i}@patients-{seed}.example.fr"
        patients.append(
            PlainPatient(
                id=uuid.uuid4(),
                facility_id=facility_id,
                ins=ins,
                family=family,
                given=given,
                birth_date=birth.isoformat(),
                address=address,
                phone=phone,
                email=email,
            )
        )
    return patients


def insert_patients(runtime: Runtime, patients: list[PlainPatient]) -> None:
    keyring = runtime.keyring
    now = dt.datetime.now(dt.UTC)
    with system_access(runtime, reason="test: seed patients for the encryption tests") as access:
        for p in patients:
            values: dict[str, object] = {}
            for name, plain in p.fields().items():
                column = f"{name}_ct"
                values[column] = keyring.encrypt(
                    plain, facility_id=p.facility_id, table="patients", column=aad_field(column), row_id=p.id
                )
                if name in _INDEXED:
                    values[f"{name}_bi"] = keyring.index(_INDEXED[name], plain)
            access.session.add(
                Patient(
                    id=p.id,
                    facility_id=p.facility_id,
                    gender="unknown",
                    created_at=now,
                    updated_at=now,
                    **values,
                )
            )


def read_patients(runtime: Runtime) -> dict[uuid.UUID, dict[str, str | None]]:
    """Every patient's identifying fields, decrypted (what a reader sees)."""
    out: dict[uuid.UUID, dict[str, str | None]] = {}
    with system_access(runtime, reason="test: read back patients after rotation") as access:
        for row in access.session.scalars(select(Patient)):
            out[row.id] = decrypt_patient(runtime, row)
    return out


def decrypt_patient(runtime: Runtime, row: Patient) -> dict[str, str | None]:
    return {
        name: runtime.keyring.decrypt(
            getattr(row, f"{name}_ct"), table="patients", column=name, row_id=row.id
        )
        for name in FIELDS
    }


def cli_env(runtime: Runtime, **overrides: str) -> dict[str, str]:
    settings = runtime.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env.update(
        CARNET_ENV="test",
        CARNET_VAR_DIR=str(settings.var_dir),
        CARNET_DATABASE_URL=settings.resolved_database_url,
        CARNET_KEY_FILE=str(settings.resolved_key_file),
        COLUMNS="200",
    )
    env.update(overrides)
    return env


def run_cli(
    args: list[str], env: dict[str, str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CARNET), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
