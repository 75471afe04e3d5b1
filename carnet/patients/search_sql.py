"""The Patient search's statements, built once per shape and bound per request.

A search's statement depends on the request only through values (the blind indexes of its
terms, the actor's ids and facilities, now, the page): its shape (which criteria, which
relationships open, which of the actor's ids exist, the dialect's way of binding a list) is
one of a few. Building the SQLAlchemy expression tree again for every request was a fifth of a
name search's cost; here it is built once per shape (`search_statement`) and each request binds
`search_params`. The rules are those of the one expression builders (care.patient_filter,
names.name_candidates): the same functions, given bound parameters instead of values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import LargeBinary, Select, bindparam, select

from carnet.patients.models import Patient
from carnet.patients.names import bound_name_candidates
from carnet.phi import care

# A name search decrypts at most this many of the actor's own patients.
CARE_SET_LIMIT = 2000

Kind = Literal["identifier", "birth", "name"]


@dataclass(frozen=True)
class StatementShape:
    """`kind`: an identifier, family + birth date, or a name among one's own patients;
    `terms`: the names of the criteria's bound values (which blind indexes or name keys);
    `scope`: the actor's care filter's shape."""

    kind: Kind
    terms: tuple[str, ...]
    scope: care.FilterShape


def _blind(name: str) -> Any:
    return bindparam(name, type_=LargeBinary())


# The blind index column each criterion's value is compared with.
_COLUMNS = {
    "ins_bi": Patient.ins_bi,
    "family_bi": Patient.family_bi,
    "birth_date_bi": Patient.birth_date_bi,
    "given_bi": Patient.given_bi,
}


@functools.lru_cache(maxsize=512)
def search_statement(shape: StatementShape) -> Select[Any] | None:
    """The search's statement, its values bound (`search_params`); None when no relationship
    of the actor's roles opens a patient to this search (`care.patient_filter`'s None).

    A merged duplicate is found through the record it was merged into, never by a search.
    A specific search (identifier, family + birth date) pages in SQL (`offset`, `limit`); a
    name alone is matched after decryption, over at most CARE_SET_LIMIT candidates narrowed
    by the keyed name prefixes when the terms have any."""
    scope = care.bound_patient_filter(shape.scope)
    if scope is None:
        return None
    if shape.kind == "name":
        criteria = bound_name_candidates(shape.terms)
    else:
        criteria = [_COLUMNS[name] == _blind(name) for name in shape.terms]
    query = select(Patient).where(scope, Patient.merged_into_id.is_(None), *criteria).order_by(Patient.id)
    if shape.kind == "name":
        return query.limit(CARE_SET_LIMIT)
    return query.offset(bindparam("offset")).limit(bindparam("limit"))
