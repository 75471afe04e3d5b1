"""Every table, for migrations and test set-up. Importing this loads all models."""

from carnet.access import models as access_models
from carnet.audit import models as audit_models
from carnet.billing import models as billing_models
from carnet.coverage import models as coverage_models
from carnet.crypto import models as crypto_models
from carnet.db.base import Base
from carnet.detection import models as detection_models
from carnet.identity import models as identity_models
from carnet.interfaces import models as interface_models
from carnet.interventions import models as intervention_models
from carnet.org import models as org_models
from carnet.patients import models as patient_models
from carnet.prescriptions import models as prescription_models
from carnet.records import models as record_models
from carnet.scheduling import models as scheduling_models

MODEL_MODULES = (
    access_models,
    audit_models,
    billing_models,
    coverage_models,
    crypto_models,
    detection_models,
    identity_models,
    interface_models,
    intervention_models,
    org_models,
    patient_models,
    prescription_models,
    record_models,
    scheduling_models,
)

metadata = Base.metadata
