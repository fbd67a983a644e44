"""An export's fields that describe its image or caption describe the exported bytes.

A stage that rewrites a kept row (privacy: faces blurred, PII redacted) leaves the features and
caption statistics of the row as measured before it. An export recomputes them from what it
writes: a blurred image gets its own sha256, pHash, dHash and luma spread, a redacted caption its
own counts. The download's sha256 (the one exact dedup compared) stays as `download_sha256`.
Scores that are decisions (CLIP, toxicity, NSFW, language) describe what was judged, and stay.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from mmcurate.filters import caption_text
from mmcurate.filters.image_hash import signals
from mmcurate.schemas import columns as C

DOWNLOAD_SHA256 = "download_sha256"
IMAGE_SIGNALS = (C.PHASH, C.DHASH, C.LUMA_STD)  # the features stage's, besides sha256


def describe_exported(table: pa.Table, exact: bool) -> pa.Table:
    """`table` (samples to export, with their image and caption as exported) with the features and
    caption statistics of those bytes; `exact`: the run's pHash mode (`dedup.phash.exact`)."""
    if C.SHA256 in table.column_names and C.IMAGE in table.column_names:
        table = _image_features(table, exact)
    stats = [f for f in caption_text.STAT_FIELDS if f.name in table.column_names]
    if stats and C.CAPTION in table.column_names:
        measured = caption_text.stats_columns([c or "" for c in table[C.CAPTION].to_pylist()])
        for f in stats:
            table = _replace(table, f.name, measured[f.name])
    return table


def _image_features(table: pa.Table, exact: bool) -> pa.Table:
    images = table[C.IMAGE].to_pylist()
    stored = table[C.SHA256].to_pylist()
    digests = [hashlib.sha256(b).hexdigest() if b is not None else None for b in images]
    changed = [i for i, (d, s) in enumerate(zip(digests, stored)) if d != s and images[i] is not None]
    table = _replace(table, C.SHA256, digests)
    table = table.add_column(table.column_names.index(C.SHA256) + 1, DOWNLOAD_SHA256, pa.array(stored, pa.string()))
    present = [c for c in IMAGE_SIGNALS if c in table.column_names]
    if changed and present:
        columns = {c: table[c].to_pylist() for c in present}
        for i in changed:
            sig = signals(images[i], exact=exact)
            for c in present:
                columns[c][i] = getattr(sig, c)
        for c in present:
            table = _replace(table, c, columns[c])
    return table


def _replace(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
