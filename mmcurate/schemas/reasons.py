"""Every reason a ledger row may carry, by the stage (or stages, `a / b`) that gives it.

docs/reference.py writes this table into docs/reference.md; `audit --reason` accepts these (those of
the run's stages). tests/test_demo.py checks that each reason the demo's ledger holds is here.
"""

from __future__ import annotations

import re

REASONS = {
    "ingest": {
        "malformed_row": "a line that does not parse (CSV fields, JSON), a broken tar header, a captions row outside input.path",
        "not_utf8": "a line that is not UTF-8", "missing_url": "no url", "missing_caption": "no caption",
        "caption_not_text": "a caption that is not a string", "caption_too_long": "over input.max_caption_chars",
        "url_too_long": "over input.max_url_chars", "unsupported_scheme": "not http(s)", "bad_url": "not a URL",
        "credentials_in_url": "a user:password in the URL (never requested; stored and shown as user:***@)",
        "missing_image": "a pool's key with no image, a row img2dataset did not download, a named file that is absent",
        "truncated": "a pool's tar ends inside a member",
    },
    "download / load": {
        "http_NNN": "the server's status (http_404, http_500, ...)", "timeout": "no answer within timeout_s or deadline_s",
        "connection_error": "refused, reset", "dns_error": "the name does not resolve", "tls_error": "TLS failed",
        "private_address": "a private, loopback, link-local or metadata address (download.allow_networks opens one)",
        "redirect_loop": "a URL repeated, or over 10 redirects", "robots_disallowed": "X-Robots-Tag opts out (noai, ...)",
        "file_too_large": "over download.max_image_bytes", "truncated": "the body ended early",
        "not_an_image": "not an image", "undecodable_image": "an image that does not decode",
        "image_too_large": "over download.max_image_pixels (read from the header: a decompression bomb)",
        "download_error": "anything else, with its text in detail",
    },
    "quality": {
        "wrong_language": "not one of quality.basic.languages", "caption_too_short": "under min_words / min_chars",
        "image_too_small": "under min_side", "extreme_aspect_ratio": "over max_aspect",
        "filename_caption": "a file name as caption", "generic_caption": "a placeholder (untitled, image)",
        "url_caption": "a URL as caption", "mostly_digits": "mostly digits", "repetitive_caption": "one word repeated",
        "emoji_caption": "mostly emoji", "bad_caption": "another boilerplate caption",
    },
    "dedup": {
        "exact_duplicate": "identical image bytes to the kept row named in dup_of",
        "near_duplicate": "within dedup.phash.max_distance of the kept row named in dup_of",
        "near_reference": "near an image of dedup.reference_path (decontamination)",
    },
    "clip": {"low_clip_score": "under clip.min_score (or min_percentile)"},
    "semantic_dedup": {"semantic_duplicate": "CLIP image cosine at or over dedup.semantic.threshold"},
    "image_based": {"off_target_cluster": "its CLIP cluster holds none of the reference images"},
    "clip_heads": {"low_aesthetic_score": "under quality.aesthetic's threshold", "watermark": "a watermark head's score over its threshold"},
    "safety": {"toxic_caption": "toxicity over safety.toxicity.max_score", "nsfw_image": "NSFW over safety.nsfw.max_score"},
    "privacy": {"contains_face": "faces with privacy.faces.action: drop", "contains_pii": "PII with privacy.pii.action: drop"},
    "documents": {  # documents.parquet's (input.format mmc4, obelics); a failed document's stage is ingest
        "malformed_document": "a document whose lists cannot be read (not lists, of unequal length, both an image and a text at a position)",
        "empty_document": "a document with neither an image nor a text",
        "nsfw_document": "one of its images was dropped as nsfw_image (documents.nsfw_drops_document)",
        "too_few_images": "fewer images kept than documents.min_images",
        "too_few_words": "fewer words in its texts than documents.min_words",
    },
}


def reasons_of(stages: list[str]) -> set[str]:
    """The reasons the named stages can give (`http_NNN` as itself: see `is_reason`)."""
    names = set(stages)
    return {r for group, reasons in REASONS.items() if names & set(group.split(" / ")) for r in reasons}


def is_reason(reason: str, reasons: set[str]) -> bool:
    """Whether `reason` is one of `reasons`, where `http_NNN` stands for every HTTP status."""
    return reason in reasons or ("http_NNN" in reasons and re.fullmatch(r"http_\d\d\d", reason) is not None)
