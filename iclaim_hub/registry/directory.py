"""The sample directory seeded in development (docs/protocol.md §8): 20 life and 40
non-life insurers served by the sandbox (outside the hub, §10), one pull-mode
insurer, and the dev hospitals. Sample data: codes and names are illustrative.

Sandbox delivery modes: the i-th sample insurer (life first, then non-life, in
the order below) connects by SANDBOX_MODES[i % 3] -- grpc, webhook, pull, grpc,
... -- so 20 use each mode and both lines have all three. Endpoints are left
empty here: the dev stack knows the sandbox's ports and sets them."""

from __future__ import annotations

from iclaim_hub.registry.model import DELIVERY_GRPC, DELIVERY_PULL, DELIVERY_WEBHOOK, Principal

LIFE = 1
NON_LIFE = 2
PULL_INSURER = "TESTPULL"

_LIFE_INSURERS = [
    ("AIA", "AIA Thailand"),
    ("MTL", "Muang Thai Life Assurance"),
    ("TLI", "Thai Life Insurance"),
    ("OLI", "Ocean Life Thai Samut"),
    ("BLA", "Bangkok Life Assurance"),
    ("FWD", "FWD Life Insurance"),
    ("AZAY", "Allianz Ayudhya Assurance"),
    ("KTAL", "Krungthai-AXA Life Insurance"),
    ("PRU", "Prudential Life Assurance (Thailand)"),
    ("TSLI", "Thai Samsung Life Insurance"),
    ("CHUBBL", "Chubb Life Assurance"),
    ("GENL", "Generali Life Assurance (Thailand)"),
    ("DLI", "Dhipaya Life Assurance"),
    ("SELIC", "Southeast Life Insurance"),
    ("TMLTH", "Tokio Marine Life Insurance (Thailand)"),
    ("CLIT", "China Life Insurance (Thailand)"),
    ("MLI", "Manulife Insurance (Thailand)"),
    ("PLI", "Philam Life Thailand"),
    ("SMKL", "Syn Mun Kong Life"),
    ("UNIL", "Union Life Assurance"),
]

_NON_LIFE_INSURERS = [
    ("VIRIYAH", "Viriyah Insurance"),
    ("DHIPAYA", "Dhipaya Insurance"),
    ("BKI", "Bangkok Insurance"),
    ("MTI", "Muang Thai Insurance"),
    ("TVI", "Thaivivat Insurance"),
    ("SEIC", "Southeast Insurance"),
    ("LMG", "LMG Insurance"),
    ("AXAI", "AXA Insurance"),
    ("AZGI", "Allianz Ayudhya General Insurance"),
    ("TMI", "Tokio Marine Insurance (Thailand)"),
    ("MSIG", "MSIG Insurance (Thailand)"),
    ("SOMPO", "Sompo Insurance (Thailand)"),
    ("AIOI", "Aioi Bangkok Insurance"),
    ("CHUBB", "Chubb Samaggi Insurance"),
    ("KPI", "Krungthai Panich Insurance"),
    ("NKI", "Navakij Insurance"),
    ("TSI", "Thai Setakit Insurance"),
    ("INDARA", "Indara Insurance"),
    ("SMK", "Syn Mun Kong Insurance"),
    ("TNI", "Thanachart Insurance"),
    ("DEVES", "Deves Insurance"),
    ("MITTARE", "Mittare Insurance"),
    ("TPI", "Thai Paiboon Insurance"),
    ("SRI", "Sri Ayudhya General Insurance"),
    ("ASIA", "Asia Insurance 1950"),
    ("CHAO", "Chao Phaya Insurance"),
    ("ERGO", "ERGO Insurance (Thailand)"),
    ("GENI", "Generali Insurance (Thailand)"),
    ("KWI", "KWI Insurance"),
    ("MITSUI", "Mitsui Sumitomo Insurance"),
    ("NAMSENG", "Nam Seng Insurance"),
    ("PHOENIX", "Phoenix Insurance (Thailand)"),
    ("RVP", "Roojai Insurance"),
    ("SAMAGGI", "Samaggi Insurance"),
    ("SINMMAN", "Sinmunkong General"),
    ("TGH", "Thai Group Holdings General"),
    ("THAIHEALTH", "Thai Health Insurance"),
    ("THAISRI", "Thaisri Insurance"),
    ("TIPINS", "TIP Insurance"),
    ("ZURICH", "Zurich Insurance (Thailand)"),
]

DEV_HOSPITALS = [
    ("10670", "Siriraj Demo Hospital"),
    ("10671", "Chiang Mai Demo Hospital"),
    ("11001", "Khon Kaen Demo Hospital"),
]


SANDBOX_MODES = (DELIVERY_GRPC, DELIVERY_WEBHOOK, DELIVERY_PULL)


def sandbox_modes() -> dict[str, str]:
    """Sample insurer code -> its sandbox delivery mode (see the module doc)."""
    codes = [code for code, _ in (*_LIFE_INSURERS, *_NON_LIFE_INSURERS)]
    return {code: SANDBOX_MODES[i % len(SANDBOX_MODES)] for i, code in enumerate(codes)}


def sample_insurers() -> list[Principal]:
    """The 60 sandbox insurers (20 life, 40 non-life), each with its sandbox
    delivery mode and no endpoint yet."""
    modes = sandbox_modes()
    return [
        Principal(code, "insurer", name, line=line, delivery_mode=modes[code])
        for line, insurers in ((LIFE, _LIFE_INSURERS), (NON_LIFE, _NON_LIFE_INSURERS))
        for code, name in insurers
    ]


def pull_insurer() -> Principal:
    return Principal(PULL_INSURER, "insurer", "Test Pull Insurer", line=NON_LIFE, delivery_mode=DELIVERY_PULL)


def dev_hospitals() -> list[Principal]:
    return [Principal(code, "hospital", name) for code, name in DEV_HOSPITALS]
