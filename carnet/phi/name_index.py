"""Filling the keyed name prefixes (patient_name_keys) of patients written before they existed.

Through the one audited elevated door, in small transactions, while the service runs: each
patient without keys has its two names decrypted in memory and its keys written; nothing leaves.
`carnet keys reindex-names` runs it; the re-encryption of `carnet keys rotate --reencrypt` ends
with it, so a rotated installation is always fully indexed.
"""

from __future__ import annotations

from carnet.org import models as _org_models  # noqa: F401  (the facilities the keys reference)
from carnet.patients.names import missing_name_keys, replace_name_keys
from carnet.phi.system import system_access
from carnet.runtime import Runtime

DEFAULT_BATCH = 500


def reindex_names(runtime: Runtime, *, batch_size: int = DEFAULT_BATCH, operator: str = "carnet") -> int:
    """Index every patient that has no name key yet; returns how many were indexed."""
    done = 0
    after = None  # keyset paging: a patient whose names give no key is not met twice
    while True:
        with system_access(runtime, reason="index patient name prefixes", operator=operator) as door:
            patients = missing_name_keys(door.session, after=after, limit=batch_size)
            for p in patients:
                decrypt = door.keyring.decrypt
                replace_name_keys(
                    door.session,
                    door.keyring.blind,
                    patient_id=p.id,
                    facility_id=p.facility_id,
                    family=decrypt(p.family_ct, table="patients", column="family", row_id=p.id),
                    given=decrypt(p.given_ct, table="patients", column="given", row_id=p.id),
                )
        done += len(patients)
        if len(patients) < batch_size:
            return done
        after = patients[-1].id
