"""The documents section of the run configuration: what keeps an interleaved document (input.format
mmc4 or obelics) once its images went through the image stages. Beside the others in `sections.py`,
which would be over 400 lines with it."""

from __future__ import annotations

from pydantic import Field

from mmcurate.schemas.sections import _Section


class DocumentsConfig(_Section):
    # a document whose image was dropped as nsfw_image is dropped whole (nsfw_document), as OBELICS and
    # MMC4 did; false: only that image is removed, as any other image that failed or was dropped
    nsfw_drops_document: bool = True
    # a document left with fewer kept images is dropped (too_few_images); 1 is OBELICS's
    # number_images_min_cutoff
    min_images: int = Field(1, ge=0)
    # a document with fewer words in its texts is dropped (too_few_words); 10 is OBELICS's
    # document-level cut (number_words_doc_level_min_cutoff)
    min_words: int = Field(10, ge=0)
