"""Run by GNU Health's own interpreter (its venv), never by carnet's: writes the benchmark's
patients into a GNU Health database through Tryton's ORM, as GNU Health's own code would.

    <gnuhealth venv>/bin/python tryton_side.py CONFIG DATABASE < patients.jsonl

Each input line: {"family", "given", "birth_date", "gender", "ins", "phone", "email"}. Prints
one JSON line: the gnuhealth.patient ids in input order.
"""

from __future__ import annotations

import datetime as dt
import json
import sys


def main() -> None:
    config, database = sys.argv[1], sys.argv[2]
    from trytond.config import config as tryton_config  # type: ignore[import-not-found]

    tryton_config.update_etc(config)
    from trytond.pool import Pool  # type: ignore[import-not-found]
    from trytond.transaction import Transaction  # type: ignore[import-not-found]

    Pool.start()
    pool = Pool(database)
    pool.init()
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    ids: list[int] = []
    with Transaction().start(database, 0, context={"language": "en"}) as transaction:
        party_model = pool.get("party.party")
        patient_model = pool.get("gnuhealth.patient")
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            # One party per call: GNU Health's Party.create creates the whole list once per entry.
            parties = [
                party_model.create(
                    [
                        {
                            "name": r["given"],
                            "lastname": r["family"],
                            "is_person": True,
                            "is_patient": True,
                            "dob": dt.date.fromisoformat(r["birth_date"]),
                            "gender": "f" if r["gender"] == "female" else "m",
                            "ref": r["ins"],
                            "code": "BENCH-" + r["ins"],
                            "fed_country": "FRA",
                            "federation_account": "FRA" + r["ins"],
                            "contact_mechanisms": [
                                (
                                    "create",
                                    [
                                        {"type": "phone", "value": r["phone"]},
                                        {"type": "email", "value": r["email"]},
                                    ],
                                )
                            ],
                        }
                    ]
                )[0]
                for r in chunk
            ]
            patients = patient_model.create([{"party": p.id} for p in parties])
            ids.extend(p.id for p in patients)
            transaction.commit()
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
