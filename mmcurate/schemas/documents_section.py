"""The documents section of the run configuration: what keeps an interleaved document (input.format
mmc4 or obelics) once its images went through the image stages. Beside the others in `sections.py`,
which would be over 400 lines with it."""

from __future__ import annotations

from pydantic import Field

from mmcurate.schemas.sections import _Section


class ParagraphsConfig(_Section):
    """The run's own text rules applied to each paragraph (each text) of a document, as OBELICS
    filtered paragraphs before documents: quality.text (boilerplate), quality.emoji,
    safety.toxicity and privacy.pii, each while it is on and with its own settings. A paragraph a
    rule objects to is removed from its document (its reason counted in the document's detail);
    privacy.pii's redact rewrites it."""

    enabled: bool = True
    # a paragraph whose language (lingua, quality.language's accuracy and min_confidence) is not one
    # of these is removed (wrong_language); [] keeps every language
    languages: list[str] = Field(default_factory=list)


class AssignmentConfig(_Section):
    """Image-text assignment as MMC4 made it: the CLIP similarity of each image of a document and each
    of its texts, a one-to-one bipartite matching (scipy's linear_sum_assignment) maximising it; an
    image whose match is under min_similarity stays unassigned and leaves the document
    (low_text_similarity). Needs clip.enabled (the images' embeddings, the texts' from the same model)."""

    enabled: bool = False
    # MMC4 kept images with a similarity of at least 0.15 to their sentence (ViT-L/14)
    min_similarity: float = Field(0.15, ge=-1, le=1)


class DocumentsConfig(_Section):
    # a document whose image was dropped as nsfw_image is dropped whole (nsfw_document), as OBELICS and
    # MMC4 did; false: only that image is removed, as any other image that failed or was dropped
    nsfw_drops_document: bool = True
    # a document left with fewer kept images is dropped (too_few_images); 1 is OBELICS's
    # number_images_min_cutoff
    min_images: int = Field(1, ge=0)
    # a document with more kept images is dropped (too_many_images); 30 is OBELICS's
    # number_images_max_cutoff; null: no upper cut
    max_images: int | None = Field(30, ge=1)
    # a document with fewer words in its kept texts is dropped (too_few_words); 10 is OBELICS's
    # document-level cut (number_words_doc_level_min_cutoff)
    min_words: int = Field(10, ge=0)
    # a document with more words in its kept texts is dropped (too_many_words); 2,000 is OBELICS's
    # number_words_doc_level_max_cutoff; null: no upper cut
    max_words: int | None = Field(2000, ge=1)
    paragraphs: ParagraphsConfig = Field(default_factory=ParagraphsConfig)
    # a document with the same images as an earlier kept one (the same stored bytes, every one, before
    # the image stages removed duplicates) and mostly the same text (Jaccard similarity of their word
    # 3-grams at least this) is dropped (near_duplicate_document, naming the kept one); null: no check
    near_duplicate_similarity: float | None = Field(0.8, gt=0, le=1)
    assignment: AssignmentConfig = Field(default_factory=AssignmentConfig)
