"""Which language a short text is in, by a documented heuristic (no model, no network): pure.

1. Script: if at least 20% of the letters are outside the Latin script, the text is that script's
   (`script:cyrillic`, `script:greek`, `script:arabic`, `script:hebrew`, `script:cjk`, `script:other`): it is
   in no language this module knows by words.
2. Words: the text's lower-cased words are counted against a short list of function words per language (en, de,
   fr, es, it, nl, pt). The language with the most hits wins if it has at least MIN_HITS and beats the runner-up
   by MARGIN; otherwise the language is undetermined (None): too short or too mixed to say, e.g. "Kestrel K3 W5?".

`dataset from-captures --language en` drops a prompt identified as another language or script and keeps an
undetermined one (counted apart), since short technical questions carry few function words.
"""
from __future__ import annotations

import re
import unicodedata

MIN_HITS = 2
MARGIN = 1
FUNCTION_WORDS = {
    "en": "the a an is are was were of to in and or for on with what does do how my it this that you i not can be "
          "why when where which there have has if from",
    "de": "der die das und ist nicht ich ein eine einen zu mit wie auf für den dem es sie wir warum wo wann "
          "mein meine meinem ist sind bei oder was",
    "fr": "le la les et est une un des du pas je que qui pour dans ce il elle vous comment pourquoi mon ma mes "
          "sur avec ou où quand",
    "es": "el la los las y es un una de que no en por para con como qué mi se lo cómo por qué dónde cuando está",
    "it": "il lo la gli le e è un una di che non per con come mi sono del della perché dove quando mio",
    "nl": "de het een en is niet ik van dat op te met wat hoe mijn zijn waarom waar wanneer",
    "pt": "o a os as e é um uma de que não em para com como meu do da por quando onde está",
}
LANGUAGES = tuple(FUNCTION_WORDS)
_WORDS = {lang: frozenset(words.split()) for lang, words in FUNCTION_WORDS.items()}
_SCRIPTS = (("CYRILLIC", "cyrillic"), ("GREEK", "greek"), ("ARABIC", "arabic"), ("HEBREW", "hebrew"),
            ("CJK", "cjk"), ("HIRAGANA", "cjk"), ("KATAKANA", "cjk"), ("HANGUL", "cjk"))


def script_of(text: str) -> str:
    """'latin' when at least 80% of the letters are Latin (or there are none), else the main other script."""
    letters = [c for c in text if c.isalpha()]
    other: dict[str, int] = {}
    for c in letters:
        name = unicodedata.name(c, "")
        if "LATIN" not in name:
            kind = next((k for key, k in _SCRIPTS if key in name), "other")
            other[kind] = other.get(kind, 0) + 1
    if not letters or sum(other.values()) / len(letters) < 0.2:
        return "latin"
    return max(other, key=other.get)


def language_of(text: str) -> str | None:
    """A code of LANGUAGES, `script:NAME` for a text mostly in another script, or None (undetermined)."""
    script = script_of(text)
    if script != "latin":
        return f"script:{script}"
    words = re.findall(r"[^\W\d_]+", text.lower())
    hits = sorted(((sum(w in _WORDS[lang] for w in words), lang) for lang in LANGUAGES), reverse=True)
    (best, lang), (second, _) = hits[0], hits[1]
    return lang if best >= MIN_HITS and best - second >= MARGIN else None
