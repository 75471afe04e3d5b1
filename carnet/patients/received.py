"""A Patient kept as received (from an import, a FHIR create or update, a transaction Bundle)
follows the changes carnet makes through its own doors (a demographic edit, HL7 ADT, an INS
update, a merge): the elements carnet manages are re-rendered into it from its columns, and
only those whose value changed; every other element stays as it was received.

Which element carnet reads each of its fields from (and so writes back) is the FHIR mapping's
rule (carnet/fhir/resources/patient.py `_patient_fields`): the official name (else the first),
the first INS identifier, the first phone and email, the first address, the first
generalPractitioner that is one of carnet's practitioners."""

from __future__ import annotations

import copy
import json
from typing import Any

from carnet.access.policy import PATIENT_CONTACT, PATIENT_IDENTITY
from carnet.patients.models import Patient
from carnet.patients.views import patient_data
from carnet.phi.kernel import GuardedTx
from carnet.phi.steps import received_of

# The same systems and extension as the FHIR mapping (the domain does not import the API).
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"
OPPOSES_OTHER_FACILITIES = "https://carnet.example.org/fhir/StructureDefinition/opposes-other-facilities"
# carnet's own fields, compared before and after a change (never the resource itself).
MANAGED = PATIENT_IDENTITY | PATIENT_CONTACT
_ADDRESS_PARTS = {"line": "line", "city": "city", "postalCode": "postalCode", "postal_code": "postalCode"}
_ADDRESS_PARTS |= {"country": "country"}


def kept_state(tx: GuardedTx, patient: Patient) -> dict[str, Any] | None:
    """carnet's values of a patient kept as received, before a change (None: nothing kept,
    nothing to follow, nothing decrypted)."""
    if patient.received_ct is None:
        return None
    return patient_data(tx, patient, MANAGED)


def follow(tx: GuardedTx, patient: Patient, before: dict[str, Any] | None) -> None:
    """After a change of `patient` (its columns already written): the kept resource re-renders
    what changed. Call before the version's snapshot, so the snapshot holds the result."""
    if before is None or patient.received_ct is None:
        return
    kept = received_of(tx, patient)
    if kept is None:
        return
    now = reconciled(kept, before, patient_data(tx, patient, MANAGED))
    if now != kept:
        text = json.dumps(now, ensure_ascii=False, sort_keys=True)
        patient.received_ct = tx.enc(text, patient.facility_id, "patients", "received", patient.id)
        tx.session.flush()


def reconciled(kept: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`kept` with each element carnet manages whose value changed from `before` to `after`
    (carnet's fields, as `patient_data` gives them) rendered anew; the rest untouched."""
    out = copy.deepcopy(kept)

    def changed(field: str) -> bool:
        return before.get(field) != after.get(field)

    if changed("family") or changed("given"):
        _name(out, after, family=changed("family"), given=changed("given"))
    if changed("birth_date") and after.get("birth_date"):
        out["birthDate"] = after["birth_date"]
    if changed("gender") and after.get("gender"):
        out["gender"] = after["gender"]
    if changed("active") and after.get("active") is not None:
        out["active"] = bool(after["active"])
    if changed("ins"):
        _identifier(out, after.get("ins"))
    for system in ("phone", "email"):
        if changed(system):
            _telecom(out, system, after.get(system))
    if changed("address"):
        _address(out, before.get("address") or {}, after.get("address") or {})
    if changed("designated_physician_id"):
        _physician(out, before.get("designated_physician_id"), after.get("designated_physician_id"))
    if changed("opposes_other_facilities") and after.get("opposes_other_facilities") is not None:
        _opposition(out, bool(after["opposes_other_facilities"]))
    if changed("merged_into_id"):
        _merged(out, before.get("merged_into_id"), after.get("merged_into_id"))
    return out


def _name(out: dict[str, Any], after: dict[str, Any], *, family: bool, given: bool) -> None:
    names = [n for n in out.get("name") or [] if isinstance(n, dict)]
    if not names:
        out["name"] = [{"use": "official", "family": after.get("family"), "given": [after.get("given")]}]
        return
    name = next((n for n in names if n.get("use") == "official"), names[0])
    if family and after.get("family"):
        name["family"] = after["family"]
    if given and after.get("given"):
        name["given"] = [after["given"]]
    # The name's text was the sender's rendering of the name now changed: it would contradict it.
    name.pop("text", None)


def _identifier(out: dict[str, Any], ins: str | None) -> None:
    identifiers = [i for i in out.get("identifier") or [] if isinstance(i, dict)]
    found = next((i for i in identifiers if i.get("system") == INS_SYSTEM), None)
    if ins is None:
        if found is not None:
            identifiers.remove(found)
    elif found is not None:
        found["value"] = ins
    else:
        identifiers.append({"system": INS_SYSTEM, "value": ins})
    if identifiers:
        out["identifier"] = identifiers
    else:
        out.pop("identifier", None)


def _telecom(out: dict[str, Any], system: str, value: str | None) -> None:
    telecom = [t for t in out.get("telecom") or [] if isinstance(t, dict)]
    found = next((t for t in telecom if t.get("system") == system and t.get("value")), None)
    if value is None:
        if found is not None:
            telecom.remove(found)
    elif found is not None:
        found["value"] = value
    else:
        telecom.append({"system": system, "value": value})
    if telecom:
        out["telecom"] = telecom
    else:
        out.pop("telecom", None)


def _address(out: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    addresses = [a for a in out.get("address") or [] if isinstance(a, dict)]
    if not addresses:
        if after:
            out["address"] = [_address_parts({}, {}, after)]
        return
    addresses[0] = _address_parts(addresses[0], before, after)
    out["address"] = addresses


def _address_parts(address: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Only the parts carnet holds and changed: a state, district or period stays."""
    for key in set(before) | set(after):
        element = _ADDRESS_PARTS.get(key)
        if element is None or before.get(key) == after.get(key):
            continue
        value = after.get(key)
        if not value:
            address.pop(element, None)
        else:
            address[element] = [value] if element == "line" else value
    return address


def _physician(out: dict[str, Any], before: str | None, after: str | None) -> None:
    kept = [
        g
        for g in out.get("generalPractitioner") or []
        if not (isinstance(g, dict) and before and g.get("reference") == f"Practitioner/{before}")
    ]
    if after:
        kept.insert(0, {"reference": f"Practitioner/{after}"})
    if kept:
        out["generalPractitioner"] = kept
    else:
        out.pop("generalPractitioner", None)


def _opposition(out: dict[str, Any], opposes: bool) -> None:
    extensions = [e for e in out.get("extension") or [] if isinstance(e, dict)]
    found = next((e for e in extensions if e.get("url") == OPPOSES_OTHER_FACILITIES), None)
    if found is not None:
        found["valueBoolean"] = opposes
    else:
        extensions.append({"url": OPPOSES_OTHER_FACILITIES, "valueBoolean": opposes})
    out["extension"] = extensions


def _merged(out: dict[str, Any], before: str | None, after: str | None) -> None:
    """A merged duplicate is replaced-by the record kept (as carnet renders it); an unmerge
    takes that link away again."""
    links = [
        link
        for link in out.get("link") or []
        if not (
            isinstance(link, dict)
            and before
            and link.get("type") == "replaced-by"
            and (link.get("other") or {}).get("reference") == f"Patient/{before}"
        )
    ]
    if after:
        links.append({"other": {"reference": f"Patient/{after}"}, "type": "replaced-by"})
    if links:
        out["link"] = links
    else:
        out.pop("link", None)
