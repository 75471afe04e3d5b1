"""Hand-written HL7 v2.5 samples of every supported type, checked against the v2.5 definitions
by hl7apy (fields and data types) and by carnet's segment-order grammars, then sent in a
sequence over MLLP; and the bad ones: NAKed with their reason, nothing changed."""

from __future__ import annotations

import pytest

from carnet.interfaces import hl7v2
from carnet.patients.models import Patient
from carnet.records.models import Observation
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter
from tests.interfaces.conftest import Hospital
from tests.interfaces.helpers import err, msa, send, valid_v25
from tests.interfaces.records import counts, log_line, rows

P12 = "|" * 12  # PV1-8 to PV1-18 empty, then PV1-19 (the visit number)
INS = "270057512345678"
PI = "IPP7^^^HOSP&1.2.250.1.999.1&ISO^PI"
PI2 = "IPP8^^^HOSP&1.2.250.1.999.1&ISO^PI"
PID = (
    f"PID|1||{PI}~{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||DUBOIS^MARIE^^^^^L||19650412|F"
    "|||3 RUE DES LILAS^^LYON^^69003^FRA||0478123456"
)
PID2 = f"PID|1||{PI2}||DUBOIS^MARI^^^^^L||19650412|F"  # a typo: the duplicate


def msh(kind: str, control: str, sender: str = "ADT|HOSP") -> str:
    return f"MSH|^~\\&|{sender}|CARNET|CARNET|20261206093000+0100||{kind}|{control}|P|2.5|||||FRA|8859/1"


EVN = "EVN||20261206093000+0100"


def pv1(location: str, rpps: str, klass: str = "I", visit: str = "VN7") -> str:
    return f"PV1|1|{klass}|{location}^101^1||||{rpps}^DUPONT^JEAN{P12}{visit}^^^HOSP^VN"


def samples(rpps: str) -> dict[str, str]:
    """One sample of each type, in an order a hospital could send them."""
    return {
        "ADT^A01": "\r".join([msh("ADT^A01^ADT_A01", "H-01"), EVN, PID, pv1("CARDIO", rpps)]),
        "ADT^A02": "\r".join([msh("ADT^A02^ADT_A02", "H-02"), EVN, PID, pv1("NEURO", rpps)]),
        "ADT^A12": "\r".join([msh("ADT^A12^ADT_A12", "H-03"), EVN, PID, pv1("CARDIO", rpps)]),
        "ADT^A08": "\r".join(
            [
                msh("ADT^A08^ADT_A01", "H-04"),
                EVN,
                PID.replace("0478123456", "0478000000"),
                pv1("CARDIO", rpps),
            ]
        ),
        "ORU^R01": "\r".join(
            [
                msh("ORU^R01^ORU_R01", "H-05", sender="LAB|LABO"),
                f"PID|1||{PI}||DUBOIS^MARIE",
                "PV1|1|I" + "|" * 17 + "VN7^^^HOSP^VN",
                "OBR|1||LAB-77^LABO|2951-2^Sodium^LN|||20261206080000+0100" + "|" * 18 + "F",
                "OBX|1|NM|2951-2^Sodium^LN||141|mmol/L|136-145|N|||F|||20261206080000+0100",
                "NTE|1||Hemolysed sample",
                "OBX|2|NM|2823-3^Potassium^LN||4.1|mmol/L|3.5-5.1|N|||F|||20261206080000+0100",
            ]
        ),
        "ADT^A03": "\r".join([msh("ADT^A03^ADT_A03", "H-06"), EVN, PID, pv1("CARDIO", rpps)]),
        "ADT^A13": "\r".join([msh("ADT^A13^ADT_A01", "H-07"), EVN, PID, pv1("CARDIO", rpps)]),
        "ADT^A11": "\r".join([msh("ADT^A11^ADT_A09", "H-08"), EVN, PID, pv1("CARDIO", rpps)]),
        "ADT^A04": "\r".join([msh("ADT^A04^ADT_A01", "H-09"), EVN, PID2, pv1("CARDIO", rpps, "O", "VN8")]),
        "ADT^A40": "\r".join([msh("ADT^A40^ADT_A39", "H-10"), EVN, PID, f"MRG|{PI2}"]),
    }


def test_every_sample_is_valid_v25_and_accepted_in_sequence(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    messages = samples(hospital.rpps)
    assert set(messages) == hl7v2.SUPPORTED_TYPES
    for kind, text in messages.items():
        assert valid_v25(text), f"{kind} sample is not valid HL7 v2.5"
        message = hl7v2.parse(text)
        hl7v2.check_structure(message, hl7v2.header(message))
    # Two connections, as two systems would: admissions, and the laboratory.
    for kind, text in messages.items():
        [answer] = send(listener, text)
        assert msa(answer)[1] == "AA", (kind, msa(answer))
    patients = rows(runtime, Patient, facility_id=hospital.facility_id)
    assert len(patients) == 2 and len([p for p in patients if p.merged_into_id]) == 1
    assert len(rows(runtime, Observation, facility_id=hospital.facility_id)) == 2
    stays = rows(runtime, Encounter, facility_id=hospital.facility_id)
    assert sorted(s.status for s in stays) == ["entered-in-error", "entered-in-error", "in-progress"]


@pytest.mark.parametrize(
    ("name", "change", "where", "code"),
    [
        ("segments out of order", lambda m: _swap(m, 1, 2), "", "100"),
        ("invalid birth date", lambda m: m.replace("19650412", "19651312"), "PID^1^7", "102"),
        (
            "invalid admission time",
            lambda m: m.replace("EVN||20261206093000+0100", "EVN||2026120625"),
            "EVN^1^2",
            "102",
        ),
        ("unknown location", lambda m: m.replace("CARDIO^101", "MOON^101"), "PV1^1^3", "204"),
        ("unknown attending", lambda m: m.replace("^DUPONT", "9^DUPONT"), "PV1^1^7", "204"),
        ("no visit number", lambda m: m.replace("VN7^^^HOSP^VN", ""), "PV1^1^19", "101"),
        ("bad patient class", lambda m: m.replace("PV1|1|I|", "PV1|1|Q|"), "PV1^1^2", "103"),
    ],
)
def test_a_bad_admission_is_refused_with_its_reason_and_changes_nothing(
    runtime: Runtime, hospital: Hospital, listener: int, name: str, change: object, where: str, code: str
) -> None:
    good = samples(hospital.rpps)["ADT^A01"]
    bad = change(good)  # type: ignore[operator]
    before = counts(runtime, hospital.facility_id)
    [answer] = send(listener, bad)
    assert msa(answer)[1] == "AE", (name, msa(answer))
    assert err(answer)[2] == where and err(answer)[3].startswith(f"{code}^"), (name, err(answer))
    assert counts(runtime, hospital.facility_id) == before
    line = log_line(runtime, "H-01")
    assert (line.status, line.ack_code) == ("rejected", "AE") and line.reason
    assert "DUBOIS" not in line.reason and "19651312" not in line.reason  # no value quoted
    # Fixed and sent again under the same control id: accepted (a refusal is not a replay).
    [fixed] = send(listener, good)
    assert msa(fixed)[1] == "AA"


def _swap(message: str, a: int, b: int) -> str:
    segments = message.split("\r")
    segments[a], segments[b] = segments[b], segments[a]
    return "\r".join(segments)


def test_not_hl7_unsupported_and_foreign_messages_are_rejected(
    runtime: Runtime, hospital: Hospital, listener: int
) -> None:
    before = counts(runtime, hospital.facility_id)
    [garbage] = send(listener, "hello, this is not HL7")
    assert msa(garbage)[1] == "AR"
    [a05] = send(listener, "\r".join([msh("ADT^A05^ADT_A05", "X-1"), EVN, PID, pv1("CARDIO", hospital.rpps)]))
    # A05 is neither supported nor registered: refused before anything else (and an alert).
    assert msa(a05)[1] == "AR" and err(a05)[3].startswith("200^") and "not registered" in msa(a05)[3]
    [stranger] = send(listener, samples(hospital.rpps)["ADT^A01"].replace("|ADT|HOSP|", "|OTHER|HOSP|"))
    assert msa(stranger)[1] == "AR" and "MSH-3" in msa(stranger)[3]
    [v23] = send(listener, samples(hospital.rpps)["ADT^A01"].replace("|P|2.5|", "|P|2.3|"))
    assert msa(v23)[1] == "AR" and err(v23)[3].startswith("203^")
    assert counts(runtime, hospital.facility_id) == before


ODD = (
    # repetitions, subcomponents, escapes, empty fields and components, a Z segment, other
    # delimiters declared in MSH-2, a trailing separator
    "MSH|^~\\&|LAB|LABO|CARNET|CARNET|20261206093000||ORU^R01^ORU_R01|X-1|P|2.5\r"
    f"{PID}\rZBE|1|\\F\\x\\S\\||^^&&~~\rOBX|1|ST|A^B&C&D^LN~E||x\\T\\y|||||F|",
    "MSH#$%*!|LAB|LABO|CARNET|CARNET|20261206093000||ORU$R01|X-2|P|2.5\rPID#1##A$B%C!D%E",
    "MSH|^~\\&",
)


@pytest.mark.parametrize("raw", [*samples("12345678901").values(), *ODD])
def test_the_parse_is_python_hl7s_own(raw: str) -> None:
    """carnet's parse (python-hl7's parser, its containers made more cheaply) gives what
    `hl7.parse` gives: the same tree of the same container classes, the same text back."""
    import hl7

    ours, theirs = hl7v2.parse(raw), hl7.parse(raw)
    assert ours == theirs and str(ours) == str(theirs)

    def shape(node: object) -> object:
        if isinstance(node, list):
            kind = next(
                k
                for k in (hl7.Segment, hl7.Field, hl7.Repetition, hl7.Component, hl7.Message)
                if isinstance(node, k)
            )
            return (kind, node.separator, [shape(child) for child in node])  # type: ignore[attr-defined]
        return node

    assert shape(ours) == shape(theirs)
    for segment, other in zip(ours, theirs, strict=True):
        assert str(segment) == str(other) and segment[1:3] == other[1:3]
        # Reading a field or a component gives the library's text of it.
        for index in range(len(other) + 2):
            field = other[index] if index < len(other) else None
            assert hl7v2.text(segment, index) == ("" if field is None else str(field).strip())
            first = field[0] if field else None
            for number in range(1, 5):
                expected = ""
                if isinstance(first, hl7.Repetition):
                    expected = str(first[number - 1]).strip() if number <= len(first) else ""
                elif first is not None and number == 1:
                    expected = str(first).strip()
                assert hl7v2.component(segment, index, number) == expected
