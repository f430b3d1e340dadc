"""Invented names: pronounceable, unique, and not English words ('Tarsk', 'Veloria', 'Drumeic')."""

from __future__ import annotations

import random

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o"]
_CODAS = ["", "", "", "n", "r", "l", "s", "k"]
_ENGLISH = {"bonus", "lotus", "torus", "virus", "sinus", "talk", "milk", "silk", "bulk", "tank", "bank", "monk", "dusk",
            "task", "desk", "disk", "risk", "mask", "musk", "tusk", "kiosk", "salon", "melon", "lemon", "demon",
            "baron", "talon", "tenor", "manor", "minor", "donor", "motor", "rotor", "tutor", "lunar", "solar",
            "polar", "sonar", "vital", "total", "metal", "petal", "pedal", "medal", "rival", "canal", "banal",
            "final", "tidal", "modal", "nasal", "fatal", "natal", "fetal", "basil", "pupil", "bison", "salmon",
            "venus", "mars", "sirius", "boris", "doris", "paris", "lima", "roma", "dakar", "sudan", "kenya"}


def make_name(rng: random.Random, used: set, syllables=(2, 3), suffix: str = "") -> str:
    """An invented, pronounceable, unique name: consonant-vowel(-coda) syllables, e.g. 'Tarsk', 'Veloria'."""
    while True:
        n = rng.choice(syllables)
        s = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))
        if suffix and s[-1] in "aeiou" and suffix[0] in "aeiou":
            s = s[:-1]  # 'Gami' + 'ia' -> 'Gamia', not 'Gamiia'
        english_like = not suffix and (s.endswith(("e", "es")) or s in _ENGLISH)  # 'Side', 'Rules', 'Date'...
        s = (s + suffix).capitalize()
        if 4 <= len(s) <= 10 and not english_like and s.lower() not in used:  # `used`: membership tests only
            used.add(s.lower())
            return s
