"""Caption language identification, offline: lingua's models ship inside its wheel.

One detector per worker process (cached), since loading the high-accuracy models takes seconds
and about 1.2 GB; the low-accuracy mode loads in well under a second and about 0.1 GB, and is
weaker on short texts and close languages.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=2)
def _detector(accuracy: str):
    from lingua import LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_all_languages()
    if accuracy == "low":
        builder = builder.with_low_accuracy_mode()
    return builder.build()


def identify(texts: list[str], accuracy: str = "high") -> list[tuple[str | None, float]]:
    """(ISO 639-1 code, confidence) of each text's most likely language; (None, 0) when none is likely."""
    detector = _detector(accuracy)
    out: list[tuple[str | None, float]] = []
    for values in detector.compute_language_confidence_values_in_parallel(texts):
        if not values or values[0].value <= 0:
            out.append((None, 0.0))
        else:
            out.append((values[0].language.iso_code_639_1.name.lower(), float(values[0].value)))
    return out
