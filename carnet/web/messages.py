"""Gate, step-up, containment and detection messages in the reader's language.

The gate, identity and detection write their refusals and findings in English, in plain
sentences built from numbers and names (carnet.detection.rules says what it saw as a security
officer would). The web pages show them to French readers too: this module rewrites each known
sentence into French, keeping its numbers and names. A sentence it does not know is left as it
is (tests/web/test_gate_messages_fr.py runs every detection rule and fails on one it misses).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# -- the pieces sentences are made of ------------------------------------------------------
_WHO = r"(?P<who>(?:API client )?[^\s,;:()]+)"
_N = r"(?P<n>\d+)"
_PATIENTS = r"(?P<p>\d+) different patients?"
_WINDOW = r"(?P<w>in the last 15 minutes|in the last hour|in the last 24 hours|in 15 minutes)"
_PERSON = r"(?P<person>a physician|a nurse|a front-desk agent|a billing clerk|a patient|someone in this role)"

_WINDOWS_FR = {
    "in the last 15 minutes": "au cours des 15 dernières minutes",
    "in the last hour": "au cours de la dernière heure",
    "in the last 24 hours": "au cours des dernières 24 heures",
    "in 15 minutes": "en 15 minutes",
    "hour": "au cours de la dernière heure",
    "24 hours": "au cours des dernières 24 heures",
}
_PEOPLE_FR = {
    "a physician": "un médecin",
    "a nurse": "un infirmier ou une infirmière",
    "a front-desk agent": "un agent d'accueil",
    "a billing clerk": "un agent de facturation",
    "a patient": "un patient",
    "someone in this role": "une personne de ce rôle",
}


def _who(m: re.Match[str]) -> str:
    who = m.group("who")
    return f"le client d'API {who[len('API client ') :]}" if who.startswith("API client ") else who


def _patients(count: str) -> str:
    return f"{count} patient différent" if count == "1" else f"{count} patients différents"


def _window(m: re.Match[str], name: str = "w") -> str:
    return _WINDOWS_FR[m.group(name)]


def _decimal(value: str) -> str:
    return value.replace(".", ",")


def _g(m: re.Match[str], name: str) -> str:
    return m.group(name) or ""


_BREAK_GLASS_FR = {
    "emergency": "urgence vitale",
    "continuity": "continuité des soins",
    "patient request": "demande du patient",
    "consultation": "avis demandé",
}


def _glass(reason: str) -> str:
    return _BREAK_GLASS_FR.get(reason, reason)


Rewrite = Callable[[re.Match[str]], str]

# (pattern, French): each pattern is one sentence as carnet writes it; the sentences of one
# message (a containment joins its findings) are each rewritten where they stand.
_SENTENCES: list[tuple[str, Rewrite]] = [
    # carnet.detection.rules.volume
    (
        rf"{_WHO} was shown {_PATIENTS} {_WINDOW}, (?P<ratio>[\d.]+) times the level at which {_PERSON} "
        r"is asked to confirm their identity \((?P<t>\d+)\)(?P<usual>; their usual is about (?P<u>\d+)"
        r"|; a new or just restored account, on probation)?\.",
        lambda m: (
            f"{_who(m)} a vu {_patients(m['p'])} {_window(m)}, {_decimal(m['ratio'])} fois le niveau "
            f"auquel {_PEOPLE_FR[m['person']]} doit confirmer son identité ({m['t']})"
            + (
                f" ; son niveau habituel est d'environ {m['u']}"
                if m["u"]
                else " ; un compte nouveau ou tout juste rétabli, en période probatoire"
                if m["usual"]
                else ""
            )
            + "."
        ),
    ),
    (
        rf"{_WHO} holds no role that reads patient data, yet was shown {_PATIENTS} in the last 24 hours\.",
        lambda m: (
            f"{_who(m)} n'a aucun rôle qui lit des données patients, mais a vu {_patients(m['p'])} "
            "au cours des dernières 24 heures."
        ),
    ),
    (
        rf"{_WHO} received {_PATIENTS} {_WINDOW}, above the (?P<t>\d+) allowed to an API client before it "
        r"is slowed down\.",
        lambda m: (
            f"{_who(m)} a reçu {_patients(m['p'])} {_window(m)}, au-delà des {m['t']} permis à un client "
            "d'API avant qu'il soit ralenti."
        ),
    ),
    # outside_care
    (
        rf"{_WHO} was shown {_PATIENTS} outside their care {_WINDOW}(?: \(containment at (?P<c>\d+)\))?\.",
        lambda m: (
            f"{_who(m)} a vu {_patients(m['p'])} hors de sa prise en charge {_window(m)}"
            + (f" (confinement à partir de {m['c']})" if m["c"] else "")
            + "."
        ),
    ),
    (
        rf"(?P<share>\d+)% of the {_N} patients {_WHO} was shown in the last 24 hours "
        r"are outside their care\.",
        lambda m: (
            f"{m['share']} % des {m['n']} patients vus par {_who(m)} au cours des dernières 24 heures "
            "sont hors de sa prise en charge."
        ),
    ),
    # outside_work
    (
        rf"{_WHO}, {_PERSON}, was shown {_PATIENTS} in the last (?P<w>hour|24 hours) who have no business "
        r"with the facility \(no appointment around now, no recent stay or invoice, not newly registered\)"
        r"(?P<sweep>: a sweep of the patient register)?\.",
        lambda m: (
            f"{_who(m)}, {_PEOPLE_FR[m['person']]}, a vu {_window(m)} {_patients(m['p'])} sans lien avec "
            "l'établissement (aucun rendez-vous en ce moment, aucun séjour ni facture récents, pas "
            "d'inscription récente)" + (" : un balayage du registre des patients" if m["sweep"] else "") + "."
        ),
    ),
    # weekly_volume
    (
        rf"{_WHO} was shown {_PATIENTS} in the last 7 days, beyond the (?P<t>\d+) at which {_PERSON} is "
        r"asked to confirm their identity(?:; on a busy day they usually see about (?P<u>\d+))?\.",
        lambda m: (
            f"{_who(m)} a vu {_patients(m['p'])} au cours des 7 derniers jours, au-delà des {m['t']} à "
            f"partir desquels {_PEOPLE_FR[m['person']]} doit confirmer son identité"
            + (f" ; un jour chargé, son niveau habituel est d'environ {m['u']}" if m["u"] else "")
            + "."
        ),
    ),
    # enumeration
    (
        rf"{_WHO} looked up {_N} different patients one by one in 15 minutes \(by identifier, or asking "
        r"who a calendar slot is for\)(?P<sweep>: an identifier sweep)?\.",
        lambda m: (
            f"{_who(m)} a recherché {m['n']} patients différents un par un en 15 minutes (par identifiant, "
            "ou en demandant pour qui est un créneau de l'agenda)"
            + (" : un balayage par identifiant" if m["sweep"] else "")
            + "."
        ),
    ),
    (
        rf"{_WHO} ran {_N} partial or wildcard patient searches in the last hour(?P<sweep>: an alphabetical "
        r"sweep)?\.",
        lambda m: (
            f"{_who(m)} a lancé {m['n']} recherches de patients partielles ou génériques au cours de la "
            "dernière heure" + (" : un balayage alphabétique" if m["sweep"] else "") + "."
        ),
    ),
    (
        rf"{_WHO} ran {_N} different patient searches in 15 minutes(?: \((?P<h>\d+) in the last hour\): a "
        r"search sweep)?\.",
        lambda m: (
            f"{_who(m)} a lancé {m['n']} recherches de patients différentes en 15 minutes"
            + (f" ({m['h']} au cours de la dernière heure) : un balayage par recherches" if m["h"] else "")
            + "."
        ),
    ),
    # list_breadth, deep_paging
    (
        rf"{_WHO} opened {_N} different patient lists \(practitioners' calendars\) in 15 minutes"
        r"(?P<sweep>: going through the whole facility's schedule)?\.",
        lambda m: (
            f"{_who(m)} a ouvert {m['n']} listes de patients différentes (agendas de praticiens) en 15 "
            "minutes" + (" : le planning de tout l'établissement parcouru" if m["sweep"] else "") + "."
        ),
    ),
    (
        rf"{_WHO} paged beyond page (?P<page>\d+) of patient lists {_N} times in the last hour: paging "
        r"through everything\.",
        lambda m: (
            f"{_who(m)} est allé au-delà de la page {m['page']} de listes de patients {m['n']} fois au "
            "cours de la dernière heure : tout parcourir page après page."
        ),
    ),
    (
        rf"{_WHO} paged beyond page (?P<page>\d+) of a patient list\.",
        lambda m: f"{_who(m)} est allé au-delà de la page {m['page']} d'une liste de patients.",
    ),
    # canary
    (
        rf"{_WHO} was shown a decoy patient record that no one has a reason to open \({_N} decoys?\): a "
        r"sign of bulk collection\.",
        lambda m: (
            f"{_who(m)} a vu un dossier patient leurre que personne n'a de raison d'ouvrir ({m['n']} "
            f"leurre{'s' if m['n'] != '1' else ''}) : le signe d'une collecte en masse."
        ),
    ),
    # denials
    (
        rf"{_WHO} tried {_N} times in the last hour to export patient data without an approved export\.",
        lambda m: (
            f"{_who(m)} a tenté {m['n']} fois au cours de la dernière heure d'exporter des données "
            "patients sans export approuvé."
        ),
    ),
    (
        rf"{_WHO}, a system administrator, who reads no patient data, tried to reach patient data {_N} "
        r"times? in 15 minutes\.",
        lambda m: (
            f"{_who(m)}, administrateur système, qui ne lit aucune donnée patient, a tenté d'accéder à des "
            f"données patients {m['n']} fois en 15 minutes."
        ),
    ),
    (
        rf"{_WHO} was refused patient data {_N} times (?P<w>in 15 minutes|in the last 24 hours)\.",
        lambda m: f"{_who(m)} s'est vu refuser des données patients {m['n']} fois {_window(m)}.",
    ),
    # off_hours, new_address, export
    (
        rf"{_WHO}, who does not usually work at night, was shown {_PATIENTS} in the hour before "
        r"(?P<at>\d\d:\d\d)\.",
        lambda m: (
            f"{_who(m)}, qui ne travaille pas la nuit d'habitude, a vu {_patients(m['p'])} dans l'heure "
            f"précédant {m['at']}."
        ),
    ),
    (
        rf"{_WHO} reached patient data from a network address never used by this account "
        rf"\((?P<addr>[^)]*)\); {_PATIENTS} in the last hour\.",
        lambda m: (
            f"{_who(m)} a accédé à des données patients depuis une adresse réseau jamais utilisée par ce "
            f"compte ({m['addr']}) ; {_patients(m['p'])} au cours de la dernière heure."
        ),
    ),
    (
        rf"{_WHO} exported the data of {_PATIENTS} in the last 24 hours, under approved exports\.",
        lambda m: (
            f"{_who(m)} a exporté les données de {_patients(m['p'])} au cours des dernières 24 heures, "
            "dans le cadre d'exports approuvés."
        ),
    ),
    # persistence, pending_step_up
    (
        rf"{_WHO} kept requesting patient data after being stopped {_N} times in the last 24 hours, "
        r"without once confirming their identity with a second factor\.",
        lambda m: (
            f"{_who(m)} a continué à demander des données patients après avoir été arrêté {m['n']} fois "
            "au cours des dernières 24 heures, sans jamais confirmer son identité par un second facteur."
        ),
    ),
    (
        rf"{_WHO} kept requesting patient data after being stopped {_N} times in the last "
        r"(?P<w>hour|24 hours) \(asked for a second factor or slowed down\)\.",
        lambda m: (
            f"{_who(m)} a continué à demander des données patients après avoir été arrêté {m['n']} fois "
            f"{_window(m)} (invité à présenter un second facteur, ou ralenti)."
        ),
    ),
    (
        rf"{_WHO} was asked to confirm their identity at (?P<at>\d\d:\d\d) and has not done so yet\.",
        lambda m: f"{_who(m)} a été invité à confirmer son identité à {m['at']} et ne l'a pas encore fait.",
    ),
    # carnet.detection.campaign
    (
        rf"{_N} different accounts reached patient data from one machine \(the same network address and "
        r"client\) within (?P<min>\d+) minutes: sessions of others used together\. Each session signed in "
        r"before this is asked for a fresh second factor\.",
        lambda m: (
            f"{m['n']} comptes différents ont accédé à des données patients depuis une même machine (même "
            f"adresse réseau et même client) en {m['min']} minutes : les sessions d'autres personnes "
            "utilisées ensemble. Chaque session ouverte avant ceci doit présenter un nouveau second facteur."
        ),
    ),
    (
        rf"{_N} accounts behaved abnormally within (?P<min>\d+) minutes, (?P<how>sharing a network address "
        r"or client|anywhere in the installation): one campaign\. (?P<k>\d+) accounts are "
        r"(?P<resp>contained|asked for a fresh second factor)\.",
        lambda m: (
            f"{m['n']} comptes ont eu un comportement anormal en {m['min']} minutes, "
            + (
                "partageant une adresse réseau ou un client"
                if m["how"].startswith("sharing")
                else "n'importe où dans l'installation"
            )
            + f" : une seule campagne. {m['k']} comptes sont "
            + ("confinés." if m["resp"] == "contained" else "invités à présenter un nouveau second facteur.")
        ),
    ),
    (
        r" ?The installation was shown (?P<a>\d+) different patients in 15 minutes \((?P<b>\d+) in the "
        r"hour\), above its usual\.",
        lambda m: (
            f" L'installation a vu {m['a']} patients différents en 15 minutes ({m['b']} dans l'heure), "
            "au-delà de son niveau habituel."
        ),
    ),
    (r"Accounts: (?P<names>[^.]*)\.$", lambda m: f"Comptes : {m['names']}."),
    # carnet.detection.referrals, breakglass, administration
    (
        r"(?P<n>\d+) patients were referred to \(or put in the care team of\) (?P<prac>Practitioner/[\w-]+) "
        r"in 24 hours, the latest by (?P<who>\S+): check each has a clinical reason \(a referral opens the "
        r"patient's chart to that practitioner\)\.",
        lambda m: (
            f"{m['n']} patients ont été adressés à {m['prac']} (ou mis dans son équipe de soins) en 24 "
            f"heures, le dernier par {m['who']} : vérifiez que chacun a une raison clinique (adresser un "
            "patient ouvre son dossier à ce praticien)."
        ),
    ),
    (
        rf"{_WHO} referred {_N} patients to colleagues \(or added them to care teams\) in 24 hours: check "
        r"each has a clinical reason\.",
        lambda m: (
            f"{_who(m)} a adressé {m['n']} patients à des confrères (ou les a ajoutés à des équipes de "
            "soins) en 24 heures : vérifiez que chacun a une raison clinique."
        ),
    ),
    (
        rf"{_WHO} broke the glass on patient (?P<pid>[\w-]+) \(reason: (?P<why>[^)]*)\) at (?P<at>[\d: -]+) "
        r"UTC, until (?P<until>\d\d:\d\d) UTC: review the justification in the break-the-glass list\.",
        lambda m: (
            f"{_who(m)} a brisé la glace sur le patient {m['pid']} (motif : {_glass(m['why'])}"
            f") le {m['at']} UTC, jusqu'à {m['until']} UTC : relisez la justification dans la liste des "
            "accès d'urgence."
        ),
    ),
    (
        rf"{_WHO} took part in restoring an account that was already restored within {_N} days and "
        r"contained again: a restore loop\.",
        lambda m: (
            f"{_who(m)} a participé au rétablissement d'un compte déjà rétabli il y a moins de {m['n']} "
            "jours puis de nouveau confiné : une boucle de rétablissements."
        ),
    ),
    (
        r"(?P<subject>the installation's administrators|\S+) made (?P<n>\d+) access-widening changes "
        r"\(accounts opened, roles requested or approved, restores, approvals\) (?P<w>in the last hour|"
        r"in the last 24 hours)(?: \(usually about (?P<u>\d+)\))?, the last by (?P<who>\S+): "
        r"(?P<what>[^;]*); "
        r"an alert from (?P<a>\d+), containment from (?P<c>\d+)\.",
        lambda m: (
            (
                "les administrateurs de l'installation ont"
                if m["subject"] == "the installation's administrators"
                else f"{m['subject']} a"
            )
            + f" fait {m['n']} changements qui élargissent des accès (comptes ouverts, rôles demandés ou "
            f"approuvés, rétablissements, approbations) {_window(m)}"
            + (f" (d'habitude environ {m['u']})" if m["u"] else "")
            + f", le dernier par {m['who']} : {m['what']} ; une alerte à partir de {m['a']}, le "
            f"confinement à partir de {m['c']}."
        ),
    ),
    # printing (carnet/*/printing.py)
    (
        r"this (?P<what>prescription|invoice|stay) is (?P<status>[\w-]+): (?:only an active prescription "
        r"is printed|only an issued invoice is printed|a letter is printed for a stay in progress or "
        r"finished)",
        lambda m: {
            "prescription": f"cette prescription est « {m['status']} » : seule une prescription active "
            "s'imprime",
            "invoice": f"cette facture est « {m['status']} » : seule une facture émise s'imprime",
            "stay": f"ce séjour est « {m['status']} » : la lettre s'imprime pour un séjour en cours ou "
            "terminé",
        }[m["what"]],
    ),
]


# Messages that wrap a sentence (the finding's) in what the reader is to do.
_WRAPPERS: list[tuple[str, Callable[[re.Match[str], Callable[[str], str]], str]]] = [
    (
        r"Confirm your identity with your second factor to continue: (?P<s>.*)",
        lambda m, t: f"Confirmez votre identité avec votre second facteur pour continuer : {t(m['s'])}",
    ),
    (
        r"Slowed down: (?P<s>.*) Try again in a few minutes\.",
        lambda m, t: f"Ralenti : {t(m['s'])} Réessayez dans quelques minutes.",
    ),
    (
        r"This account is suspended by carnet's exfiltration detection: (?P<s>.*) Its sessions and tokens "
        r"are revoked\. To restore it, call (?P<contact>.*)\.",
        lambda m, t: (
            f"Ce compte est suspendu par la détection d'exfiltration de carnet : {t(m['s'])} Ses sessions "
            f"et ses jetons sont révoqués. Pour le rétablir, appelez {_contact(m['contact'])}."
        ),
    ),
    (
        r"this account is suspended \((?P<s>.*)\)\. Call (?P<contact>.*) to restore it\.",
        lambda m, t: (
            f"ce compte est suspendu ({t(m['s'])}). Appelez {_contact(m['contact'])} pour le rétablir."
        ),
    ),
    # carnet.detection.ledger: a session of a machine (or an account) a campaign used
    (
        r"(?P<who>\S+) is among accounts used together in a campaign: (?P<s>.*)",
        lambda m, t: f"{m['who']} fait partie des comptes utilisés ensemble dans une campagne : {t(m['s'])}",
    ),
    (
        r"(?P<who>\S+) reaches patient data from a (?P<what>network address|client|machine) that several "
        r"accounts used in a campaign today: (?P<s>.*)",
        lambda m, t: (
            f"{m['who']} accède à des données patients depuis "
            + {"network address": "une adresse réseau", "client": "un client", "machine": "une machine"}[
                m["what"]
            ]
            + f" que plusieurs comptes ont utilisé(e) aujourd'hui dans une campagne : {t(m['s'])}"
        ),
    ),
    (
        r"the proof was not accepted \((?P<s>.*)\)",
        lambda m, t: f"la preuve n'a pas été acceptée ({m['s']})",
    ),
]

# Whole messages, as the gate, identity and the pages raise them.
_EXACT: dict[str, str] = {
    "this account may not do this": "ce compte n'a pas le droit de faire ceci",
    "no such resource": "cette ressource n'existe pas, ou ce compte ne peut pas la voir",
    "unusual activity": "activité inhabituelle",
    "sign in first": "connectez-vous d'abord",
    "this account is disabled": "ce compte est désactivé",
    "the session has ended (expired or revoked); sign in again": (
        "la session est terminée (expirée ou révoquée) ; reconnectez-vous"
    ),
    "your roles have changed; sign in again": "vos rôles ont changé ; reconnectez-vous",
    "this form was not sent by a carnet page (missing or wrong security token)": (
        "ce formulaire n'a pas été envoyé par une page de carnet (jeton de sécurité absent ou erroné)"
    ),
    "cross-site login refused": "connexion depuis un autre site refusée",
    "cross-site request refused": "requête depuis un autre site refusée",
    "confirm it is you: present your second factor again (POST /auth/step-up)": (
        "confirmez que c'est vous : présentez de nouveau votre second facteur"
    ),
    "the second factor was not accepted": "le second facteur n'a pas été accepté",
    "register a passkey first: this account must sign in with one": (
        "enregistrez d'abord une clé d'accès : ce compte doit se connecter avec une clé d'accès"
    ),
    "break-the-glass needs a second factor proven in the last 5 minutes": (
        "l'accès d'urgence demande un second facteur présenté dans les 5 dernières minutes"
    ),
    "this action needs a signed-in person's session and passkey, not a token": (
        "cette action demande la session et la clé d'accès d'une personne connectée, pas un jeton"
    ),
    (
        "confirm it is you with your passkey: this action widens access and needs a proof made in "
        "this session in the last 5 minutes (POST /auth/step-up/options, then /auth/step-up/proof)"
    ): (
        "confirmez que c'est vous avec votre clé d'accès : cette action élargit des accès et demande une "
        "preuve faite dans cette session au cours des 5 dernières minutes"
    ),
    (
        "your sign-in is more than 5 minutes old: sign out, sign in again with what you were handed, "
        "and choose your second factor at once"
    ): (
        "votre connexion date de plus de 5 minutes : déconnectez-vous, reconnectez-vous avec ce qui vous "
        "a été remis, et choisissez aussitôt votre second facteur"
    ),
    "the billing pages are for billing staff": (
        "les pages de facturation sont réservées au service facturation"
    ),
    "the front desk pages are for front-desk staff": (
        "les pages de l'accueil sont réservées aux agents d'accueil"
    ),
    "merging duplicate records is for front-desk staff (identity vigilance)": (
        "la fusion des doublons est réservée aux agents d'accueil (identitovigilance)"
    ),
    "the calendar is for front-desk staff and clinicians": (
        "l'agenda est réservé aux agents d'accueil et aux soignants"
    ),
    "only clinicians may break the glass": "seuls les soignants peuvent utiliser l'accès d'urgence",
    "only a security officer writes incident reports": (
        "seul un responsable de la sécurité rédige les rapports d'incident"
    ),
    "registration happens at a facility": "l'inscription se fait dans un établissement",
    "the directory is for the staff of a facility": "l'annuaire est réservé au personnel d'un établissement",
    "this account works in no facility": "ce compte n'est rattaché à aucun établissement",
    "only a security officer reads the audit trail": (
        "seul un responsable de la sécurité lit le journal d'audit"
    ),
    "the access log is read by the patient themself": "le journal des accès est lu par le patient lui-même",
    "this account may not request an export": "ce compte ne peut pas demander d'export",
    "only a security officer sees the export requests": (
        "seul un responsable de la sécurité voit les demandes d'export"
    ),
    "only a security officer decides on an export": "seul un responsable de la sécurité décide d'un export",
    "nobody approves their own export: a second person must": (
        "personne n'approuve son propre export : une seconde personne doit le faire"
    ),
    "only an administrator opens accounts": "seul un administrateur ouvre des comptes",
    "this account may not manage role grants": "ce compte ne peut pas gérer l'attribution des rôles",
    "a role grant needs a second administrator: you cannot decide this one": (
        "l'attribution d'un rôle demande un second administrateur : vous ne pouvez pas décider de celle-ci"
    ),
    "only a security officer reviews break-the-glass accesses": (
        "seul un responsable de la sécurité relit les accès d'urgence"
    ),
    "the resource was changed by someone else: reload and try again": (
        "quelqu'un d'autre a modifié cet élément : rechargez la page et réessayez"
    ),
    "no printed documents in this language": "pas de document imprimé dans cette langue",
    "this prescription has expired: renew it, then print the renewed one": (
        "cette prescription a expiré : renouvelez-la, puis imprimez la prescription renouvelée"
    ),
}


# Form messages (bad input, a state that forbids the change): what each form says when it
# changes nothing, as the domain and the pages raise them.
_FORMS: dict[str, str] = {
    "a cancellation needs a reason (at most 200 characters)": (
        "une annulation demande un motif (200 caractères au plus)"
    ),
    "a cancelled appointment cannot be moved: book a new one": (
        "un rendez-vous annulé ne se déplace pas : prenez-en un nouveau"
    ),
    "a discharge happens after the admission and not in the future": (
        "une sortie a lieu après l'admission et pas dans le futur"
    ),
    "a transfer names a new location or bed (or a new attending physician)": (
        "un transfert indique un nouveau lieu ou un nouveau lit (ou un nouveau médecin responsable)"
    ),
    "this bed is taken by another stay in progress: choose a free bed": (
        "ce lit est occupé par un autre séjour en cours : choisissez un lit libre"
    ),
    "this bed is not in the stay's ward: choose a bed of that ward": (
        "ce lit n'est pas dans le service du séjour : choisissez un lit de ce service"
    ),
    "this location is not a bed": "ce lieu n'est pas un lit",
    "this bed is closed": "ce lit est fermé",
    "this bed belongs to no ward": "ce lit n'est rattaché à aucun service",
    "name one bed for the stay": "indiquez un seul lit pour le séjour",
    "unknown ward": "service inconnu",
    "choose the ward or the bed the patient moves to": "choisissez le service ou le lit où va le patient",
    "an admission starts now or in the past (book an appointment for later)": (
        "une admission commence maintenant ou dans le passé (prenez un rendez-vous pour plus tard)"
    ),
    "an appointment ends after it starts": "un rendez-vous finit après avoir commencé",
    "an appointment lasts at most 12 hours": "un rendez-vous dure 12 heures au plus",
    "an inpatient stay needs its ward": "une hospitalisation demande son service",
    "an invoice needs at least one act: its code, what it is and its amount": (
        "une facture demande au moins un acte : son code, son libellé et son montant"
    ),
    "an invoice totals at most 1,000,000.00": "une facture totalise au plus 1 000 000,00",
    "check the kind of stay and its ward": "vérifiez le type de séjour et son service",
    "check the substance and its criticality": "vérifiez la substance et sa criticité",
    "choose a clinical status from the list": "choisissez un statut clinique dans la liste",
    "choose a patient for the app": "choisissez un patient pour l'application",
    "choose a referral or a care-team membership": (
        "choisissez un adressage ou une entrée dans l'équipe de soins"
    ),
    "choose a verification status from the list": "choisissez un statut de vérification dans la liste",
    "choose the criticality: high risk, low risk or not assessed": (
        "choisissez la criticité : risque élevé, risque faible ou non évaluée"
    ),
    "choose the kind of stay: inpatient, emergency or outpatient": (
        "choisissez le type de séjour : hospitalisation, urgences ou consultation externe"
    ),
    "choose the ward the patient moves to": "choisissez le service où va le patient",
    "describe the problem (the text shown in the problem list)": (
        "décrivez le problème (le texte montré dans la liste des problèmes)"
    ),
    "each act needs its code, what it is and its amount": (
        "chaque acte demande son code, son libellé et son montant"
    ),
    "nothing to change": "rien à modifier",
    "only a held prescription can be resumed": "seule une prescription suspendue peut être reprise",
    "this prescription is on hold: it is not given until it is resumed": (
        "cette prescription est suspendue : elle n'est pas administrée avant d'être reprise"
    ),
    "this prescription is stopped: it is not given": (
        "cette prescription est arrêtée : elle n'est pas administrée"
    ),
    "this prescription is completed: it is not given": (
        "cette prescription est terminée : elle n'est pas administrée"
    ),
    "this patient record is inactive: record it on the active record": (
        "ce dossier patient est inactif : enregistrez-le sur le dossier actif"
    ),
    "only an active prescription is given": "seule une prescription en cours est administrée",
    "this prescription has expired: it is renewed before it is given": (
        "cette prescription a expiré : elle est renouvelée avant d'être administrée"
    ),
    "a reason is given only for a dose not given": "un motif ne se donne que pour une dose non administrée",
    "a dose not given needs a reason from the list": (
        "une dose non administrée demande un motif choisi dans la liste"
    ),
    "the dose given has at most 100 characters": "la dose administrée compte 100 caractères au plus",
    "a note has at most 500 characters": "une remarque compte 500 caractères au plus",
    "only an ongoing or held prescription can be stopped": (
        "seule une prescription en cours ou suspendue peut être arrêtée"
    ),
    "only an ongoing prescription can be put on hold": "seule une prescription en cours peut être suspendue",
    "only an ongoing, held or completed prescription can be renewed": (
        "seule une prescription en cours, suspendue ou terminée peut être renouvelée"
    ),
    "only today's appointments are checked in": "seuls les rendez-vous du jour s'enregistrent à l'arrivée",
    "pick the substance from the list (a class such as penicillins, or a drug)": (
        "choisissez la substance dans la liste (une classe comme les pénicillines, ou un médicament)"
    ),
    "the ICD-10 code is required": "le code CIM-10 est obligatoire",
    "the admission time must be a date and time": "l'heure d'admission doit être une date et une heure",
    "the admission time needs a time zone": "l'heure d'admission demande un fuseau horaire",
    "Encounter.period: a time needs a time zone": "Encounter.period : une heure demande un fuseau horaire",
    "Encounter.period.end: before its start": "Encounter.period.end : avant son début",
    "MedicationRequest.authoredOn: a time needs a time zone": (
        "MedicationRequest.authoredOn : une heure demande un fuseau horaire"
    ),
    "the amount must be a number of euros, e.g. 12.50": (
        "le montant doit être un nombre d'euros, par ex. 12,50"
    ),
    "the code must be an ICD-10 code, e.g. I10 or E11.9": (
        "le code doit être un code CIM-10, par ex. I10 ou E11.9"
    ),
    "the discharge time must be a date and time": "l'heure de sortie doit être une date et une heure",
    "the discharge time needs a time zone": "l'heure de sortie demande un fuseau horaire",
    "the end date must be a date": "la date de fin doit être une date",
    "the end date must be in the future": "la date de fin doit être dans le futur",
    "the end date needs a time zone": "la date de fin demande un fuseau horaire",
    "the onset must be a date": "le début doit être une date",
    "the patient already has a stay in progress: transfer or discharge it": (
        "le patient a déjà un séjour en cours : transférez-le ou faites sa sortie"
    ),
    "the practitioner is already booked at that time": "le praticien a déjà un rendez-vous à cette heure",
    "the rights end after they start": "les droits finissent après avoir commencé",
    "the time must be written HH:MM, e.g. 08:30": "l'heure s'écrit HH:MM, par ex. 08:30",
    "the two new passwords are not the same": "les deux nouveaux mots de passe ne sont pas identiques",
    "the window start needs a time zone": "le début de la plage demande un fuseau horaire",
    "this appointment is already cancelled": "ce rendez-vous est déjà annulé",
    "this invoice has received payments: it cannot be cancelled": (
        "cette facture a reçu des paiements : elle ne peut pas être annulée"
    ),
    "this patient record is already inactive": "ce dossier patient est déjà inactif",
    "this patient record is inactive: admit the active record": (
        "ce dossier patient est inactif : admettez le dossier actif"
    ),
    "this patient record is inactive: order on the active record": (
        "ce dossier patient est inactif : prescrivez sur le dossier actif"
    ),
    "this patient record is inactive: record the problem on the active record": (
        "ce dossier patient est inactif : notez le problème sur le dossier actif"
    ),
    "this patient record was merged: invoice the record it was merged into": (
        "ce dossier patient a été fusionné : facturez le dossier dans lequel il a été fusionné"
    ),
    "this stay is already marked entered-in-error": "ce séjour est déjà marqué saisi par erreur",
    "this problem was entered in error: record a new one": (
        "ce problème a été saisi par erreur : notez-en un nouveau"
    ),
    "this stay was entered in error: name the right stay, or none": (
        "ce séjour a été saisi par erreur : indiquez le bon séjour, ou aucun"
    ),
    "unknown location": "lieu inconnu",
    "unknown practitioner": "praticien inconnu",
    "unknown encounter for this patient": "séjour inconnu pour ce patient",
    "unknown order (ServiceRequest) for this patient": "prescription d'examen inconnue pour ce patient",
    "the practitioner must be an active practitioner of the patient's facility": (
        "le praticien doit être un praticien actif de l'établissement du patient"
    ),
    "no patient has this identifier in your facilities": (
        "aucun patient n'a cet identifiant dans vos établissements"
    ),
    "the birth date must be a date (YYYY-MM-DD)": "la date de naissance doit être une date (AAAA-MM-JJ)",
    "a patient with this INS is already registered: search for them instead": (
        "un patient avec cet INS est déjà inscrit : recherchez-le plutôt"
    ),
    "a patient cannot be merged into itself: name two different records": (
        "un patient ne peut pas être fusionné avec lui-même : indiquez deux dossiers différents"
    ),
    "the two records belong to different facilities: a merge stays in one facility": (
        "les deux dossiers sont dans des établissements différents : une fusion reste dans un établissement"
    ),
    "both records have a patient portal account: close one of them first": (
        "les deux dossiers ont un compte sur le portail patient : fermez d'abord l'un des deux"
    ),
    "break-the-glass needs a justification of 10 to 1000 characters": (
        "l'accès d'urgence demande une justification de 10 à 1000 caractères"
    ),
    "a note needs a kind (LOINC code) and a title (at most 200 characters)": (
        "une note demande un type (code LOINC) et un titre (200 caractères au plus)"
    ),
    "a note needs a text (at most 100,000 characters)": (
        "une note demande un texte (100 000 caractères au plus)"
    ),
    "an amendment needs a reason (at most 500 characters)": (
        "une modification demande un motif (500 caractères au plus)"
    ),
    "a review needs a note": "une relecture demande une note",
    "valid_until must be in the future": "la fin de validité doit être dans le futur",
    "both records have a stay in progress: discharge one of them (or mark it entered in error) first, "
    "a patient is in one stay at a time": (
        "les deux dossiers ont un séjour en cours : faites d'abord la sortie de l'un (ou marquez-le saisi "
        "par erreur), un patient n'est que dans un séjour à la fois"
    ),
    "the target is not the record this patient was merged into": (
        "la cible n'est pas le dossier dans lequel ce patient a été fusionné"
    ),
    "the merge record of this patient is missing: it cannot be reversed here": (
        "la trace de fusion de ce patient manque : la fusion ne peut pas être annulée ici"
    ),
    "this order was entered in error: results are not filed against it": (
        "cette prescription d'examen a été saisie par erreur : aucun résultat ne s'y rattache"
    ),
    "the description names no substance of the catalogue: pick the substance from the list": (
        "la description ne nomme aucune substance du catalogue : choisissez la substance dans la liste"
    ),
    'use "Entered in error" to mark a problem recorded by mistake': (
        "utilisez « Saisi par erreur » pour marquer un problème noté par erreur"
    ),
    "an interface name (60), a control id (40), a status accepted or rejected": (
        "un nom d'interface (60), un identifiant de contrôle (40), un statut accepté ou rejeté"
    ),
    "the timeline covers 1 hour to 31 days": "la chronologie couvre de 1 heure à 31 jours",
    "the slot must be a date and time": "le créneau doit être une date et une heure",
    "say why the patient is coming (the reason for the visit)": (
        "dites pourquoi le patient vient (le motif de la consultation)"
    ),
}

# Statuses a form message names ("this invoice is draft"), in the words of the French pages.
_STATUS_FR = {
    "draft": "brouillon",
    "issued": "émise",
    "balanced": "soldée",
    "cancelled": "annulé",
    "arrived": "arrivé",
    "fulfilled": "honoré",
    "noshow": "absent",
    "booked": "réservé",
    "entered-in-error": "saisi par erreur",
    "active": "en cours",
    "on-hold": "suspendue",
    "stopped": "arrêtée",
    "completed": "terminé",
    "revoked": "révoquée",
    "in-progress": "en cours",
    "finished": "terminé",
}

_FIELDS_FR = {
    "birth_date": "date de naissance",
    "family": "nom",
    "given": "prénom",
    "gender": "sexe",
    "ins": "INS",
    "phone": "téléphone",
    "email": "courriel",
    "amount_cents": "montant",
    "method": "mode de paiement",
    "valid_from": "début des droits",
    "valid_until": "fin des droits",
    "insurer": "organisme",
    "card_number": "numéro de carte",
}


def _status(value: str) -> str:
    return _STATUS_FR.get(value, value)


def _fields(names: str) -> str:
    return ", ".join(_FIELDS_FR.get(n.strip(), n.strip()) for n in names.split(","))


_FORM_SENTENCES: list[tuple[str, Rewrite]] = [
    (
        r"a calendar shows 1 to (?P<n>\d+) days",
        lambda m: f"un agenda montre de 1 à {m['n']} jours",
    ),
    (
        r"a worklist page is 1 to (?P<n>\d+)",
        lambda m: f"une page de la liste de travail va de 1 à {m['n']}",
    ),
    (
        r"a name search needs at least (?P<n>\d+) letters",
        lambda m: f"une recherche par nom demande au moins {m['n']} lettres",
    ),
    (
        r"this appointment is (?P<s>[\w-]+): only a booked one is checked in",
        lambda m: (
            f"ce rendez-vous est « {_status(m['s'])} » : seul un rendez-vous réservé s'enregistre à l'arrivée"
        ),
    ),
    (
        r"this invoice is (?P<s>[\w-]+): only a draft is issued",
        lambda m: f"cette facture est « {_status(m['s'])} » : seul un brouillon s'émet",
    ),
    (
        r"this invoice is (?P<s>[\w-]+): only a draft or an issued invoice is cancelled",
        lambda m: (
            f"cette facture est « {_status(m['s'])} » : seuls un brouillon ou une facture émise s'annulent"
        ),
    ),
    (
        r"this invoice is (?P<s>[\w-]+): only an issued invoice takes a payment",
        lambda m: f"cette facture est « {_status(m['s'])} » : seule une facture émise reçoit un paiement",
    ),
    (
        r"this order is (?P<s>[\w-]+): it cannot be cancelled",
        lambda m: f"cette prescription d'examen est « {_status(m['s'])} » : elle ne peut pas être annulée",
    ),
    (
        r"this stay is (?P<s>[\w-]+): only a stay in progress is transferred or discharged",
        lambda m: f"ce séjour est « {_status(m['s'])} » : seul un séjour en cours se transfère ou se termine",
    ),
    (
        r"the payment is more than the (?P<due>[\d.]+) (?P<cur>\w+) still due",
        lambda m: f"le paiement dépasse les {_decimal(m['due'])} {m['cur']} encore dus",
    ),
    (
        r"(?P<what>\w+) a prescription needs a reason \(at most (?P<n>\d+) characters\)",
        lambda m: (
            {"stopping": "arrêter", "holding": "suspendre"}.get(m["what"], "modifier")
            + f" une prescription demande un motif ({m['n']} caractères au plus)"
        ),
    ),
    (
        r"an override reason has at most (?P<n>\d+) characters",
        lambda m: f"un motif de passer outre fait au plus {m['n']} caractères",
    ),
    (
        r"a merge needs a reason \((?P<a>\d+) to (?P<b>\d+) characters\)",
        lambda m: f"une fusion demande un motif (de {m['a']} à {m['b']} caractères)",
    ),
    (
        r"Patient/(?P<id>[\w-]+) is inactive \(merged or deleted\): merge active records",
        lambda m: f"Patient/{m['id']} est inactif (fusionné ou supprimé) : fusionnez des dossiers actifs",
    ),
    (
        r"Patient/(?P<id>[\w-]+) is not a merged record: there is nothing to reverse",
        lambda m: f"Patient/{m['id']} n'est pas un dossier fusionné : il n'y a rien à annuler",
    ),
    (
        r"Patient/(?P<id>[\w-]+) was changed by someone else: reload and try again",
        lambda m: f"Patient/{m['id']} a été modifié par quelqu'un d'autre : rechargez la page et réessayez",
    ),
    (
        r"(?P<name>the start|the new start) must be a date and time",
        lambda m: (
            ("le début" if m["name"] == "the start" else "le nouveau début")
            + " doit être une date et une heure"
        ),
    ),
    (
        r"check these fields: (?P<f>.*)",
        lambda m: f"vérifiez ces champs : {_fields(m['f'])}",
    ),
]

_EXACT.update(_FORMS)
_SENTENCES += _FORM_SENTENCES
_COMPILED = [(re.compile(pattern), rewrite) for pattern, rewrite in _SENTENCES]
_WRAPPED = [(re.compile(pattern, re.DOTALL), rewrite) for pattern, rewrite in _WRAPPERS]


def _sentences(text: str) -> str:
    if text in _EXACT:
        return _EXACT[text]
    for pattern, rewrite in _COMPILED:
        text = pattern.sub(rewrite, text)
    return text


# The default contact (CARNET_SECURITY_CONTACT): a hospital that sets its own writes it as it
# wants it read.
_CONTACTS = {"the hospital security office": "le service sécurité de l'hôpital"}


def _contact(value: str) -> str:
    return _CONTACTS.get(value, value)


def french(message: str) -> str:
    """The message in French: a known message whole, a wrapper around its finding, or each
    known sentence rewritten where it stands (numbers, names and addresses kept)."""
    text = message.strip()
    if text in _EXACT:
        return _EXACT[text]
    for pattern, rewrite in _WRAPPED:
        found = pattern.fullmatch(text)
        if found is not None:
            return rewrite(found, french)
    return _sentences(text)


def say(message: object, language: str) -> str:
    """What a page shows of a message raised in English: French to a French reader."""
    text = "" if message is None else str(message)
    return french(text) if language == "fr" and text else text
