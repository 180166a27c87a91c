"""Label corrections for all-pairs comparisons on LFW: people filed under two names, and photos filed under the
wrong name.

LFW (Huang et al. 2007) takes its names from news captions, and a handful of people appear under two spellings or
names, so a few "impostor" pairs are the same person. They do not matter for View 2's 3,000 impostor pairs, but in
all-pairs comparisons they are most of the impostors above FMR 1e-6 and would make a calibration claim that
strangers match far more often than they do. How these were found (2026-12-06): the 40 highest-scoring impostor
pairs of MobileFaceNet (with flip) over all pairs of the 7,701 View 2 images were looked at by eye; every pair that
is one person under two names or the same photograph is listed here, everything else (e.g. the Moraes twins,
Carolina and Isabela, who are two people) stays an impostor. Pairs below the top 40 were not inspected, so a few
errors may remain; they can only make the measured FMR higher (a stricter threshold), never lower.

Used by ``facegate eval calibrate`` (``evaluation/calibrate.py``) and ``bench/fusion_fit.py``'s cleaned all-pairs
figures; ``facegate eval lfw`` (View 2 pairs as published) and ``eval openset`` keep LFW's labels as they are.
"""

from __future__ import annotations

from pathlib import Path

#: Identity folder → the identity it is the same person as (spelling variants, a nickname, a title).
IDENTITY_ALIASES: dict[str, str] = {
    "Hasan_Wirayuda": "Hassan_Wirajuda",  # Indonesian foreign minister, two transliterations
    "Joseph_Blatter": "Sepp_Blatter",  # "Sepp" is Joseph Blatter's nickname
    "Prince_Felipe": "Felipe_De_Borbon",  # Felipe de Borbón, then Prince of Asturias
    "Dai_Chul_Chyung": "Chyung_Dai-chul",  # one Korean name, two word orders
    "Wang_Nan": "Nan_Wang",  # one Chinese name, two word orders
    "Mireya_Elisa_Moscoso_Rodriguez": "Mireya_Moscoso",  # full and short name of Panama's president
    "Cristina_Fernandez": "Cristina_Kirchner",  # Cristina Fernández de Kirchner
    "Odai_Hussein": "Uday_Hussein",  # two transliterations
    "John_Barnett": "John_Burnett",  # one man photographed at one event, two spellings
}

#: Image (``<folder>/<file>``) → the identity it really shows.
IMAGE_RELABELS: dict[str, str] = {
    "Martha_Bowen/Martha_Bowen_0002.jpg": "Gabrielle_Rose",  # the same photograph as Gabrielle_Rose_0001.jpg
    "Shavon_Earp/Shavon_Earp_0001.jpg": "Diana_Taurasi",  # shows Diana Taurasi
    "Lane_Bryant/Lane_Bryant_0001.jpg": "Roseanne_Barr",  # Lane Bryant is a clothing brand; shows Roseanne Barr
}


def lfw_identity(path: str | Path) -> str:
    """The identity an LFW image ``<root>/<Name>/<Name>_NNNN.jpg`` shows, after the corrections above."""
    path = Path(path)
    relabel = IMAGE_RELABELS.get(f"{path.parent.name}/{path.name}")
    if relabel is not None:
        return relabel
    return IDENTITY_ALIASES.get(path.parent.name, path.parent.name)
