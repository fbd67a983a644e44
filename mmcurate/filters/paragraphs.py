"""The run's text rules on each paragraph of an interleaved document (documents.paragraphs).

The filters that read nothing but the caption (quality.text's boilerplate, quality.emoji,
safety.toxicity, privacy.pii: found by their stages, as the stages find them) judge each paragraph
as they would judge a caption, with their own settings, while they are on; `documents.paragraphs
.languages` adds the paragraph's language. A paragraph one of them objects to leaves its document
under the filter's own reason (`url_caption`, `toxic_caption`, `wrong_language`); a filter that
rewrites the caption (pii's redact) rewrites the paragraph. Paragraphs of many documents are judged
in one batch, so a model sees thousands of them at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from mmcurate.filters import filters_for
from mmcurate.filters.base import Filter
from mmcurate.filters.caption_text import stats_columns
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

STAGES = ("quality", "safety", "privacy")  # whose caption-only filters judge paragraphs


@dataclass
class Outcome:
    """One document's texts after the rules: which stay (their index among its texts) and as what."""

    kept: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    removed: Counter = field(default_factory=Counter)  # reason -> paragraphs removed
    rewritten: Counter = field(default_factory=Counter)  # what a filter did to kept ones (redacted) -> count


def text_filters(config: Config) -> list[Filter]:
    """The enabled filters of `STAGES` that need no column but the caption, in stage order."""
    if not config.documents.paragraphs.enabled:
        return []
    found = [cls(config) for stage in STAGES for cls in filters_for(stage)]
    return [f for f in found if not f.needs and f.enabled]


class ParagraphRules:
    """Ray-free: `prepare` on the driver, `setup` once per worker, then `apply` to batches."""

    def __init__(self, config: Config):
        self.config = config
        self.filters = text_filters(config)
        self.languages = list(config.documents.paragraphs.languages) if config.documents.paragraphs.enabled else []

    @property
    def active(self) -> bool:
        return bool(self.filters or self.languages)

    def fingerprint(self) -> dict:
        return {"filters": [f.fingerprint() | {"name": f.name} for f in self.filters], "languages": self.languages,
                **({"language": self.config.quality.language.model_dump()} if self.languages else {})}

    def prepare(self) -> dict:
        return {f.name: m for f in self.filters if (m := f.prepare())}

    def setup(self) -> None:
        for f in self.filters:
            f.setup()

    def apply(self, documents: Sequence[Sequence[str]]) -> list[Outcome]:
        """The outcome of each document's texts."""
        flat = [t for texts in documents for t in texts]
        gone: list[str | None] = [None] * len(flat)
        current = list(flat)
        notes: list[list[str]] = [[] for _ in flat]
        if flat and self.languages:
            self._language(flat, gone)
        for f in self.filters if flat else ():
            alive = [i for i, g in enumerate(gone) if g is None]
            if not alive:
                break
            texts = [current[i] for i in alive]
            rows = pa.table({C.CAPTION: pa.array(texts, pa.string()), **stats_columns(texts)})
            verdict = f.apply(rows)
            rewritten = verdict.data.get(C.CAPTION)
            for j, i in enumerate(alive):
                if verdict.reasons is not None and verdict.reasons[j]:
                    gone[i] = verdict.reasons[j]
                    continue
                if rewritten is not None and rewritten[j] != current[i]:
                    current[i] = rewritten[j]
                for action in verdict.actions.values():
                    if action[j]:
                        notes[i].append(action[j])
        out, at = [], 0
        for texts in documents:
            o = Outcome()
            for k in range(len(texts)):
                i = at + k
                if gone[i] is not None:
                    o.removed[gone[i]] += 1
                else:
                    o.kept.append(k)
                    o.texts.append(current[i])
                    o.rewritten.update(notes[i])
            at += len(texts)
            out.append(o)
        return out

    def _language(self, texts: list[str], gone: list[str | None]) -> None:
        from mmcurate.filters.language import identify

        lang = self.config.quality.language
        for i, (code, confidence) in enumerate(identify(texts, lang.accuracy)):
            if code not in self.languages or confidence < lang.min_confidence:
                gone[i] = "wrong_language"


def describe(outcome: Outcome, total: int) -> str | None:
    """What the rules did to a document's texts, for its detail ('2 of 7 texts removed (1 toxic_caption,
    1 url_caption); 1 redacted'), or None when nothing."""
    parts = []
    removed = sum(outcome.removed.values())
    if removed:
        why = ", ".join(f"{n} {r}" for r, n in sorted(outcome.removed.items(), key=lambda x: (-x[1], x[0])))
        parts.append(f"{removed} of {total} texts removed ({why})")
    parts += [f"{n} {what}" for what, n in sorted(outcome.rewritten.items())]
    return "; ".join(parts) or None
