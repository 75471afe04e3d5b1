"""A lab report amended under break-the-glass (fhirpy).

Policy (carnet.access.policy WRITE_RULES): break-the-glass must not buy lasting write power for
records that create care relationships (stays, appointments, the designated physician). A lab
report makes none: correcting one is emergency care, like correcting a result, so a physician
may amend it during the one-hour access, audited as break-the-glass. When the access ends, so
does the power; a nurse (who never signs lab reports) gets none from breaking the glass."""

from __future__ import annotations

import datetime as dt

import pytest
from fhirpy.base.exceptions import ResourceNotFound
from sqlalchemy import select

from carnet.audit.models import AuditEvent
from carnet.kernel.clock import MovableClock
from carnet.phi.gate import Gate
from tests.factories import make_nurse, make_physician
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import _clinic, _exposures, _report, _result


def test_a_lab_report_is_amended_under_break_the_glass_only_while_it_lasts(
    fhir_server: Server, movable_clock: MovableClock
) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    hb = client.resource("Observation", **_result(f"Patient/{patient_id}", value=6.1))
    hb.save()
    report = client.resource(
        "DiagnosticReport", **_report(f"Patient/{patient_id}", [f"Observation/{hb['id']}"])
    )
    report.save()

    # An emergency physician outside the care team, and a nurse, both break the glass.
    urgent = make_physician(runtime, facility)
    nurse = make_nurse(runtime, facility)
    for actor in (urgent, nurse):
        Gate(runtime, actor).break_glass(
            patient_id=patient_id, reason="emergency", justification="hémorragie"
        )

    # The physician amends the report: version 2, the author in Provenance, audited as break-the-glass.
    er = fhir_server.client_for(urgent)
    current = er.reference("DiagnosticReport", report["id"]).to_resource()
    current["status"] = "corrected"
    current["conclusion"] = "Anémie sévère : transfusion."
    current.save()
    assert current["meta"]["versionId"] == "2"
    provenance = er.resources("Provenance").search(target=f"DiagnosticReport/{report['id']}").fetch()
    assert provenance[0]["agent"][0]["who"]["reference"] == f"Practitioner/{urgent.practitioner_id}"
    with runtime.session_factory() as session:
        reason = session.scalar(
            select(AuditEvent.policy_reason).where(
                AuditEvent.account_id == urgent.account_id,
                AuditEvent.kind == "phi:resource:update",
                AuditEvent.outcome == "success",
            )
        )
    assert reason is not None and "break_glass" in reason and "break-the-glass" in reason

    # The nurse cannot, glass broken or not: refused like a missing record, audited, unexposed.
    exposed = _exposures(runtime, nurse, "DiagnosticReport")
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(nurse).resource(
            "DiagnosticReport", **dict(current.serialize(), conclusion="Autre.")
        ).save()
    assert audit_rows(runtime, nurse.account_id)[-1] == ("phi:resource:update", "denied", "DiagnosticReport")
    assert _exposures(runtime, nurse, "DiagnosticReport") == exposed

    # An hour later the access has ended, and with it the power to amend: nothing lasts.
    movable_clock.advance(dt.timedelta(hours=1, minutes=1))
    later = fhir_server.client_for(urgent)
    with pytest.raises(ResourceNotFound):
        later.resource("DiagnosticReport", **dict(current.serialize(), conclusion="Encore.")).save()
    assert audit_rows(runtime, urgent.account_id)[-1] == ("phi:resource:update", "denied", "DiagnosticReport")
    read = fhir_server.client_for(doctor).reference("DiagnosticReport", report["id"]).to_resource()
    assert read["meta"]["versionId"] == "2" and read["conclusion"] == "Anémie sévère : transfusion."
