"""The built-in demo corpus: English-to-German pairs composed offline from real linguistic resources (Babel's
CLDR data: weekdays, months, countries, languages, currencies, units, localised dates and numbers; num2words for
spelled-out numbers), with a known share of realistic, labelled corruptions. Deterministic for a seed."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

CORRUPTIONS = ("misaligned", "untranslated", "wrong_language", "truncated", "repeated")
LANGS = ("en", "de", "fr")


def _cldr():
    from babel import Locale

    return {lang: Locale(lang) for lang in LANGS}


LANGUAGES_NAMED = "de fr es it pt nl pl sv ja zh ru ar tr el fi da cs hu ko hi"  # languages the sentences name


class SlotMaker:
    """Draws slot values from CLDR in en/de/fr at once, so a sentence exists in all three languages."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.loc = _cldr()
        en = self.loc["en"]
        self.countries = sorted(
            c
            for c in en.territories
            if c.isalpha() and len(c) == 2 and all(c in self.loc[x].territories for x in LANGS)
        )
        self.languages = sorted(LANGUAGES_NAMED.split())
        self.currencies = ["EUR", "USD", "GBP", "JPY", "CHF", "SEK", "NOK", "PLN", "CAD", "AUD", "CNY", "INR"]
        self.units = [
            "length-kilometer",
            "length-meter",
            "mass-kilogram",
            "volume-liter",
            "duration-hour",
            "duration-minute",
            "length-centimeter",
            "mass-gram",
        ]

    def _each(self, fn: Callable[[str], str]) -> dict[str, str]:
        return {lang: fn(lang) for lang in LANGS}

    def weekday(self):
        """A weekday name in every language."""
        i = self.rng.randrange(7)
        return self._each(lambda lang: self.loc[lang].days["format"]["wide"][i])

    def month(self):
        """A month name in every language."""
        i = self.rng.randrange(1, 13)
        return self._each(lambda lang: self.loc[lang].months["format"]["wide"][i])

    def country(self):
        """A country name in every language."""
        c = self.rng.choice(self.countries)
        return self._each(lambda lang: self.loc[lang].territories[c])

    def language(self):
        """A language name in every language."""
        c = self.rng.choice(self.languages)
        return self._each(lambda lang: self.loc[lang].languages[c])

    def date(self):
        """A localised date in every language."""
        from babel.dates import format_date

        d = dt.date(2000, 1, 1) + dt.timedelta(days=self.rng.randrange(10_000))
        return self._each(lambda lang: format_date(d, format="long", locale=lang))

    def amount(self):
        """A localised currency amount in every language."""
        from babel.numbers import format_decimal

        value = round(self.rng.uniform(1, 5000), self.rng.choice([0, 2]))
        cur = self.rng.choice(self.currencies)
        return self._each(lambda lang: f"{format_decimal(value, locale=lang)} {self.loc[lang].currencies[cur]}")

    def quantity(self):
        """A localised quantity with its unit in every language."""
        from babel.units import format_unit

        value = self.rng.randrange(2, 500)
        unit = self.rng.choice(self.units)
        return self._each(lambda lang: format_unit(value, unit, locale=lang))

    def count(self):
        """A number spelled out in every language."""
        from num2words import num2words

        n = self.rng.randrange(2, 100)
        return self._each(lambda lang: num2words(n, lang=lang))


# Sentence frames: the same content in English, German and French; slots are filled from CLDR.
FRAMES: list[tuple[dict[str, str], tuple[str, ...]]] = [
    (
        {"en": "The meeting is on {date}.", "de": "Das Treffen ist am {date}.", "fr": "La réunion a lieu le {date}."},
        ("date",),
    ),
    (
        {
            "en": "We travel to {country} on {weekday}.",
            "de": "Am {weekday} reisen wir nach {country}.",
            "fr": "Nous partons pour {country} le {weekday}.",
        },
        ("country", "weekday"),
    ),
    (
        {
            "en": "She speaks {language} and {language2}.",
            "de": "Sie spricht {language} und {language2}.",
            "fr": "Elle parle {language} et {language2}.",
        },
        ("language", "language2"),
    ),
    (
        {"en": "The ticket costs {amount}.", "de": "Das Ticket kostet {amount}.", "fr": "Le billet coûte {amount}."},
        ("amount",),
    ),
    (
        {
            "en": "The distance is {quantity}.",
            "de": "Die Entfernung beträgt {quantity}.",
            "fr": "La distance est de {quantity}.",
        },
        ("quantity",),
    ),
    ({"en": "I have {count} books.", "de": "Ich habe {count} Bücher.", "fr": "J'ai {count} livres."}, ("count",)),
    (
        {
            "en": "My birthday is in {month}.",
            "de": "Mein Geburtstag ist im {month}.",
            "fr": "Mon anniversaire est en {month}.",
        },
        ("month",),
    ),
    (
        {
            "en": "{country} borders {country2}.",
            "de": "{country} grenzt an {country2}.",
            "fr": "{country} est voisin de {country2}.",
        },
        ("country", "country2"),
    ),
    (
        {
            "en": "The shop is closed on {weekday}.",
            "de": "Das Geschäft ist am {weekday} geschlossen.",
            "fr": "Le magasin est fermé le {weekday}.",
        },
        ("weekday",),
    ),
    (
        {
            "en": "We need {quantity} for {count} people.",
            "de": "Wir brauchen {quantity} für {count} Personen.",
            "fr": "Il nous faut {quantity} pour {count} personnes.",
        },
        ("quantity", "count"),
    ),
    (
        {
            "en": "The report from {month} was published on {date}.",
            "de": "Der Bericht aus dem {month} wurde am {date} veröffentlicht.",
            "fr": "Le rapport de {month} a été publié le {date}.",
        },
        ("month", "date"),
    ),
    (
        {
            "en": "In {country} people pay with {amount}.",
            "de": "In {country} bezahlt man mit {amount}.",
            "fr": "En {country}, on paie avec {amount}.",
        },
        ("country", "amount"),
    ),
    (
        {
            "en": "{language} is spoken in {country}.",
            "de": "In {country} wird {language} gesprochen.",
            "fr": "On parle {language} en {country}.",
        },
        ("language", "country"),
    ),
    (
        {
            "en": "The train leaves on {weekday}, {date}.",
            "de": "Der Zug fährt am {weekday}, dem {date}, ab.",
            "fr": "Le train part le {weekday} {date}.",
        },
        ("weekday", "date"),
    ),
]


def _sentence(maker: SlotMaker, rng: random.Random) -> dict[str, str]:
    frame, slots = FRAMES[rng.randrange(len(FRAMES))]
    values: dict[str, dict[str, str]] = {}
    for slot in slots:
        values[slot] = getattr(maker, slot.rstrip("2"))()
    return {lang: frame[lang].format(**{k: v[lang] for k, v in values.items()}) for lang in LANGS}


def corrupt_target(kind: str, src: str, tgt: str, other_tgt: str, wrong_lang_tgt: str, rng: random.Random) -> str:
    """The corrupted target of one pair: `other_tgt` is another pair's target (misaligned), `wrong_lang_tgt` a
    text in a third language (wrong_language). Shared by the demo and the real-data benchmark."""
    if kind == "misaligned":
        return other_tgt
    if kind == "untranslated":
        return src
    if kind == "wrong_language":
        return wrong_lang_tgt
    words = tgt.split()
    if kind == "truncated":
        return " ".join(words[: max(1, int(len(words) * rng.uniform(0.3, 0.6)))])
    if kind != "repeated":
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
    i = rng.randrange(len(words))  # a word stutters, or a phrase is hallucinated twice
    return " ".join(words[: i + 1] + [words[i]] * rng.randint(3, 6) + words[i + 1 :])


def make_corpus(
    n_pool: int = 3000,
    n_seeds: int = 64,
    n_test: int = 300,
    noise: float = 0.2,
    seed: int = 0,
    direction: tuple[str, str] = ("en", "de"),
):
    """(pool, seeds, test) lists of records in the G-DIG translation schema; pool records carry a `corruption`
    field (None for clean pairs). Seeds and test are clean and disjoint from the pool by source text.
    `direction`: (source, target) among en/de/fr; the third language gives the wrong-language corruptions."""
    src, trg = direction
    third = next(x for x in LANGS if x not in direction)
    if src == trg or {src, trg} - set(LANGS):
        raise ValueError(f"direction must be two different languages of {LANGS}, got {direction}")
    rng = random.Random(seed)
    maker = SlotMaker(rng)
    seen: set[str] = set()
    sentences: list[dict[str, str]] = []
    while len(sentences) < n_pool + n_seeds + n_test:
        s = _sentence(maker, rng)
        if s["en"] not in seen:
            seen.add(s["en"])
            sentences.append(s)
    pool_s, seed_s, test_s = sentences[:n_pool], sentences[n_pool : n_pool + n_seeds], sentences[n_pool + n_seeds :]
    n_bad = int(round(noise * n_pool))
    bad = set(rng.sample(range(n_pool), n_bad))
    kinds = [CORRUPTIONS[i % len(CORRUPTIONS)] for i in range(n_bad)]
    rng.shuffle(kinds)
    kind_of = dict(zip(sorted(bad), kinds, strict=True))
    pool = []
    for i, s in enumerate(pool_s):
        kind = kind_of.get(i)
        if kind is None:
            target = s[trg]
        else:
            other = pool_s[(i + 1 + rng.randrange(n_pool - 1)) % n_pool]
            target = corrupt_target(kind, s[src], s[trg], other[trg], s[third], rng)
        extra = {"corruption": kind, "clean_target": s[trg]}
        pool.append(translation_record(f"pool-{i:05d}", s[src], target, src, trg) | extra)
    seeds = [translation_record(f"seed-{i:03d}", s[src], s[trg], src, trg) for i, s in enumerate(seed_s)]
    test = [translation_record(f"test-{i:04d}", s[src], s[trg], src, trg) for i, s in enumerate(test_s)]
    return pool, seeds, test


def translation_record(id_: str, src: str, tgt: str, src_lang: str = "en", trg_lang: str = "de") -> dict:
    """One pair in the official G-DIG translation schema."""
    return {"id": id_, "src_text": src, "trg_text": tgt, "src_lang": src_lang, "trg_lang": trg_lang}
