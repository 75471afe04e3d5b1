"""The registry of encrypted columns is complete: rotation and the dump test forget nothing."""

from __future__ import annotations

from sqlalchemy import LargeBinary

from carnet.phi.encrypted_columns import ENCRYPTED_TABLES, encrypted_columns
from carnet.phi.schema import metadata


def test_every_ciphertext_column_of_every_model_is_registered() -> None:
    in_models = {
        (table.name, column.name)
        for table in metadata.sorted_tables
        for column in table.columns
        if column.name.endswith("_ct") and isinstance(column.type, LargeBinary)
    }
    registered = set(encrypted_columns())
    assert in_models - registered == set(), "add these columns to carnet/phi/encrypted_columns.py"
    assert registered - in_models == set(), "the registry names columns that are not ciphertexts"
    assert len(registered) == len(encrypted_columns()), "a column is registered twice"


def test_no_model_has_a_ciphertext_column_of_another_type() -> None:
    odd = [
        f"{table.name}.{column.name}"
        for table in metadata.sorted_tables
        for column in table.columns
        if column.name.endswith("_ct") and not isinstance(column.type, LargeBinary)
    ]
    assert odd == []


def test_every_registered_table_knows_where_its_facility_is() -> None:
    for spec in ENCRYPTED_TABLES:
        facility = spec.facility_column()
        assert facility.name == "facility_id"
        if spec.facility_model is not None:
            assert spec.parent_key is not None and spec.parent_key in spec.table.c
        # The query that rotation pages through compiles for this table.
        str(spec.select_rows(after=None, limit=10))
