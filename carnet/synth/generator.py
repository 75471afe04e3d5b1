"""The synthetic hospital group, generated deterministically from one seed.

Every id, name, date, password and TOTP secret comes from seeded `random.Random` streams (one
stream for the organisation, one for the patients), and dates count from a base day, so the same
seed on the same day gives the same hospital. Faker (fr_FR) fills pools of names and streets once;
drawing from the pools with the seeded stream is what keeps 100,000 patients fast.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import string
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from faker import Faker

from carnet.access.policy import ResourceType
from carnet.access.roles import Role
from carnet.phi.loader import SeedBatch
from carnet.synth import vocab
from carnet.synth.charts import ChartRecords, PatientContext, seeded_uuid

# Role mix of the staff beyond the one-of-each-role every facility gets.
ROLE_SHARES: tuple[tuple[Role, float], ...] = (
    (Role.PHYSICIAN, 0.38),
    (Role.NURSE, 0.42),
    (Role.FRONT_DESK, 0.10),
    (Role.BILLING, 0.05),
    (Role.SYSTEM_ADMINISTRATOR, 0.025),
    (Role.SECURITY_OFFICER, 0.025),
    (Role.INTEGRATION, 0.0),  # one per facility: who reads the HL7 interfaces' message log
)
PATIENTS_PER_STAFF = 100
MIN_STAFF_AT_20K = 200
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 20


def default_facilities(patients: int) -> int:
    """One clinic for a small run; a hospital group for larger ones."""
    if patients < 200:
        return 1
    return min(6, 2 + patients // 25_000)


def staff_count(patients: int, facilities: int) -> int:
    return max(len(ROLE_SHARES) * facilities, round(patients / PATIENTS_PER_STAFF))


def canary_count(patients: int, facilities: int) -> int:
    """A few honeytokens per facility; never more than the patients asked for."""
    return min(patients, facilities * max(2, patients // 25_000))


def ascii_slug(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return "".join(c for c in letters if c.isalnum())


def _of(city: str) -> str:
    """French elision: 'de Paris' but 'd'Orléans'."""
    return f"d'{city}" if ascii_slug(city[:1]) in set("aeiouyh") else f"de {city}"


def _secret_base32(rng: random.Random) -> str:
    return base64.b32encode(rng.getrandbits(160).to_bytes(20, "big")).decode()


def _password(rng: random.Random) -> str:
    return "".join(rng.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


# -- the organisation ------------------------------------------------------------------------


@dataclass(frozen=True)
class FacilitySpec:
    id: uuid.UUID
    name: str
    finess: str
    city: str
    weight: int  # relative share of the patients


@dataclass(frozen=True)
class LocationSpec:
    id: uuid.UUID
    facility_id: uuid.UUID
    name: str
    kind: str  # ward, room, bed, clinic
    part_of: uuid.UUID | None = None  # a bed's room, a room's ward


@dataclass(frozen=True)
class PractitionerSpec:
    id: uuid.UUID
    facility_id: uuid.UUID
    rpps: str
    family: str
    given: str
    profession: str  # physician, nurse
    specialty: str | None


@dataclass(frozen=True)
class StaffSpec:
    username: str
    display_name: str
    password: str
    totp_secret: str
    role: Role
    facility_id: uuid.UUID
    practitioner_id: uuid.UUID | None


@dataclass(frozen=True)
class WardAssignmentSpec:
    id: uuid.UUID
    practitioner_id: uuid.UUID
    location_id: uuid.UUID
    facility_id: uuid.UUID
    start_at: dt.datetime


@dataclass(frozen=True)
class PortalAccountSpec:
    username: str
    password: str
    totp_secret: str
    patient_id: uuid.UUID
    facility_id: uuid.UUID


@dataclass
class Organisation:
    facilities: list[FacilitySpec]
    locations: list[LocationSpec]
    practitioners: list[PractitionerSpec]
    staff: list[StaffSpec]
    ward_assignments: list[WardAssignmentSpec]
    canary_slots: frozenset[int]

    def facility_name(self, facility_id: uuid.UUID) -> str:
        return next(f.name for f in self.facilities if f.id == facility_id)


@dataclass
class FacilityPools:
    """What patient generation draws from at one facility."""

    facility: FacilitySpec
    general: list[uuid.UUID] = field(default_factory=list)
    physicians: list[uuid.UUID] = field(default_factory=list)
    wards: list[uuid.UUID] = field(default_factory=list)
    # Each ward's beds in order, and the beds stays in progress hold (filled as charts are made).
    beds: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    beds_held: set[uuid.UUID] = field(default_factory=set)
    clinics: list[uuid.UUID] = field(default_factory=list)
    front_desk: list[uuid.UUID] = field(default_factory=list)  # account ids, set after creation
    billing: list[uuid.UUID] = field(default_factory=list)


class HospitalGenerator(ChartRecords):
    """Generates the organisation, then the patients in batches, from one seed."""

    def __init__(self, *, seed: int, patients: int, facilities: int, base_day: dt.datetime) -> None:
        if patients < 0:
            raise ValueError("patients must be zero or more")
        if facilities < 1:
            raise ValueError("there is at least one facility")
        self.seed = seed
        self.patients = patients
        self.facility_count = facilities
        self.base_day = base_day
        self._org_rng = random.Random(f"carnet-synth/{seed}/organisation")
        self._rng = random.Random(f"carnet-synth/{seed}/patients")
        self._portal_rng = random.Random(f"carnet-synth/{seed}/portal")
        self._pools = self._faker_pools(seed)
        self._used_ins: set[str] = set()
        self._used_slots: set[tuple[uuid.UUID, dt.datetime]] = set()
        self._invoice_counter = 0
        self._org: Organisation | None = None
        self._by_facility: dict[uuid.UUID, FacilityPools] = {}
        self._facility_weights: list[int] = []

    # -- pools ------------------------------------------------------------------------------
    @staticmethod
    def _faker_pools(seed: int) -> dict[str, list[Any]]:
        fake = Faker("fr_FR")
        fake.seed_instance(seed)
        return {
            "family": [fake.last_name() for _ in range(1500)],
            "male": [fake.first_name_male() for _ in range(400)],
            "female": [fake.first_name_female() for _ in range(400)],
            "street": [fake.street_name() for _ in range(1500)],
            "city": [(fake.city(), fake.postcode()) for _ in range(600)],
        }

    def _name(self, rng: random.Random, gender: str) -> tuple[str, str]:
        pool = self._pools["female"] if gender == "female" else self._pools["male"]
        if gender not in ("female", "male"):
            pool = self._pools["female"] if rng.random() < 0.5 else self._pools["male"]
        return rng.choice(self._pools["family"]), rng.choice(pool)

    # -- organisation -----------------------------------------------------------------------
    def organisation(self) -> Organisation:
        if self._org is not None:
            return self._org
        rng = self._org_rng
        facilities: list[FacilitySpec] = []
        finesses: set[str] = set()
        for index in range(self.facility_count):
            city = self._pools["city"][index * 37 % len(self._pools["city"])][0]
            finess = f"{rng.randint(10, 95):02d}{rng.randint(0, 9_999_999):07d}"
            while finess in finesses:
                finess = f"{rng.randint(10, 95):02d}{rng.randint(0, 9_999_999):07d}"
            finesses.add(finess)
            kind = vocab.FACILITY_KINDS[0 if index == 0 else rng.randrange(len(vocab.FACILITY_KINDS))]
            facilities.append(
                FacilitySpec(
                    id=seeded_uuid(rng),
                    name=f"{kind} {_of(city)}",
                    finess=finess,
                    city=city,
                    weight=3 if index == 0 else 2 if index < 3 else 1,
                )
            )
        total_weight = sum(f.weight for f in facilities)
        total_staff = staff_count(self.patients, self.facility_count)

        locations: list[LocationSpec] = []
        practitioners: list[PractitionerSpec] = []
        staff: list[StaffSpec] = []
        assignments: list[WardAssignmentSpec] = []
        usernames: set[str] = set()
        rpps_used: set[str] = set()
        for facility in facilities:
            pools = FacilityPools(facility)
            self._by_facility[facility.id] = pools
            for ward in vocab.WARDS[: 4 + rng.randrange(len(vocab.WARDS) - 3)]:
                ward_id = seeded_uuid(rng)
                locations.append(LocationSpec(ward_id, facility.id, f"Service {ward}", "ward"))
                pools.wards.append(ward_id)
                pools.beds[ward_id] = []
                for room in range(1, 11):
                    room_id = seeded_uuid(rng)
                    locations.append(
                        LocationSpec(room_id, facility.id, f"Chambre {100 + room}", "room", ward_id)
                    )
                    # 1 or 2 beds a room, drawn from the room's id (not from `rng`: the rest of
                    # the hospital stays what it was for the same seed).
                    for letter in "AB"[: 1 + room_id.int % 2]:
                        bed_id = uuid.uuid5(room_id, f"bed-{letter}")
                        locations.append(LocationSpec(bed_id, facility.id, f"Lit {letter}", "bed", room_id))
                        pools.beds[ward_id].append(bed_id)
            for number in range(1, 5 + rng.randrange(3)):
                clinic_id = seeded_uuid(rng)
                locations.append(
                    LocationSpec(clinic_id, facility.id, f"Consultation — box {number}", "clinic")
                )
                pools.clinics.append(clinic_id)

            share = max(len(ROLE_SHARES), round(total_staff * facility.weight / total_weight))
            roles = _allocate_roles(share)
            specialties = [s for s, _ in vocab.SPECIALTIES]
            specialty_weights = [w for _, w in vocab.SPECIALTIES]
            physician_index = 0
            nurse_ids: list[uuid.UUID] = []
            for role in roles:
                gender = "female" if rng.random() < 0.55 else "male"
                family, given = self._name(rng, gender)
                practitioner_id: uuid.UUID | None = None
                if role in (Role.PHYSICIAN, Role.NURSE):
                    practitioner_id = seeded_uuid(rng)
                    rpps = f"10{rng.randint(0, 999_999_999):09d}"
                    while rpps in rpps_used:
                        rpps = f"10{rng.randint(0, 999_999_999):09d}"
                    rpps_used.add(rpps)
                    specialty: str | None = None
                    if role is Role.PHYSICIAN:
                        # The first physicians of each facility are GPs: someone must be designated.
                        specialty = (
                            vocab.GENERAL_MEDICINE
                            if physician_index < 2
                            else rng.choices(specialties, specialty_weights)[0]
                        )
                        physician_index += 1
                        pools.physicians.append(practitioner_id)
                        if specialty == vocab.GENERAL_MEDICINE:
                            pools.general.append(practitioner_id)
                    else:
                        nurse_ids.append(practitioner_id)
                    practitioners.append(
                        PractitionerSpec(
                            practitioner_id,
                            facility.id,
                            rpps,
                            family,
                            given,
                            role.value if role is Role.PHYSICIAN else "nurse",
                            specialty,
                        )
                    )
                base = f"{ascii_slug(given)}.{ascii_slug(family)}"
                username = base
                suffix = 1
                while username in usernames:
                    suffix += 1
                    username = f"{base}{suffix}"
                usernames.add(username)
                title = "Dr " if role is Role.PHYSICIAN else ""
                staff.append(
                    StaffSpec(
                        username=username,
                        display_name=f"{title}{given} {family}",
                        password=_password(rng),
                        totp_secret=_secret_base32(rng),
                        role=role,
                        facility_id=facility.id,
                        practitioner_id=practitioner_id,
                    )
                )
            # Every nurse works a ward and every ward has a nurse (a small clinic's nurse covers several).
            for index in range(max(len(nurse_ids), len(pools.wards))):
                assignments.append(
                    WardAssignmentSpec(
                        seeded_uuid(rng),
                        nurse_ids[index % len(nurse_ids)],
                        pools.wards[index % len(pools.wards)],
                        facility.id,
                        self.base_day - dt.timedelta(days=30),
                    )
                )
        self._facility_weights = [f.weight for f in facilities]
        canaries = canary_count(self.patients, self.facility_count)
        slots = frozenset(rng.sample(range(self.patients), canaries)) if canaries else frozenset()
        self._org = Organisation(facilities, locations, practitioners, staff, assignments, slots)
        return self._org

    def set_accounts(
        self, *, facility_id: uuid.UUID, front_desk: Sequence[uuid.UUID], billing: Sequence[uuid.UUID]
    ) -> None:
        """Account ids are made by carnet.identity; patient data refers to some (booked_by, read_by)."""
        pools = self._by_facility[facility_id]
        pools.front_desk = list(front_desk)
        pools.billing = list(billing)

    # -- patients ---------------------------------------------------------------------------
    def patient_batches(
        self, batch_size: int
    ) -> Iterator[tuple[SeedBatch, list[tuple[uuid.UUID, uuid.UUID]]]]:
        """Yield (batch, [(patient id, facility id) of ordinary patients]) of `batch_size` patients."""
        org = self.organisation()
        done = 0
        while done < self.patients:
            batch = SeedBatch()
            ordinary: list[tuple[uuid.UUID, uuid.UUID]] = []
            for index in range(done, min(self.patients, done + batch_size)):
                canary = index in org.canary_slots
                patient_id, facility_id = self._patient(batch, canary=canary)
                if not canary:
                    ordinary.append((patient_id, facility_id))
            done += batch.count("patients")
            yield batch, ordinary

    def portal_accounts(self, candidates: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> list[PortalAccountSpec]:
        """A few patients use the portal. Usernames say nothing about who the patient is."""
        rng = self._portal_rng
        count = min(len(candidates), max(1, self.patients // 200) if self.patients else 0, 200)
        chosen = rng.sample(list(candidates), count) if count else []
        return [
            PortalAccountSpec(
                username=f"patient-{rng.getrandbits(40):010x}",
                password=_password(rng),
                totp_secret=_secret_base32(rng),
                patient_id=patient_id,
                facility_id=facility_id,
            )
            for patient_id, facility_id in chosen
        ]

    def _ins(self, rng: random.Random, gender: str, birth: dt.date) -> str:
        """A 15-digit NIR-shaped identifier (sex, year, month, place, order, key mod 97)."""
        while True:
            sex = "2" if gender == "female" else "1"
            body = (
                f"{sex}{birth.year % 100:02d}{birth.month:02d}{rng.randint(1, 95):02d}"
                f"{rng.randint(1, 990):03d}{rng.randint(1, 999):03d}"
            )
            ins = f"{body}{97 - int(body) % 97:02d}"
            if ins not in self._used_ins:
                self._used_ins.add(ins)
                return ins

    def _patient(self, batch: SeedBatch, *, canary: bool) -> tuple[uuid.UUID, uuid.UUID]:
        rng = self._rng
        org = self.organisation()
        facility = rng.choices(org.facilities, self._facility_weights)[0]
        pools = self._by_facility[facility.id]
        base = self.base_day
        patient_id = seeded_uuid(rng)
        roll = rng.random()
        gender = "female" if roll < 0.51 else "male" if roll < 0.998 else "unknown"
        family, given = self._name(rng, gender)
        age_days = int(rng.triangular(0, 98 * 365.25, 45 * 365.25))
        birth = (base - dt.timedelta(days=age_days)).date()
        ins = self._ins(rng, gender, birth)
        city, postcode = rng.choice(self._pools["city"])
        address = {
            "line": [f"{rng.randint(1, 180)} {rng.choice(self._pools['street'])}"],
            "city": city,
            "postalCode": postcode,
            "country": "FR",
        }
        phone = (
            f"0{rng.choice('1234567')} {rng.randint(0, 99):02d} {rng.randint(0, 99):02d} "
            f"{rng.randint(0, 99):02d} {rng.randint(0, 99):02d}"
            if rng.random() < 0.9
            else None
        )
        email = (
            f"{ascii_slug(given)}.{ascii_slug(family)}{rng.randint(1, 99)}@{rng.choice(vocab.EMAIL_DOMAINS)}"
            if rng.random() < 0.7
            else None
        )
        # Canaries have no designated physician, and neither do some real patients.
        has_doctor = rng.random() < 0.97
        designated = rng.choice(pools.general) if has_doctor and pools.general and not canary else None
        created = base - dt.timedelta(days=rng.randint(1, 3650), minutes=rng.randint(0, 1439))
        patient: dict[str, Any] = {
            "id": patient_id,
            "facility_id": facility.id,
            "ins": ins,
            "family": family.upper() if rng.random() < 0.02 else family,
            "given": given,
            "birth_date": birth.isoformat(),
            "gender": gender,
            "address": address,
            "phone": phone,
            "email": email,
            "designated_physician_id": designated,
            "opposes_other_facilities": rng.random() < 0.03,
            "active": True,
            "merged_into_id": None,
            "version_id": 1,
            "created_at": created,
            "updated_at": created,
        }
        batch.add("patients", patient)
        snapshot = {
            "id": str(patient_id),
            "facility_id": str(facility.id),
            "version_id": 1,
            "gender": gender,
            "active": True,
            "designated_physician_id": str(designated) if designated else None,
            "opposes_other_facilities": patient["opposes_other_facilities"],
            **{
                name: patient[name]
                for name in ("ins", "family", "given", "birth_date", "address", "phone", "email")
            },
        }
        batch.add(
            "resource_versions",
            {
                "id": seeded_uuid(rng),
                "resource_type": ResourceType.PATIENT.value,
                "resource_id": patient_id,
                "version_id": 1,
                "patient_id": patient_id,
                "facility_id": facility.id,
                "recorded_at": created,
                "author_id": None,
                "action": "create",
                "snapshot": snapshot,
            },
        )
        if patient["opposes_other_facilities"]:
            self._opposition(batch, patient_id, facility.id, created)
        if canary:
            batch.add(
                "canary_patients",
                {
                    "id": seeded_uuid(rng),
                    "patient_id": patient_id,
                    "facility_id": facility.id,
                    "created_at": created,
                },
            )
        ctx = PatientContext(patient_id, facility.id, pools, created, age_days // 365, canary)
        if designated is not None:
            batch.add("care_relationships", self._relationship(ctx, designated, "care_team", created, None))
        if not canary and rng.random() < 0.1 and pools.physicians:
            start = base - dt.timedelta(days=rng.randint(1, 180))
            end = start + dt.timedelta(days=rng.randint(30, 120)) if rng.random() < 0.3 else None
            batch.add(
                "care_relationships",
                self._relationship(ctx, rng.choice(pools.physicians), "referral", start, end),
            )
        self._conditions(batch, ctx, designated)
        allergies = self._allergies(batch, ctx, designated)
        encounters = self._encounters(batch, ctx)
        self._appointments(batch, ctx, designated)
        self._consultation_notes(batch, ctx, designated)
        self._prescriptions(batch, ctx, designated, encounters, allergies)
        self._labs(batch, ctx)
        self._coverage(batch, ctx, ins)
        return patient_id, facility.id

    @staticmethod
    def _opposition(batch: SeedBatch, patient_id: uuid.UUID, facility_id: uuid.UUID, at: dt.datetime) -> None:
        """The patient's restriction is recorded as a Consent too (as the gate does), with ids
        derived from the patient's so the random stream (and every later row) is unchanged."""
        consent_id = uuid.uuid5(patient_id, "consent")
        consent = {
            "id": consent_id,
            "patient_id": patient_id,
            "facility_id": facility_id,
            "kind": "oppose-other-facilities",
            "status": "active",
            "recorded_by": None,
            "recorded_at": at,
            "withdrawn_by": None,
            "withdrawn_at": None,
            "version_id": 1,
            "created_at": at,
            "updated_at": at,
        }
        batch.add("consents", consent)
        batch.add(
            "resource_versions",
            {
                "id": uuid.uuid5(patient_id, "consent-version-1"),
                "resource_type": ResourceType.CONSENT.value,
                "resource_id": consent_id,
                "version_id": 1,
                "patient_id": patient_id,
                "facility_id": facility_id,
                "recorded_at": at,
                "author_id": None,
                "action": "create",
                "snapshot": {
                    k: v if v is None or isinstance(v, int | str) else str(v) for k, v in consent.items()
                },
            },
        )

    def _relationship(
        self,
        ctx: PatientContext,
        practitioner: uuid.UUID,
        kind: str,
        start: dt.datetime,
        end: dt.datetime | None,
    ) -> dict[str, Any]:
        return {
            "id": seeded_uuid(self._rng),
            "patient_id": ctx.patient_id,
            "practitioner_id": practitioner,
            "facility_id": ctx.facility_id,
            "kind": kind,
            "start_at": start,
            "end_at": end,
            "created_by": None,
        }


def _allocate_roles(count: int) -> list[Role]:
    """One of each role, then the rest by share (largest remainder, so it is deterministic)."""
    roles = [role for role, _ in ROLE_SHARES]
    extra = count - len(roles)
    if extra <= 0:
        return roles
    quotas = [(role, extra * share) for role, share in ROLE_SHARES]
    counts = {role: int(q) for role, q in quotas}
    left = extra - sum(counts.values())
    for role, _q in sorted(quotas, key=lambda rq: rq[1] - int(rq[1]), reverse=True)[:left]:
        counts[role] += 1
    for role, _ in ROLE_SHARES:
        roles.extend([role] * counts[role])
    return roles
