"""PII in captions: each type found and validated, typed placeholders, and the Faker corpus figures."""

from __future__ import annotations

import pytest

from mmcurate.filters import pii
from tests.filters.pii_corpus import corpus, score


@pytest.mark.parametrize(("text", "kind"), [
    ("mail jane.doe+photos@example.co.uk today", "email"),
    ("call +44 20 7946 0958 after six", "phone"),
    ("tel. (212) 555-0187 ext 12", "phone"),
    ("pay with 4111 1111 1111 1111 at the door", "card"),
    ("IBAN DE89 3704 0044 0532 0130 00 for the deposit", "iban"),
    ("camera at 192.168.10.4 in the hall", "ip"),
    ("node 2001:db8::8a2e:370:7334 down", "ip"),
    ("SSN 123-45-6789 on the form", "ssn"),
    ("album https://bob:hunter2@photos.example.com/a", "url_secret"),
    ("see https://cdn.example.com/x.jpg?token=abcdef123456", "url_secret"),
])
def test_each_type_is_found(text, kind):
    assert [s.kind for s in pii.find(text)] == [kind]


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 (bad check digit)",  # Luhn fails
    "IBAN DE89 3704 0044 0532 0130 01",  # mod-97 fails
    "SSN 000-12-3456 and 666-12-3456",  # never issued
    "version 999.1.2.3 and 300.1.1.1",  # not IPv4
    "ISBN 978-3-16-148410-0, $1,299.99, 2023-11-05, 14:30, RTX 4090, https://example.com/page?id=3",
])
def test_lookalikes_are_left_alone(text):
    assert pii.find(text) == []


def test_redaction_uses_typed_placeholders():
    text = "Contact jane@example.org or +1 202-555-0143, card 5555 5555 5555 4444."
    spans = pii.find(text)
    assert pii.redact(text, spans) == "Contact [EMAIL] or [PHONE], card [CARD]."
    assert pii.find(text, types=["email"]) == [s for s in spans if s.kind == "email"]


def test_faker_corpus_recall_and_precision():
    """Faker PII in ten locales mixed with PII-free captions full of numbers (README's figures)."""
    result = score(corpus(seed=0), pii.find)
    assert result["labelled"] > 800 and result["found"] > 800
    assert result["recall"] >= 0.98, result["misses"][:10]
    assert result["precision"] >= 0.95, result["false"][:10]
