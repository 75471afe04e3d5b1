"""Clinical and administrative vocabularies for the synthetic hospital (French practice).

Codes are real code systems (ICD-10, LOINC, ATC, CCAM/NGAP) so FHIR clients see plausible data;
the lists are short on purpose: enough variety for a demo and for detection baselines.
"""

from __future__ import annotations

# (specialty, share of physicians). General medicine holds the designated physicians.
SPECIALTIES: tuple[tuple[str, int], ...] = (
    ("Médecine générale", 30),
    ("Cardiologie", 8),
    ("Pneumologie", 5),
    ("Gastro-entérologie", 5),
    ("Endocrinologie", 4),
    ("Neurologie", 5),
    ("Pédiatrie", 7),
    ("Gynécologie-obstétrique", 6),
    ("Chirurgie orthopédique", 6),
    ("Chirurgie viscérale", 5),
    ("Médecine d'urgence", 8),
    ("Anesthésie-réanimation", 5),
    ("Psychiatrie", 4),
    ("Gériatrie", 5),
    ("Radiologie", 3),
)
GENERAL_MEDICINE = "Médecine générale"

WARDS: tuple[str, ...] = (
    "Médecine interne",
    "Cardiologie",
    "Chirurgie",
    "Pédiatrie",
    "Maternité",
    "Gériatrie",
    "Urgences",
    "Pneumologie",
)

FACILITY_KINDS: tuple[str, ...] = (
    "Centre hospitalier",
    "Hôpital",
    "Clinique",
    "Centre hospitalier universitaire",
)

# ICD-10 (code, display)
CONDITIONS: tuple[tuple[str, str], ...] = (
    ("I10", "Hypertension essentielle (primitive)"),
    ("E11.9", "Diabète sucré de type 2, sans complication"),
    ("J45.9", "Asthme, sans précision"),
    ("E78.0", "Hypercholestérolémie essentielle"),
    ("I48.9", "Fibrillation auriculaire, sans précision"),
    ("J44.9", "Bronchopneumopathie chronique obstructive, sans précision"),
    ("F32.9", "Épisode dépressif, sans précision"),
    ("M17.1", "Gonarthrose primaire, unilatérale"),
    ("K21.9", "Reflux gastro-œsophagien sans œsophagite"),
    ("E03.9", "Hypothyroïdie, sans précision"),
    ("N18.3", "Maladie rénale chronique, stade 3"),
    ("I50.9", "Insuffisance cardiaque, sans précision"),
    ("G43.9", "Migraine, sans précision"),
    ("M54.5", "Lombalgie basse"),
    ("E66.9", "Obésité, sans précision"),
    ("J18.9", "Pneumopathie, sans précision"),
    ("S72.0", "Fracture du col du fémur"),
    ("O80", "Accouchement unique et spontané"),
)

# ATC substance classes used both for allergies and prescriptions.
ALLERGENS: tuple[tuple[str, str], ...] = (
    ("J01C", "Pénicillines"),
    ("J01D", "Céphalosporines"),
    ("M01A", "Anti-inflammatoires non stéroïdiens"),
    ("N02BA", "Acide acétylsalicylique"),
    ("J01E", "Sulfamides"),
    ("N02A", "Opioïdes"),
    ("V08", "Produits de contraste iodés"),
    ("N01B", "Anesthésiques locaux"),
)

# (CIP-like medication code, display, ATC substance class, dosage)
MEDICATIONS: tuple[tuple[str, str, str, str], ...] = (
    ("3400935955838", "Amlodipine 5 mg comprimé", "C08CA", "1 comprimé le matin"),
    ("3400936403116", "Metformine 1000 mg comprimé", "A10BA", "1 comprimé matin et soir au repas"),
    ("3400934998331", "Paracétamol 1 g comprimé", "N02BE", "1 comprimé jusqu'à 3 fois par jour"),
    ("3400936158542", "Amoxicilline 1 g comprimé", "J01C", "1 comprimé 3 fois par jour pendant 7 jours"),
    ("3400930000502", "Atorvastatine 20 mg comprimé", "C10AA", "1 comprimé le soir"),
    ("3400938373413", "Ramipril 5 mg comprimé", "C09AA", "1 comprimé le matin"),
    ("3400935894595", "Lévothyroxine 75 µg comprimé", "H03AA", "1 comprimé à jeun le matin"),
    ("3400937362074", "Salbutamol 100 µg inhalation", "R03AC", "2 bouffées si besoin"),
    ("3400936829749", "Oméprazole 20 mg gélule", "A02BC", "1 gélule le matin"),
    ("3400933197933", "Apixaban 5 mg comprimé", "B01AF", "1 comprimé matin et soir"),
    ("3400935417466", "Ibuprofène 400 mg comprimé", "M01A", "1 comprimé 3 fois par jour au repas"),
    ("3400930023457", "Tramadol 50 mg gélule", "N02A", "1 gélule toutes les 6 heures si douleur"),
    ("3400939243388", "Sertraline 50 mg gélule", "N06AB", "1 gélule le matin"),
    ("3400936699878", "Furosémide 40 mg comprimé", "C03CA", "1 comprimé le matin"),
    ("3400934207839", "Céfuroxime 500 mg comprimé", "J01D", "1 comprimé matin et soir pendant 5 jours"),
)

# LOINC vital signs: (code, display, unit, low, high, decimals)
VITALS: tuple[tuple[str, str, str, float, float, int], ...] = (
    ("8480-6", "Pression artérielle systolique", "mm[Hg]", 100, 170, 0),
    ("8462-4", "Pression artérielle diastolique", "mm[Hg]", 55, 100, 0),
    ("8867-4", "Fréquence cardiaque", "/min", 52, 115, 0),
    ("8310-5", "Température corporelle", "Cel", 36.0, 39.2, 1),
    ("29463-7", "Poids corporel", "kg", 45, 115, 1),
    ("59408-5", "Saturation en oxygène", "%", 89, 100, 0),
)

# LOINC lab panels with their observations: (panel code, display, [(code, display, unit, lo, hi, dec)])
LAB_PANELS: tuple[tuple[str, str, tuple[tuple[str, str, str, float, float, int], ...]], ...] = (
    (
        "58410-2",
        "Numération formule sanguine",
        (
            ("718-7", "Hémoglobine", "g/dL", 9.5, 16.5, 1),
            ("6690-2", "Leucocytes", "10*9/L", 3.5, 14.0, 1),
            ("777-3", "Plaquettes", "10*9/L", 140, 420, 0),
        ),
    ),
    (
        "24320-4",
        "Ionogramme sanguin",
        (
            ("2951-2", "Sodium", "mmol/L", 132, 146, 0),
            ("2823-3", "Potassium", "mmol/L", 3.3, 5.4, 1),
            ("2160-0", "Créatinine", "µmol/L", 50, 180, 0),
        ),
    ),
    (
        "24331-1",
        "Bilan lipidique",
        (
            ("2093-3", "Cholestérol total", "g/L", 1.4, 2.9, 2),
            ("2085-9", "HDL cholestérol", "g/L", 0.3, 0.9, 2),
            ("2571-8", "Triglycérides", "g/L", 0.5, 2.8, 2),
        ),
    ),
    ("4548-4", "Hémoglobine glyquée", (("4548-4", "HbA1c", "%", 5.0, 10.5, 1),)),
)

REPORT_CONCLUSIONS: tuple[str, ...] = (
    "Résultats dans les valeurs de référence.",
    "Discrète anomalie sans caractère de gravité, à contrôler dans trois mois.",
    "Valeurs anormales, à discuter avec le médecin traitant.",
    "Amélioration nette par rapport au bilan précédent.",
)

# LOINC document types: (code, title)
NOTE_KINDS: tuple[tuple[str, str], ...] = (
    ("11506-3", "Note d'évolution"),
    ("34117-2", "Observation médicale d'entrée"),
    ("18842-5", "Compte rendu d'hospitalisation"),
    ("11488-4", "Compte rendu de consultation"),
)

NOTE_OPENINGS: tuple[str, ...] = (
    "Patient(e) vu(e) ce jour pour {motif}.",
    "Consultation de suivi : {motif}.",
    "Admission pour {motif}.",
    "Revu(e) en consultation, motif : {motif}.",
)
NOTE_FINDINGS: tuple[str, ...] = (
    "Examen clinique sans particularité.",
    "Auscultation cardio-pulmonaire normale.",
    "Abdomen souple, indolore.",
    "Légère dyspnée d'effort, pas d'œdème des membres inférieurs.",
    "Douleur à la palpation, sans défense.",
    "Constantes stables, apyrétique.",
    "État général conservé.",
)
NOTE_PLANS: tuple[str, ...] = (
    "Poursuite du traitement en cours.",
    "Bilan biologique prescrit, à revoir avec les résultats.",
    "Adaptation posologique, contrôle dans un mois.",
    "Retour à domicile autorisé, consignes données.",
    "Avis spécialisé demandé.",
    "Surveillance rapprochée des constantes.",
)
AMENDMENT_REASONS: tuple[str, ...] = (
    "Correction de la posologie",
    "Ajout des résultats biologiques",
    "Précision sur les antécédents",
    "Erreur de saisie corrigée",
)

APPOINTMENT_REASONS: tuple[str, ...] = (
    "Consultation de suivi",
    "Renouvellement d'ordonnance",
    "Bilan annuel",
    "Douleurs thoraciques",
    "Contrôle post-opératoire",
    "Résultats d'examens",
    "Vaccination",
    "Première consultation",
    "Suivi de grossesse",
    "Certificat médical",
)
CANCEL_REASONS: tuple[str, ...] = ("Annulé par le patient", "Praticien indisponible", "Reporté")

# Statutory (AMO) and complementary (AMC) payers.
AMO_PAYERS: tuple[str, ...] = (
    "CPAM de Paris",
    "CPAM du Rhône",
    "CPAM des Bouches-du-Rhône",
    "CPAM de la Gironde",
    "CPAM du Nord",
    "MSA Île-de-France",
)
AMC_PAYERS: tuple[str, ...] = ("MGEN", "Harmonie Mutuelle", "Malakoff Humanis", "AG2R La Mondiale", "Matmut")

# CCAM / NGAP acts: (code, description, euros cents)
ACTS: tuple[tuple[str, str, int], ...] = (
    ("G", "Consultation de médecine générale", 3000),
    ("APC", "Avis ponctuel de consultant", 5600),
    ("DEQP003", "Électrocardiographie", 1432),
    ("ZBQK002", "Radiographie du thorax", 2128),
    ("GHS", "Séjour hospitalier", 185000),
    ("ATU", "Accueil et traitement des urgences", 2527),
    ("FJ", "Forfait journalier hospitalier", 2000),
)
PAYMENT_METHODS: tuple[str, ...] = ("card", "cash", "transfer", "insurer")

EMAIL_DOMAINS: tuple[str, ...] = ("orange.fr", "free.fr", "laposte.net", "gmail.com", "sfr.fr", "hotmail.fr")
