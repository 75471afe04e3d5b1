"""ORU^R01 over a real MLLP connection: results and their lab report, units and reference
ranges kept; a correction (C) makes a new version, the old one kept; a message that fails on
its last result writes nothing."""

from __future__ import annotations

from carnet.interfaces.models import InterfaceLink
from carnet.patients.models import ResourceVersion
from carnet.records.models import DiagnosticReport, Observation
from carnet.runtime import Runtime
from tests.interfaces.conftest import Hospital
from tests.interfaces.helpers import Obx, Person, adt, err, msa, oru, send
from tests.interfaces.records import audit_of, counts, log_line, rows

PANEL = [
    Obx("718-7", "13.5", "g/dL", reference="12-16"),
    Obx("789-8", "4.6", "10*6/uL", reference="4.2-5.4", display="Erythrocytes"),
    Obx("6690-2", "11.2", "10*3/uL", reference="4-10", flags="H", display="Leukocytes"),
    Obx("777-3", "250", "10*3/uL", reference="150-400", display="Platelets"),
    Obx("5909-7", "see note", "", kind="ST", reference="", flags="", display="Blood smear"),
]


def _patient(listener: int, person: Person) -> None:
    [answer] = send(listener, adt("A04", f"REG-{person.ipp}", person, klass="O", visit=f"V-{person.ipp}"))
    assert msa(answer)[1] == "AA", msa(answer)


def test_results_and_report_are_filed_with_units_and_ranges(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="LAB1")
    _patient(listener, person)
    [answer] = send(listener, oru("R-1", person, PANEL))
    assert msa(answer)[1:3] == ["AA", "R-1"], msa(answer)
    observations = rows(runtime, Observation, facility_id=hospital.facility_id)
    assert len(observations) == 5
    by_code = {o.code: o for o in observations}
    assert (by_code["718-7"].value_number, by_code["718-7"].unit, by_code["718-7"].status) == (
        13.5,
        "g/dL",
        "final",
    )
    assert by_code["5909-7"].value_text == "see note" and by_code["5909-7"].value_number is None
    [report] = rows(runtime, DiagnosticReport, facility_id=hospital.facility_id)
    assert (report.code, report.status) == ("58410-2", "final")
    assert {o.report_id for o in observations} == {report.id}
    ranges = {
        link.target_id: (link.reference_range, link.abnormal_flags)
        for link in rows(runtime, InterfaceLink, kind="result")
    }
    assert ranges[by_code["6690-2"].id] == ("4-10", "H")
    assert ranges[by_code["718-7"].id] == ("12-16", "N")
    [event] = [e for e in audit_of(runtime, "interface:LAB") if e.kind == "phi:resource:transaction"]
    assert event.outcome == "success" and str(report.id) in event.resource_ids
    assert log_line(runtime, "R-1").patient_ids == str(report.patient_id)


def test_a_correction_is_a_new_version_and_the_old_one_stays(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="LAB2")
    _patient(listener, person)
    assert msa(send(listener, oru("C-1", person, PANEL[:2]))[0])[1] == "AA"
    corrected = [Obx("718-7", "12.9", "g/dL", status="C"), PANEL[1]]
    [answer] = send(listener, oru("C-2", person, corrected, status="C"))
    assert msa(answer)[1] == "AA", msa(answer)
    hb = next(o for o in rows(runtime, Observation, facility_id=hospital.facility_id) if o.code == "718-7")
    assert (hb.value_number, hb.status, hb.version_id) == (12.9, "corrected", 2)
    versions = rows(runtime, ResourceVersion, resource_id=hb.id)
    assert sorted(v.version_id for v in versions) == [1, 2]  # the first value is kept
    other = next(o for o in rows(runtime, Observation, facility_id=hospital.facility_id) if o.code == "789-8")
    assert other.version_id == 1  # the same value sent again is not a new version
    assert len(rows(runtime, DiagnosticReport, facility_id=hospital.facility_id)) == 1


def test_a_message_failing_on_its_last_result_writes_nothing(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    person = Person(ipp="LAB3")
    _patient(listener, person)
    before = counts(runtime, hospital.facility_id)
    broken = [*PANEL[:4], Obx("5909-7", "twelve", "g/dL")]  # NM that is not a number
    [answer] = send(listener, oru("B-1", person, broken))
    assert msa(answer)[1] == "AE"
    assert err(answer)[2] == "OBX^5^5" and err(answer)[3].startswith("102^")
    assert counts(runtime, hospital.facility_id) == before  # the four results before it: not written
    assert log_line(runtime, "B-1").status == "rejected"
    # Results of an unknown patient, and a correction of a report never received, are refused.
    [unknown] = send(listener, oru("B-2", Person(ipp="NOBODY"), PANEL[:1]))
    assert msa(unknown)[1] == "AE" and err(unknown)[2] == "PID^1^3"
    [orphan] = send(listener, oru("B-3", person, PANEL[:1], filler="NEVER", status="C"))
    assert msa(orphan)[1] == "AE" and "never received" in msa(orphan)[3]
    assert counts(runtime, hospital.facility_id) == before
    # A filler order number of another patient's report does not amend that report.
    other = Person(ipp="LAB4", given="PAUL", birth="19900101")
    _patient(listener, other)
    assert msa(send(listener, oru("B-4", other, PANEL[:1], filler="F9"))[0])[1] == "AA"
    before = counts(runtime, hospital.facility_id)
    [crossed] = send(listener, oru("B-5", person, [Obx("718-7", "9.9", status="C")], filler="F9", status="C"))
    assert msa(crossed)[1] == "AE" and "another patient's report" in msa(crossed)[3]
    assert counts(runtime, hospital.facility_id) == before
