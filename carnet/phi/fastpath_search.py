"""The gate's fast read of one patient's chart section: a FHIR search by patient
(`GET /fhir/Observation?patient=X`, Condition, AllergyIntolerance, MedicationRequest, Encounter,
DiagnosticReport ...) and each section `$everything` reads, in two round trips on PostgreSQL.

The same variant of `GateCore._run` as the patient read (carnet/phi/fastpath.py), on the same
machinery: its first pipeline (facility scope, account and grants, containment state, the
patient row, the actor's relationships to the patient) carries one statement more, the
section's own (what the body will ask: `select(Record).where(patient_id = X).order_by(...)
.limit(SECTION_LIMIT)`, declared by the domain beside its operation), sent after the scope is
entered so row-level security holds for it. Then the operation's own body runs unchanged: it
takes the patient (`tx.patient`), decides (`tx.authorize`, on the prefetched relationships),
and only then asks for its rows (`tx.records`), which are served from the pipeline when the
body's statement is the declared one (same SQL shape, same values: SQLAlchemy's cache key) and
read from the database as usual otherwise. The rows were read before the decision and are used
only after it: a refusal drops them unseen. Then the closing pipeline: exposure rows, audit
append, commit. A body that asks anything else (a note's versions, a report's results) asks the
database through the session, as on the general path.

The Patient search (`patient_search`: an identifier, family + birth date, a name among one's
own patients) runs on the same machinery without reading a patient ahead: the first pipeline
enters the scope and reads the account, its grants and the containment state; the body runs
unchanged (its specificity rules, its decisions, the names it decrypts) and asks its
candidates with `tx.patients(statement, values)`, a statement built once per shape
(carnet/patients/search_sql.py): here it runs as a round trip of carnet.db.roundtrip (prepared
once per connection, no ORM), and when the candidates are a handful (`few`) the same statement brings
each one's relationships to the actor (the tagged statement of `care`, matched on the
candidates), so the relationships the body then asks are answered without a third round trip,
as `care.relationships_of` would answer them. The closing pipeline carries the exposure rows,
the search's detection events (when Redis counts them) and the audit append with the commit.

It declines, as the patient read does, for anything but a staff session on PostgreSQL (tokens
and their category limits, patient actors, SQLite, unknown ledgers or writers) and when the
scope it set is not the kernel's; the one path then runs, having done nothing yet.
tests/phi/test_fastpath_search.py and tests/phi/test_fastpath_patient_search.py prove both
paths answer, audit and count alike.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Dialect, Select, func, select
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.cache_key import CacheKey
from sqlalchemy.sql.elements import BindParameter

from carnet.access.policy import decided_by_facility_alone
from carnet.db import roundtrip
from carnet.db.base import detached
from carnet.kernel.ids import parse_id
from carnet.patients.models import Patient
from carnet.phi import care, fastpath
from carnet.phi.fastpath import _compile, _eligible, _FastTx, _first_round_trip, _raw, _rows
from carnet.phi.kernel import GateCore, Guard, GuardedTx
from carnet.phi.steps import SECTION_LIMIT

_counts_lock = threading.Lock()
# How many section reads took the fast path, and how many bodies were served the prefetched
# rows (tests read them; not metrics).
taken = 0
served = 0

# Stands for the patient's id while a section's statement is compiled once; each request binds
# its own patient where this value is. No record's id or patient is ever this value (version 4
# UUIDs have their version nibble set; this one has none).
_PLACEHOLDER = uuid.UUID(int=0x5EC7_10)

# The statement a section's body reads its rows with, for a patient id.
SectionStatement = Callable[[uuid.UUID | None], Select[Any]]


@dataclass
class _Section:
    """One declared section: its statement (with the placeholder), compiled per dialect."""

    statement: SectionStatement
    key: CacheKey
    values: list[Any]
    mapper: Mapper[Any]
    attributes: tuple[str, ...]
    compiled: dict[str, roundtrip.Statement] = field(default_factory=dict)

    def compiled_for(self, dialect: Dialect) -> roundtrip.Statement:
        found = self.compiled.get(dialect.name)
        if found is None:
            found = _compile(self.statement(_PLACEHOLDER), dialect)
            self.compiled[dialect.name] = found
        return found

    def params(self, compiled: roundtrip.Statement, pid: uuid.UUID) -> dict[str, Any]:
        return {k: pid if v == _PLACEHOLDER else v for k, v in compiled.defaults.items()}


def _declare(statement: SectionStatement) -> _Section:
    placeholder = statement(_PLACEHOLDER)
    key = placeholder._generate_cache_key()
    entity = placeholder.column_descriptions[0]["entity"]
    mapper: Mapper[Any] = entity.__mapper__
    if key is None or len(placeholder.column_descriptions) != 1 or mapper.class_ is None:
        raise TypeError("a section's statement selects one mapped class and is cacheable")
    attributes = tuple(mapper.get_property_by_column(c).key for c in placeholder.selected_columns)
    return _Section(statement, key, [b.effective_value for b in key.bindparams], mapper, attributes)


@dataclass
class _SectionTx(_FastTx):
    """The guarded transaction of a fast section read: the patient, the relationships and the
    section's rows were read in the first pipeline."""

    section: _Section | None = None
    pid: uuid.UUID | None = None

    def patient(self, patient_id: str | uuid.UUID) -> Patient:
        pid = patient_id if isinstance(patient_id, uuid.UUID) else parse_id(patient_id)
        if self.prefetched is not None and pid == self.prefetched[0].id:
            patient = self.prefetched[0]
            self.patient_ids.append(patient.id)
            return patient
        return super().patient(patient_id)

    def records(self, statement: Select[Any]) -> list[Any]:
        global served
        section, pid = self.section, self.pid
        if section is not None and pid is not None and self.also and _same(section, statement, pid):
            rows, self.also = self.also[0], []  # served once: a second ask reads the database
            with _counts_lock:
                served += 1
            return [_instance(section, row) for row in rows]
        return super().records(statement)


def _same(section: _Section, statement: Select[Any], pid: uuid.UUID) -> bool:
    """The body's statement is the declared one for this patient: the same SQL shape and the
    same values (the placeholder standing for the patient)."""
    key = statement._generate_cache_key()
    if key is None or key != section.key or len(key.bindparams) != len(section.values):
        return False
    return all(
        b.effective_value == (pid if v == _PLACEHOLDER else v)
        for b, v in zip(key.bindparams, section.values, strict=True)
    )


def _instance(section: _Section, row: dict[str, Any]) -> Any:
    """A detached instance holding the row, as the ORM would load it (nothing to flush)."""
    return detached(section.mapper.class_, dict(zip(section.attributes, row.values(), strict=True)))


def section_read(
    core: GateCore, guard: Guard, run: Callable[[GuardedTx], Any], kwargs: dict[str, Any], section: _Section
) -> tuple[bool, Any]:
    """The fast variant of a read of one patient's section (`patient_id`); see the module."""
    if not _eligible(core, guard, kwargs):
        return False, None
    pid = parse_id(str(kwargs["patient_id"]))

    def first_round_trip(session: Session) -> _FastTx:
        dialect = fastpath.raw_dialect(session)  # the session is not made for it
        also = []
        if pid is not None:
            compiled = section.compiled_for(dialect)
            also.append((compiled, section.params(compiled, pid)))
        tx = _first_round_trip(core, session, guard, pid, also=also, tx_type=_SectionTx)
        assert isinstance(tx, _SectionTx)
        tx.section, tx.pid = section, pid
        return tx

    return fastpath.between_round_trips(core, guard, run, first_round_trip, count=_count_section)


def _count_section() -> None:
    global taken
    with _counts_lock:
        taken += 1


def offer_section(body: Callable[..., Any], statement: SectionStatement) -> None:
    """Offer the fast variant for `body`, a read of one patient's section by `patient_id` whose
    rows are `tx.records(statement(patient).limit(SECTION_LIMIT))`."""
    declared = _declare(lambda pid: statement(pid).limit(SECTION_LIMIT))

    def fast(
        core: GateCore, guard: Guard, run: Callable[[GuardedTx], Any], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        return section_read(core, guard, run, kwargs, declared)

    setattr(body, "__gate_fast__", fast)  # noqa: B010


# How many Patient searches took the fast path in this process, and how many read their
# candidates' relationships in the candidates' statement (tests read them; not metrics).
searched = 0
related = 0


@dataclass(frozen=True)
class _SearchStatement:
    """A search's statement compiled for psycopg (`alone`), and the same with each patient's
    relationships to the actor (`related`: the tagged statement, matched on the patients the
    search found, aggregated per patient as `carnet_rels`): the patients are selected once."""

    statement: Select[Any]
    alone: roundtrip.Statement
    related: roundtrip.Statement
    attributes: tuple[str, ...]
    bound: frozenset[str]


_search_statements: dict[int, _SearchStatement] = {}
_search_lock = threading.Lock()
_RELS = "carnet_rels"


def _bound_names(statement: Any) -> frozenset[str]:
    """The names of the values a request binds: the statement's parameters built without one."""
    binds = (b for b in visitors.iterate(statement) if isinstance(b, BindParameter))
    return frozenset(b.key for b in binds if b.required)


def _with_relationships(statement: Select[Any]) -> Select[Any]:
    found = statement.cte("found")
    tagged = care.tagged_statement(match=lambda column: column.in_(select(found.c.id))).cte("tagged")
    rels = select(func.array_agg(tagged.c.rel)).where(tagged.c.pid == found.c.id).scalar_subquery()
    return select(found, rels.label(_RELS)).order_by(found.c.id)


def _search_compiled(statement: Select[Any], dialect: Dialect) -> _SearchStatement:
    entry = _search_statements.get(id(statement))
    if entry is not None and entry.statement is statement:
        return entry
    related = _with_relationships(statement)
    bound = _bound_names(related)
    mapper = Patient.__mapper__
    entry = _SearchStatement(
        statement=statement,
        alone=_compile(statement.params(dict.fromkeys(_bound_names(statement))), dialect),
        related=_compile(related.params(dict.fromkeys(bound)), dialect),
        attributes=tuple(mapper.get_property_by_column(c).key for c in statement.selected_columns),
        bound=bound,
    )
    with _search_lock:  # the statement is kept with its entry: its id is not reused meanwhile
        _search_statements[id(statement)] = entry
    return entry


@dataclass
class _SearchTx(_FastTx):
    """The guarded transaction of a fast Patient search: the candidates are read on psycopg's
    prepared statements, with their relationships to the actor in the same statement when
    they are few."""

    def patients(self, statement: Any, params: dict[str, Any], *, few: bool = False) -> list[Patient]:
        compiled = _search_compiled(statement, self.session.get_bind().dialect)
        missing = compiled.bound - params.keys()
        if missing:  # a value left unbound would be NULL: fail closed instead
            raise TypeError(f"the search's statement binds values it was not given: {sorted(missing)}")
        # Relationships are read as `care.relationships_of` reads them: not for a role that
        # only the facility decides, and only for an actor with a practitioner or an account.
        relate = (
            few
            and not decided_by_facility_alone(self.ctx.roles)
            and (self.ctx.practitioner_id is not None or self.ctx.account_id is not None)
        )
        chosen = compiled.related if relate else compiled.alone
        if relate:
            _count_related()
        self.session.flush()  # nothing pending in a search; as a Core statement would
        (rows,) = roundtrip.run(_raw(self.session), [(chosen, params)])
        found, tagged = [], []
        for row in _rows(chosen, rows):
            rels = row.pop(_RELS, None) if relate else None
            patient = detached(Patient, dict(zip(compiled.attributes, row.values(), strict=True)))
            found.append(patient)
            tagged += [(rel, patient.id) for rel in rels or ()]
        if relate:
            computed = care.combine(self.ctx, care.visible_ids(self.ctx, found), tagged)
            for patient in found:
                self.relationships.setdefault(patient.id, computed.get(patient.id, frozenset()))
        return found


def patient_search(
    core: GateCore, guard: Guard, run: Callable[[GuardedTx], Any], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """The fast variant of a Patient search (an identifier, a family name and birth date, or a
    name among the actor's own patients): the first pipeline (facility scope, account and
    grants, containment state), the body unchanged (its rules of specificity, its decisions,
    the names it decrypts) with its candidates read on prepared statements, with their
    relationships in the same round trip (`_SearchTx`), then the closing pipeline (exposure
    rows, the search's detection events, audit append, commit)."""
    if not _eligible(core, guard, kwargs, one_patient=False):
        return False, None
    return fastpath.between_round_trips(
        core,
        guard,
        run,
        lambda session: _first_round_trip(core, session, guard, None, one_patient=False, tx_type=_SearchTx),
        count=_count_search,
    )


def _count_related() -> None:
    global related
    with _counts_lock:
        related += 1


def _count_search() -> None:
    global searched
    with _counts_lock:
        searched += 1


def offer_search(body: Callable[..., Any]) -> None:
    """Offer the fast variant for `body`, a Patient search (see `patient_search`)."""
    setattr(body, "__gate_fast__", patient_search)  # noqa: B010
