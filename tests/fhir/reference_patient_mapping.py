"""The Patient mapper before s12-edge (carnet/fhir/resources/patient.py at e8efcf4), kept as
the reference of tests/fhir/test_patient_mapping.py."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.patient import Patient

from carnet.fhir.core import shapes
from carnet.fhir.core.api import checked
from carnet.fhir.core.mapping import as_received, clean, meta, ref
from carnet.fhir.core.model_check import conforms
from carnet.fhir.resources.patient import INS_SYSTEM, OPPOSES_OTHER_FACILITIES


def patient_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    """The Patient as received (for a reader of every field: carnet's managed elements follow
    its changes, see carnet/patients/received.py), else rendered from carnet's columns."""
    received = as_received(d)
    if received is not None:
        return received if conforms(received) else checked(Patient, received)
    telecom = []
    if d.get("phone"):
        telecom.append({"system": "phone", "value": d["phone"]})
    if d.get("email"):
        telecom.append({"system": "email", "value": d["email"]})
    name = None
    if d.get("family") or d.get("given"):
        name = [
            clean(
                {
                    "use": "official",
                    "family": d.get("family"),
                    "given": [d["given"]] if d.get("given") else None,
                }
            )
        ]
    address = None
    if isinstance(d.get("address"), dict):
        a = d["address"]
        address = [
            clean(
                {
                    "line": [a["line"]] if a.get("line") else None,
                    "city": a.get("city"),
                    "postalCode": a.get("postalCode") or a.get("postal_code"),
                    "country": a.get("country"),
                }
            )
        ]
    extension = None
    if d.get("opposes_other_facilities") is not None:
        extension = [{"url": OPPOSES_OTHER_FACILITIES, "valueBoolean": bool(d["opposes_other_facilities"])}]
    resource = clean(
        {
            "resourceType": "Patient",
            "id": d["id"],
            "meta": meta(d),
            "extension": extension,
            "identifier": [{"system": INS_SYSTEM, "value": d["ins"]}] if d.get("ins") else None,
            "active": d.get("active"),
            "name": name,
            "telecom": telecom,
            "gender": d.get("gender"),
            "birthDate": d.get("birth_date"),
            "address": address,
            "generalPractitioner": [ref("Practitioner", d["designated_physician_id"])]
            if d.get("designated_physician_id")
            else None,
            "managingOrganization": ref("Organization", d.get("facility_id")),
            "link": _patient_links(d),
        }
    )
    # The mapper's own shape is valid R4 at a fraction of the R4B model's cost; else the model decides.
    return resource if shapes.patient_ok(resource) else checked(Patient, resource)


def _patient_links(d: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A merged duplicate points to the record kept (replaced-by); the kept one to its duplicates."""
    links = []
    if d.get("merged_into_id"):
        links.append({"other": ref("Patient", d["merged_into_id"]), "type": "replaced-by"})
    links.extend({"other": ref("Patient", other), "type": "replaces"} for other in d.get("replaces") or [])
    return links or None
