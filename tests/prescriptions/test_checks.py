"""The medication safety checks, case by case, as a ward pharmacist would read them."""

from __future__ import annotations

import pytest

from carnet.prescriptions import catalogue
from carnet.prescriptions.checks import (
    Allergy,
    Current,
    Match,
    allergy_conflicts,
    duplicate_therapy,
)

SNOMED = catalogue.SNOMED_SYSTEM


# (prescribed ATC, recorded allergy (code, display), expected match or None, rule id or None)
ALLERGY_CASES = [
    # The case: amoxicillin for a patient with a penicillin (class) allergy.
    ("J01CA04", ("J01C", "Pénicillines"), Match.IN_CLASS, None),
    ("J01CA04", ("J01CA04", "Amoxicilline"), Match.SAME_SUBSTANCE, None),
    ("J01CR02", ("J01C", "Pénicillines"), Match.IN_CLASS, None),  # co-amoxiclav is a penicillin
    ("J01CA04", ("J01", "Antibiotiques"), Match.IN_CLASS, None),  # recorded at level 2
    ("J01CA04", ("J", "Anti-infectieux"), Match.IN_CLASS, None),  # recorded at level 1
    ("J01C", ("J01CA04", "Amoxicilline"), Match.IN_CLASS, None),  # prescribed as a class
    ("J01CR05", ("J01CA04", "Amoxicilline"), Match.CLASS_REACTION, "penicillins"),
    ("J01CE01", ("J01CF02", "Cloxacilline"), Match.CLASS_REACTION, "penicillins"),
    # Penicillins <-> cephalosporins, both ways; the shared side chain is named when it applies.
    ("J01DD04", ("J01C", "Pénicillines"), Match.CROSS_REACTION, "penicillins-cephalosporins"),
    ("J01CA04", ("J01DC02", "Céfuroxime"), Match.CROSS_REACTION, "penicillins-cephalosporins"),
    ("J01DB01", ("J01CA04", "Amoxicilline"), Match.CROSS_REACTION, "aminopenicillin-r1"),
    ("J01CA01", ("J01DB05", "Céfadroxil"), Match.CROSS_REACTION, "aminopenicillin-r1"),
    ("J01CA04", ("J01D", "Céphalosporines"), Match.CROSS_REACTION, "penicillins-cephalosporins"),
    ("J01DH02", ("J01C", "Pénicillines"), Match.CROSS_REACTION, "penicillins-carbapenems"),
    ("J01DD02", ("J01DF01", "Aztréonam"), Match.CROSS_REACTION, "aztreonam-ceftazidime"),
    ("J01DB04", ("J01DD04", "Ceftriaxone"), Match.CLASS_REACTION, "cephalosporins"),
    # Aztreonam is a monobactam: no cross-reaction with penicillins.
    ("J01DF01", ("J01C", "Pénicillines"), None, None),
    # Sulfonamide antibiotics, but not the non-antibiotic sulfonamides.
    ("J01EE01", ("J01E", "Sulfamides"), Match.IN_CLASS, None),
    ("C03CA01", ("J01E", "Sulfamides"), None, None),  # furosemide
    # Aspirin and NSAIDs (COX-1 cross-intolerance); a coxib is not flagged for aspirin.
    ("M01AE01", ("N02BA01", "Aspirine"), Match.CLASS_REACTION, "nsaid-cross-intolerance"),
    ("B01AC06", ("M01AE01", "Ibuprofène"), Match.CLASS_REACTION, "nsaid-cross-intolerance"),
    ("M01AB05", ("M01A", "AINS"), Match.IN_CLASS, None),
    ("M01AH01", ("N02BA01", "Aspirine"), None, None),
    ("N02BE01", ("M01A", "AINS"), None, None),  # paracetamol
    # Opioids: codeine after a morphine reaction, not fentanyl.
    ("R05DA04", ("N02AA01", "Morphine"), Match.CLASS_REACTION, "morphinans"),
    ("N02AB03", ("N02AA01", "Morphine"), None, None),
    ("N03AX09", ("N03AF01", "Carbamazépine"), Match.CLASS_REACTION, "aromatic-anticonvulsants"),
    ("N03AX14", ("N03AF01", "Carbamazépine"), None, None),  # levetiracetam
    ("J01MA12", ("J01MA02", "Ciprofloxacine"), Match.CLASS_REACTION, "fluoroquinolones"),
    ("J01FA10", ("J01FA09", "Clarithromycine"), Match.CLASS_REACTION, "macrolides"),
    ("V08AB05", ("V08", "Produits de contraste iodés"), Match.IN_CLASS, None),
    ("N01BB02", ("N01BB01", "Bupivacaïne"), Match.CLASS_REACTION, "amide-local-anaesthetics"),
    # Unrelated drugs.
    ("C08CA01", ("J01C", "Pénicillines"), None, None),
    ("J01XA01", ("J01C", "Pénicillines"), None, None),  # vancomycin is not a beta-lactam
]


@pytest.mark.parametrize(("drug", "allergy", "match", "rule"), ALLERGY_CASES)
def test_allergy_cases(drug: str, allergy: tuple[str, str], match: Match | None, rule: str | None) -> None:
    found = allergy_conflicts(drug_code=drug, drug_display=None, allergies=[Allergy(*allergy)])
    if match is None:
        assert found == []
        return
    assert [c.match for c in found] == [match]
    assert found[0].rule == rule
    sentence = found[0].sentence("en")
    assert allergy[1] in sentence and allergy[0] in sentence  # names the allergen
    assert found[0].reason.en and found[0].reason.fr
    if rule is not None:
        assert found[0].source  # a reference a clinician can look up


def test_class_allergy_names_the_allergen_and_the_class_in_french() -> None:
    [found] = allergy_conflicts(
        drug_code="J01CA04", drug_display="Amoxicilline 1 g", allergies=[Allergy("J01C", "Pénicillines")]
    )
    assert found.sentence("fr") == (
        "Allergie : Pénicillines (J01C) — amoxicilline (J01CA04) appartient à la classe pénicillines"
        " (J01C) pour laquelle l'allergie est enregistrée"
    )
    assert found.blocking


def test_cross_reaction_reason_is_named() -> None:
    [found] = allergy_conflicts(
        drug_code="J01DD04", drug_display=None, allergies=[Allergy("J01CA04", "Amoxicilline")]
    )
    assert "beta-lactam" in found.reason.en and "bêtalactame" in found.reason.fr


def test_several_allergies_the_most_certain_first() -> None:
    allergies = [
        Allergy("J01DC02", "Céfuroxime"),
        Allergy("M01A", "AINS"),
        Allergy("J01C", "Pénicillines"),
    ]
    found = allergy_conflicts(drug_code="J01CA04", drug_display=None, allergies=allergies)
    assert [(c.allergy.code, c.match) for c in found] == [
        ("J01C", Match.IN_CLASS),
        ("J01DC02", Match.CROSS_REACTION),
    ]


# Allergies not coded in ATC: read by their text when it names a drug, else surfaced unchecked.
OTHER_SYSTEM_CASES = [
    (Allergy("91936005", "Allergy to penicillin", system=SNOMED), Match.IN_CLASS, "J01C"),
    (Allergy("", "Allergie à la PÉNICILLINE", system="text"), Match.IN_CLASS, "J01C"),
    (Allergy("", "Augmentin: urticaire", system="text"), Match.CLASS_REACTION, "J01CR02"),
    (Allergy("", "céphalosporines (rash 2019)", system="text"), Match.CROSS_REACTION, "J01D"),
    (Allergy("", "arachide", system="text"), Match.UNCHECKED, None),
    (Allergy("227493005", "Cashew nuts", system=SNOMED), Match.UNCHECKED, None),
    (Allergy("not a code!", "", system=""), Match.UNCHECKED, None),
]


@pytest.mark.parametrize(("allergy", "match", "recognised"), OTHER_SYSTEM_CASES)
def test_allergies_in_other_systems(allergy: Allergy, match: Match, recognised: str | None) -> None:
    [found] = allergy_conflicts(drug_code="J01CA04", drug_display="Amoxicilline", allergies=[allergy])
    assert found.match is match
    assert found.recognised_as == recognised
    assert found.blocking is (match is not Match.UNCHECKED)
    if match is Match.UNCHECKED:
        assert "check" in found.reason.en and "vérifiez" in found.reason.fr


def test_an_uncoded_allergy_is_surfaced_even_for_an_unknown_drug() -> None:
    found = allergy_conflicts(
        drug_code="ZZZ",
        drug_display="Préparation magistrale",
        allergies=[Allergy("", "latex", system="text")],
    )
    assert [c.match for c in found] == [Match.UNCHECKED]


def test_no_allergy_no_conflict() -> None:
    assert allergy_conflicts(drug_code="J01CA04", drug_display=None, allergies=[]) == []


# (new prescription, current (code, status), expected match or None)
DUPLICATE_CASES = [
    ("J01CA04", ("J01CA04", "active"), "same-substance"),
    ("J01CA04", ("J01CA04", "on-hold"), "same-substance"),
    ("J01CA04", ("J01CA04", "stopped"), None),
    ("J01CA04", ("J01CA04", "completed"), None),
    ("C10AA05", ("C10AA07", "active"), "same-class"),  # two statins
    ("A02BC01", ("A02BC05", "active"), "same-class"),  # two proton pump inhibitors
    ("J01CR02", ("J01CA04", "active"), "penicillins"),  # co-amoxiclav on top of amoxicillin
    ("B01AF02", ("B01AB05", "active"), "anticoagulants"),  # apixaban on top of enoxaparin
    ("M01AE01", ("M01AB05", "active"), "nsaids"),
    ("N02AJ06", ("N02BE01", "active"), "paracetamol"),  # codeine-paracetamol with paracetamol
    ("C09CA01", ("C09AA05", "active"), "renin-angiotensin"),  # losartan with ramipril
    ("J01C", ("J01CA04", "active"), "same-class"),  # a class-coded prescription
    ("B01AC04", ("B01AC06", "active"), None),  # dual antiplatelet therapy is deliberate
    ("A10AE04", ("A10AB05", "active"), None),  # basal + rapid insulin
    ("C08CA01", ("C09AA05", "active"), None),  # amlodipine with ramipril
    ("C08CA01", ("not-atc", "active"), None),
]


@pytest.mark.parametrize(("drug", "current", "match"), DUPLICATE_CASES)
def test_duplicate_therapy(drug: str, current: tuple[str, str], match: str | None) -> None:
    existing = Current(id="rx-1", code=current[0], display="Existing", status=current[1])
    found = duplicate_therapy(drug_code=drug, current=[existing])
    assert [d.match for d in found] == ([match] if match else [])
    for d in found:
        assert d.existing is existing and "Existing" in d.sentence("fr") and d.reason.fr


def test_a_renewal_is_not_a_duplicate_of_what_it_renews() -> None:
    existing = Current(id="rx-1", code="C10AA05", display="Atorvastatine")
    assert duplicate_therapy(drug_code="C10AA05", current=[existing], ignore=frozenset({"rx-1"})) == []
    assert [d.existing.id for d in duplicate_therapy(drug_code="C10AA05", current=[existing])] == ["rx-1"]
