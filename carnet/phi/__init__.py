"""THE GATE: the only way to read or write patient data (DESIGN.md invariant 1)."""

from carnet.detection.ledger import provide_work_relations
from carnet.phi.work import SqlFacilityWork

# Detection judges front desk and billing against their facility work, which only the gate's
# package may read (see carnet.phi.work).
provide_work_relations(SqlFacilityWork())
