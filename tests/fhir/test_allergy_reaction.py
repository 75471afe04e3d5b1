"""An allergy's reaction both ways: FHIR reaction[0].manifestation to the column, and back."""

from __future__ import annotations

from carnet.fhir.resources.allergy import allergy_input, allergy_to_fhir
from carnet.prescriptions.catalogue import ATC_SYSTEM

PATIENT = "6f1c2a52-8f0e-4a43-9e43-3a7e0d1b2c3d"


def _body(**extra: object) -> dict[str, object]:
    return {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": f"Patient/{PATIENT}"},
        "code": {"coding": [{"system": ATC_SYSTEM, "code": "J01C", "display": "Pénicillines"}]},
        "criticality": "high",
        **extra,
    }


def test_the_reaction_is_read_from_its_manifestations() -> None:
    body = _body(
        reaction=[
            {
                "manifestation": [
                    {"text": "Urticaire"},
                    {
                        "coding": [
                            {"system": "http://snomed.info/sct", "code": "39579001", "display": "Anaphylaxis"}
                        ]
                    },
                ]
            }
        ]
    )
    assert allergy_input(body).reaction == "Urticaire, Anaphylaxis"
    assert allergy_input(_body()).reaction is None


def test_the_reaction_is_written_as_a_manifestation() -> None:
    data = {
        "id": "0b1c2a52-8f0e-4a43-9e43-3a7e0d1b2c3d",
        "patient_id": PATIENT,
        "substance_code": "J01C",
        "substance_display": "Pénicillines",
        "criticality": "high",
        "clinical_status": "active",
        "reaction": "Urticaire",
    }
    assert allergy_to_fhir(data)["reaction"] == [{"manifestation": [{"text": "Urticaire"}]}]
    assert "reaction" not in allergy_to_fhir(data | {"reaction": None})
