"""`carnet exports list|approve|refuse` as a security officer runs them (a real process against a
real server): listing is audited and shows no patient data; approving needs the officer to sign
in and give a fresh proof, as the console does. Shell access alone (the database, the key file)
approves nothing: a wrong password, a replayed code or the requester's own account leave the
request pending."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pyotp
import sqlalchemy as sa

from carnet.access.models import ExportRequest
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.crypto.keys import FileKeyProvider
from carnet.identity import sessions
from carnet.kernel import clock
from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings
from tests.factories import link_care, make_facility, make_physician, register_patient
from tests.fhir.conftest import serve
from tests.web.conftest import make_person

CARNET = str(Path(sys.executable).with_name("carnet"))
PURPOSE = "revue de la file active pour l'audit qualité"


def _carnet(var: Path, db: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env |= {"CARNET_VAR_DIR": str(var), "CARNET_ENV": "demo", "CARNET_DATABASE_URL": db}
    return subprocess.run(
        [CARNET, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def _status(runtime_url: str, export_id: str) -> str:
    engine = sa.create_engine(runtime_url)
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(ExportRequest.status).where(ExportRequest.id == uuid.UUID(export_id))
        ).scalar_one()
    engine.dispose()
    return str(found)


def _into_a_later_step(movable: clock.MovableClock, *, steps: int) -> dt.datetime:
    """Move the server's clock to one second into a TOTP step `steps` steps ahead, and return
    that moment: a code of that step (and of the next) stays valid for most of a minute however
    slowly the command starts on a loaded machine (the server accepts one step either side)."""
    now = clock.now()
    ahead = dt.timedelta(seconds=(steps - 1) * 30 + 30 - now.timestamp() % 30 + 1)
    movable.advance(ahead)
    return now + ahead


def test_an_officer_decides_from_the_terminal_and_the_shell_alone_cannot(
    tmp_path: Path, sqlite_template: Path, movable_clock: clock.MovableClock
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    FileKeyProvider.create(var / "keys.json")
    shutil.copy(sqlite_template, tmp_path / "carnet.db")
    db = f"sqlite:///{tmp_path / 'carnet.db'}"
    # A demo installation: there a code stands in for the passkey proof (production asks the
    # passkey, and then this command sends the officer to the console).
    runtime = build_runtime(
        Settings(env=Environment.DEMO, var_dir=var, origin="http://localhost:8000", database_url=db)
    )
    try:
        facility = make_facility(runtime)
        doctor = make_physician(runtime, facility)
        assert doctor.practitioner_id is not None and doctor.account_id is not None
        patient = register_patient(runtime, facility, family="Suivi").id
        link_care(
            runtime,
            patient_id=uuid.UUID(patient),
            practitioner_id=doctor.practitioner_id,
            facility_id=facility,
        )
        officer = make_person(runtime, "dpo.claire", roles=(Role.SECURITY_OFFICER,), facility_id=facility)
        with runtime.session_factory.begin() as session:
            issued = sessions.open_session(
                session,
                account_id=doctor.account_id,
                privileged=False,
                second_factor_method="totp",
                address="127.0.0.1",
                user_agent="cli tests",
            )
        for url in serve(runtime):
            http = httpx.Client(base_url=url, headers={"Cookie": f"carnet_session={issued.token}"})
            asked = []
            for _ in range(2):
                kicked = http.get(
                    "/fhir/$export",
                    params={"purpose": PURPOSE},
                    headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
                )
                assert kicked.status_code == 202, kicked.text
                asked.append(kicked.headers["X-Carnet-Export-Request"])
            first, second = asked

            listed = _carnet(var, db, "exports", "list")
            assert listed.returncode == 0, listed.stderr
            assert first[:8] in listed.stdout and second[:8] in listed.stdout and "Suivi" not in listed.stdout

            totp = pyotp.TOTP(officer.totp_secret)
            now = clock.now()
            # The shell without the officer's password: nothing.
            wrong = _carnet(
                var,
                db,
                "exports",
                "approve",
                first,
                "--username",
                "dpo.claire",
                "--server",
                url,
                stdin=f"not the password\n{totp.at(now)}\n{totp.at(now + dt.timedelta(seconds=30))}\n",
            )
            assert wrong.returncode == 2 and "sign-in refused" in wrong.stderr
            # The password and one code, replayed as the proof: refused (a code proves once).
            code = totp.at(now)
            replayed = _carnet(
                var,
                db,
                "exports",
                "approve",
                first,
                "--username",
                "dpo.claire",
                "--server",
                url,
                stdin=f"{officer.password}\n{code}\n{code}\n",
            )
            assert replayed.returncode == 2 and "proof was refused" in replayed.stderr
            assert _status(db, first) == "pending"

            later = _into_a_later_step(movable_clock, steps=3)  # the server's clock: codes of later steps
            approved = _carnet(
                var,
                db,
                "exports",
                "approve",
                first,
                "--username",
                "dpo.claire",
                "--server",
                url,
                "--note",
                "vu avec le DPO",
                stdin=f"{officer.password}\n{totp.at(later)}\n{totp.at(later + dt.timedelta(seconds=30))}\n",
            )
            assert approved.returncode == 0, approved.stderr
            assert f"export request {first} approved" in approved.stdout
            assert _status(db, first) == "approved"
            refused = _carnet(
                var,
                db,
                "exports",
                "refuse",
                second,
                "--username",
                "dpo.claire",
                "--server",
                url,
                "--note",
                "périmètre trop large",
                stdin=f"{officer.password}\n{totp.at(_into_a_later_step(movable_clock, steps=2))}\n",
            )
            assert refused.returncode == 0, refused.stderr
            assert _status(db, second) == "rejected"
            no_note = _carnet(var, db, "exports", "refuse", second, "--username", "x", "--note", "")
            assert no_note.returncode == 2 and "Traceback" not in no_note.stderr
    finally:
        runtime.close()
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        kinds = conn.execute(
            sa.select(AuditEvent.kind, AuditEvent.outcome, AuditEvent.username).order_by(AuditEvent.seq)
        ).all()
    engine.dispose()
    assert ("phi:export:approved", "success", "dpo.claire") in kinds
    assert ("phi:export:rejected", "success", "dpo.claire") in kinds
    assert any(k == "phi:export:listed" and u.startswith("system:cli") for k, _, u in kinds)
