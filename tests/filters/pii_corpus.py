"""A labelled PII corpus built with Faker in several locales, mixed with PII-free captions full of numbers.

Shared by the PII test and `bench/safety.py`. Each item is (text, [(start, end, kind), ...]).
"""

from __future__ import annotations

import random
import re

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "en_IN", "ja_JP")

PII_TEMPLATES = {
    "email": ["Contact {} for prints of this photo", "photo by jane, mail {}", "Send offers to {}."],
    "phone": ["Call {} to book the venue", "Bakery on Main St, tel. {}", "for rent, phone {} after 6pm",
              "Joe's Pizza {} open late", "{} - ask for Maria"],
    "card": ["paid with card {} at the shop", "my card number is {}"],
    "iban": ["Donations to IBAN {} please", "Account {} for the deposit"],
    "ip": ["camera feed at {} in the lobby", "server {} rack view"],
    "ssn": ["applicant SSN {} on the form", "scan of card with {}"],
    "url_secret": ["shared album {} (private)", "download at {}"],
}

NEGATIVES = [
    "Vintage sofa, only ${price}, pick up {date}",
    "Sunset over the bay on {date} at {time}",
    "ISBN {isbn} paperback cover, 2nd edition",
    "NVIDIA RTX {n4} graphics card, 24 GB, {price}",
    "Samsung SM-G{n3}B phone in blue, model {n4}-{n2}",
    "Order #{n8} shipped: 3 x 750 ml bottles",
    "Marathon 2019: runner {n4} finishes in 3:{n2}:{n2}",
    "Screen 1920x1080, {n2}.{n1} inch, {n3} Hz, {price}",
    "Flat {n3} m2 for {price} per month since {year}",
    "Coordinates 48.{n4}, 2.{n4} near the river",
    "Build {n2}.{n1}.{n4}, released {date}",
    "Part no. {n4}-{n4}-{n2}, torque {n2}.{n1} Nm",
    "Population {n3},{n3},{n3} in {year} census",
    "Score 3-{n1} after {n2} minutes, attendance {n2},{n3}",
    "Temperature {n2}.{n1} C at {time} on {date}",
    "Lot {n4}{n4}{n4}{n4} at the auction, estimate {price}",
    "Track {n2} of {n2}, {n1}:{n2} long, catalogue {n6}",
    "Route {n3} km from km {n3}.{n1} to {n3}.{n1}",
]


def _fill_negative(rng: random.Random, fake) -> str:
    template = rng.choice(NEGATIVES)
    digits = lambda k: "".join(rng.choice("0123456789") for _ in range(k))
    fixed = {
        "price": rng.choice(["$", "EUR ", "£"]) + f"{rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}",
        "date": rng.choice([fake.date(pattern="%Y-%m-%d"), fake.date(pattern="%d.%m.%Y"), fake.date(pattern="%m/%d/%Y")]),
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        "isbn": fake.isbn13(),
        "year": str(rng.randint(1950, 2026)),
    }
    # every placeholder drawn afresh, so that "{n4}-{n4}" is two different numbers
    return re.sub(r"\{(\w+)\}", lambda m: fixed.get(m.group(1)) or digits(int(m.group(1)[1:])), template)


def _value(kind: str, fake, us, rng: random.Random) -> str:
    if kind == "email":
        return fake.email()
    if kind == "phone":
        return fake.phone_number()
    if kind == "card":
        number = fake.credit_card_number()
        if rng.random() < 0.5 and len(number) == 16:
            number = " ".join(number[i:i + 4] for i in range(0, 16, 4))
        return number
    if kind == "iban":
        value = fake.iban()
        return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.4 else value
    if kind == "ip":
        return fake.ipv4() if rng.random() < 0.6 else fake.ipv6()
    if kind == "ssn":  # US social security numbers (other locales' ssn() are national ids)
        return us.ssn()
    return rng.choice([
        f"https://{fake.user_name()}:{fake.password(special_chars=False)}@{fake.domain_name()}/album",
        f"https://{fake.domain_name()}/share?token={fake.sha1()[:24]}",
        f"https://{fake.domain_name()}/img.jpg?X-Amz-Signature={fake.sha256()[:40]}&x=1",
    ])


def corpus(n_pii: int = 700, n_clean: int = 700, seed: int = 0) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """`n_pii` captions with one or two labelled findings each, and `n_clean` with none."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {}
    for loc in LOCALES:
        fakers[loc] = Faker(loc)
        fakers[loc].seed_instance(seed)
    items = []
    kinds = list(PII_TEMPLATES)
    for i in range(n_pii):
        fake = fakers[LOCALES[i % len(LOCALES)]]
        text, labels = "", []
        for part in range(rng.choice((1, 1, 2))):
            kind = kinds[(i + part * 3) % len(kinds)]
            value = _value(kind, fake, fakers["en_US"], rng)
            before, after = rng.choice(PII_TEMPLATES[kind]).split("{}")
            prefix = (text + " ") if text else ""
            start = len(prefix) + len(before)
            labels.append((start, start + len(value), kind))
            text = prefix + before + value + after
        items.append((text, labels))
    for i in range(n_clean):
        items.append((_fill_negative(rng, fakers[LOCALES[i % len(LOCALES)]]), []))
    rng.shuffle(items)
    return items


def score(items, find) -> dict:
    """Recall over labelled findings (a finding of any type covering it) and precision over findings."""
    found_total = found_true = labelled = hit = 0
    misses, false = [], []
    for text, labels in items:
        spans = find(text)
        for start, end, kind in labels:
            labelled += 1
            if any(s.start <= start + 1 and s.end >= end - 1 for s in spans):
                hit += 1
            else:
                misses.append((kind, text[start:end], text))
        for s in spans:
            found_total += 1
            if any(s.start < end and s.end > start for start, end, _ in labels):
                found_true += 1
            else:
                false.append((s.kind, text[s.start:s.end], text))
    return {
        "recall": hit / max(labelled, 1),
        "precision": found_true / max(found_total, 1),
        "labelled": labelled,
        "found": found_total,
        "misses": misses,
        "false": false,
    }
