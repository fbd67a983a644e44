"""Personal data in captions: find it, then redact it with typed placeholders.

Patterns find candidates; validators confirm them, so that the numbers captions are full of
(prices, dates, model numbers, ISBNs) are left alone:

- e-mail addresses;
- phone numbers (`phonenumbers`, tried in each region of `regions`, plus any number written
  in international form);
- payment card numbers: a known issuer prefix and a valid Luhn check digit;
- IBANs: country length and mod-97 check (`python-stdnum`);
- IPv4 and IPv6 addresses (`ipaddress`);
- US social security numbers (the area, group and serial rules of the SSA);
- URLs that carry credentials (`user:password@`) or tokens in their query.

`find(text)` returns non-overlapping typed spans; `redact(text, spans)` swaps each for its
placeholder (`[EMAIL]`, `[PHONE]`, ...).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import pyarrow as pa

from mmcurate.filters.base import Filter, Verdicts
from mmcurate.schemas import columns as C

PLACEHOLDERS = {
    "url_secret": "[URL]",
    "email": "[EMAIL]",
    "iban": "[IBAN]",
    "card": "[CARD]",
    "ssn": "[SSN]",
    "ip": "[IP]",
    "phone": "[PHONE]",
}
# where two findings overlap, the earlier type here wins
PRIORITY = tuple(PLACEHOLDERS)
DEFAULT_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "JP", "CA", "AU")

_URL = re.compile(r"\b(?:https?|ftp|wss?)://[^\s<>\"']+", re.IGNORECASE)
_SECRET_QUERY = re.compile(
    r"[?&#](?:access_?token|id_?token|refresh_?token|token|api_?key|apikey|key|secret|client_secret|password|"
    r"passwd|pwd|auth|session|sessionid|sig|signature|x-amz-signature|x-amz-credential|code)=[^&#\s]{6,}",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){11,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])")
_DIGITS = re.compile(r"\d")
# countries that issue IBANs (SWIFT's registry)
_IBAN_COUNTRIES = frozenset(
    ["AD", "AE", "AL", "AT", "AZ", "BA", "BE", "BG", "BH", "BI", "BR", "BY", "CH", "CR", "CY", "CZ", "DE", "DJ", "DK", "DO", "EE", "EG", "ES", "FI", "FK", "FO", "FR", "GB", "GE", "GI", "GL", "GR", "GT", "HR", "HU", "IE", "IL", "IQ", "IS", "IT", "JO", "KW", "KZ", "LB", "LC", "LI", "LT", "LU", "LV", "LY", "MC", "MD", "ME", "MK", "MN", "MR", "MT", "MU", "NI", "NL", "NO", "OM", "PK", "PL", "PS", "PT", "QA", "RO", "RS", "RU", "SA", "SC", "SD", "SE", "SI", "SK", "SM", "SO", "ST", "SV", "TL", "TN", "TR", "UA", "VA", "VG", "XK", "YE"]
)
# issuer prefixes (IIN ranges) of the card networks in use
_CARD_PREFIX = re.compile(
    r"^(?:4\d{12}(?:\d{3}){0,2}"  # Visa 13/16/19
    r"|(?:5[1-5]\d{2}|222[1-9]|22[3-9]\d|2[3-6]\d{2}|27[01]\d|2720)\d{12}"  # Mastercard
    r"|3[47]\d{13}"  # American Express
    r"|3(?:0[0-5]|[68]\d)\d{11,16}"  # Diners Club
    r"|6(?:011|5\d{2}|4[4-9]\d)\d{12,15}"  # Discover
    r"|35\d{14,17}|(?:2131|1800)\d{11}"  # JCB
    r"|(?:5[06-9]|6\d)\d{10,17})$"  # Maestro
)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn check (card numbers' last digit)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _urls(text: str) -> list[Span]:
    out = []
    for m in _URL.finditer(text):
        url = m.group().rstrip(".,;:!?)]}")
        if _USERINFO.match(url) or _SECRET_QUERY.search(url):
            out.append(Span(m.start(), m.start() + len(url), "url_secret"))
    return out


def _emails(text: str) -> list[Span]:
    return [Span(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]


def _iban_ok(value: str) -> bool:
    """A valid IBAN (country format and mod-97), or one of a known country's with a good mod-97 check."""
    from stdnum import iban

    compact = value.replace(" ", "")
    if iban.is_valid(compact):
        return True
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return compact[:2] in _IBAN_COUNTRIES and 15 <= len(compact) <= 34 and int(numeric) % 97 == 1


def _ibans(text: str) -> list[Span]:
    out = []
    for m in _IBAN.finditer(text):
        value = m.group()
        # the pattern is greedy: also try shorter prefixes ending at a group boundary
        for end in range(len(value), 14, -1):
            candidate = value[:end]
            if (end == len(value) or not value[end - 1].isspace()) and _iban_ok(candidate):
                out.append(Span(m.start(), m.start() + len(candidate.rstrip()), "iban"))
                break
    return out


def _cards(text: str) -> list[Span]:
    out = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        groups = re.split(r"[ -]", m.group())
        if len(groups) > 1 and len({len(g) for g in groups[1:-1]}) > 1:
            continue  # card numbers are written in even groups (4-4-4-4, 4-6-5)
        if _CARD_PREFIX.match(digits) and luhn_ok(digits):
            out.append(Span(m.start(), m.end(), "card"))
    return out


def _ssns(text: str) -> list[Span]:
    out = []
    for m in _SSN.finditer(text):
        area, group, serial = m.groups()
        if area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000":
            out.append(Span(m.start(), m.end(), "ssn"))
    return out


def _ips(text: str) -> list[Span]:
    out = []
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        out.append(Span(m.start(), m.end(), "ip"))
    for m in _IPV6.finditer(text):
        value = m.group()
        if value.count(":") < 2 or len(re.sub(r"[^0-9A-Fa-f]", "", value)) < 3:
            continue
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            continue
        out.append(Span(m.start(), m.end(), "ip"))
    return out


@lru_cache(maxsize=1)
def _phonenumbers():
    import phonenumbers

    return phonenumbers


# a run of digits with the separators phone numbers are written with, and an optional extension
_PHONE = re.compile(
    r"(?<![\w+.,/-])(?:\+|00)?(?:\(\+?\d{1,5}\)[ .-]?)?\d[\d ().\-/]{5,22}\d"
    r"(?:\s*(?:x|ext\.?|#)\s*\d{1,6})?(?![\w.,/-]\d|\w)",
    re.IGNORECASE,
)
_PHONE_CUE = re.compile(
    r"(?:tel|phone|call|fax|mobile|mob|cell|ph|whatsapp|sms|text|contact|ring|telefon\w*|t[ée]l[ée]phone|"
    r"tlf|numero|número|nummer|rufnummer|携帯|電話)\W{0,3}(?:\w+\W{1,3}){0,2}$",
    re.IGNORECASE,
)
# words that introduce other numbers: a number after them needs an international form or a phone cue
_NUMBER_CUE = re.compile(
    r"(?:part|model|sku|serial|s/n|order|invoice|ref|reference|item|lot|isbn|issn|catalog(?:ue)?|cat|art|"
    r"article|id|no|nr|#)\W{0,3}$",
    re.IGNORECASE,
)
_NOT_PHONE = (
    re.compile(r"\d{1,4}([-./])\d{1,2}\1\d{2,4}"),  # dates
    re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d{1,2}"),  # amounts, decimals
    re.compile(r"97[89][- ]?(?:\d[- ]?){9}\d"),  # ISBN-13
)
_EXTENSION = re.compile(r"\s*(?:x|ext\.?|#)\s*\d{1,6}$", re.IGNORECASE)


def _phone_ok(raw: str, before: str, regions: Sequence[str]) -> bool:
    pn = _phonenumbers()
    number = _EXTENSION.sub("", raw)
    digits = len(_DIGITS.findall(number))
    if not 7 <= digits <= 15 or any(p.fullmatch(number) for p in _NOT_PHONE):
        return False
    international = number.startswith(("+", "00", "(+"))
    cue = bool(_PHONE_CUE.search(before[-30:]))
    shaped = bool(re.search(r"\(\d{2,5}\)", number)) or (number.startswith("0") and digits >= 9)
    if not (international or cue) and _NUMBER_CUE.search(before[-12:]):
        return False
    for region in (None,) if international else regions:
        try:
            parsed = pn.parse("+" + number[2:] if number.startswith("00") else number, region)
        except pn.NumberParseException:
            continue
        if international or cue or shaped:
            if pn.is_possible_number(parsed):
                return True
        elif pn.is_valid_number(parsed) and re.search(r"[ ().-]", number):
            return True
    return False


def _phones(text: str, regions: Sequence[str]) -> list[Span]:
    if len(_DIGITS.findall(text)) < 7:
        return []
    return [
        Span(m.start(), m.end(), "phone")
        for m in _PHONE.finditer(text)
        if _phone_ok(m.group().strip(), text[: m.start()], regions)
    ]


def find(text: str, regions: Sequence[str] = DEFAULT_REGIONS, types: Sequence[str] = PRIORITY) -> list[Span]:
    """Typed, non-overlapping spans of personal data in `text`, in text order."""
    if not text:
        return []
    finders = {"url_secret": _urls, "email": _emails, "iban": _ibans, "card": _cards, "ssn": _ssns, "ip": _ips,
               "phone": lambda t: _phones(t, regions)}
    found = [span for kind in PRIORITY if kind in types for span in finders[kind](text)]
    found.sort(key=lambda s: (PRIORITY.index(s.kind), -(s.end - s.start), s.start))
    chosen: list[Span] = []
    for span in found:
        if all(span.end <= c.start or span.start >= c.end for c in chosen):
            chosen.append(span)
    return sorted(chosen, key=lambda s: s.start)


def redact(text: str, spans: Sequence[Span]) -> str:
    """`text` with every span replaced by its typed placeholder."""
    out, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out.append(text[last:span.start])
        out.append(PLACEHOLDERS[span.kind])
        last = span.end
    out.append(text[last:])
    return "".join(out)


class PiiFilter(Filter):
    """Personal data in captions: redacted (the stored caption is rewritten), flagged, or the row dropped."""

    stage = "privacy"
    columns_when_off = True
    name = "pii"
    section = "privacy.pii"
    order = 20
    fields = (pa.field(C.PII_TYPES, pa.list_(pa.string())), pa.field(C.PII_ACTION, pa.string()))
    settings = ("privacy.pii.action", "privacy.pii.types")

    def fingerprint(self) -> dict:
        p = self.options
        return {"pii": p.model_dump() if p.enabled else None}

    def apply(self, rows: pa.Table) -> Verdicts:
        p = self.options
        done = {"redact": "redacted", "flag": "flagged"}.get(p.action)
        kinds, captions, acted, notes, reasons, details = [], [], [], [], [], []
        for caption in rows[C.CAPTION].to_pylist():
            spans = find(caption or "", p.phone_regions, p.types)
            found = sorted({s.kind for s in spans})
            kinds.append(found)
            captions.append(redact(caption, spans) if spans and p.action == "redact" else caption)
            acted.append(done if spans and done else None)
            notes.append(f"caption {done}: {', '.join(found)}" if spans and done else None)
            dropped = bool(spans) and p.action == "drop"
            reasons.append("contains_pii" if dropped else None)
            details.append(f"caption holds {', '.join(found)}" if dropped else None)
        return Verdicts(scores={C.PII_TYPES: kinds}, data={C.CAPTION: captions}, actions={C.PII_ACTION: acted},
                        notes=notes, reasons=reasons, details=details)
