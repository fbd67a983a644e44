"""Every column mmcurate writes, named once, with the Arrow schemas built from them.

The stages made of filters (quality, clip_heads, safety, privacy) build their output schemas from
their filters' `fields`, which take their column names from here (a new filter may name its own).
"""

from __future__ import annotations

import pyarrow as pa

# identity of an input row
UID = "uid"  # sha256 of (url, caption): identical input -> identical uid
ROW = "row"  # 0-based position in the whole input (files in sorted order): unique
SOURCE = "source"  # input file the row came from
SOURCE_LINE = "source_line"  # 1-based line (csv, tsv, jsonl) or row (parquet) within that file
URL = "url"
CAPTION = "caption"
KEY = "key"  # a sample's name in exports: its input row, zero-padded (sample_key)

# identity and place of a row read from a pool already downloaded (input.format webdataset,
# img2dataset_parquet, image_folder): the `load` stage reads the image where it lies
SOURCE_KEY = "source_key"  # the sample's name in the pool (a tar's member key, img2dataset's key, a file's path)
SOURCE_UID = "source_uid"  # the pool's own id of the sample (DataComp's 128-bit uid, hex), where it has one
MEMBER = "member"  # the image's name: a tar member, or a file under input.path
MEMBER_OFFSET = "member_offset"  # where its bytes start in the tar
MEMBER_SIZE = "member_size"  # how many there are

# interleaved documents (input.format mmc4, obelics): each image is a row of its own, naming its document
DOCUMENT = "document"  # the document's number (0-based, in input order): unique, even for repeated documents
DOCUMENT_ID = "document_id"  # the input's id of the document (input.id_col), else a hash of its URL and content
POSITION = "position"  # the image's place in its document (obelics: in the aligned lists; mmc4: in image_info)
DOCUMENT_COLUMNS = (DOCUMENT, DOCUMENT_ID, POSITION)

# a stage's decision about a row
STATUS = "status"
STAGE = "stage"
REASON = "reason"
DETAIL = "detail"
SCORES = "scores"

KEPT, DROPPED, FAILED = "kept", "dropped", "failed"
STATUSES = (KEPT, DROPPED, FAILED)

# image data produced by download (and possibly rewritten by later stages)
IMAGE = "image"  # encoded bytes as stored
IMAGE_FORMAT = "image_format"  # jpg | png | webp
WIDTH = "width"
HEIGHT = "height"
ORIGINAL_WIDTH = "original_width"
ORIGINAL_HEIGHT = "original_height"
DOWNLOAD_BYTES = "download_bytes"  # size of the body as fetched
DOWNLOAD_ATTEMPTS = "download_attempts"  # runs of the download stage that tried the row: 1, more after --retry-failed

# features (one decode per stored image)
SHA256 = "sha256"  # of the stored image bytes
PHASH = "phash"  # 64-bit perceptual hash, 16 hex digits (imagehash's form)
DHASH = "dhash"  # 64-bit difference hash, 16 hex digits
LUMA_STD = "luma_std"  # spread of the 32x32 greyscale; ~0 for blank images
COLOUR = "colour"  # 4x4 RGB thumbnail, 48 bytes: confirms matches of low-detail images

# deduplication
DUP_OF = "dup_of"  # uid of the kept sample (or reference) this row duplicates
DUP_DISTANCE = "dup_distance"  # pHash Hamming distance to it

# CLIP
CLIP_SCORE = "clip_score"  # cosine similarity of the image and caption embeddings
CLIP_MODEL = "clip_model"  # the model that scored the row and its weights' sha256
CLIP_EMBEDDING = "clip_image_embedding"  # normalised image embedding, float16
CLIP_THRESHOLD = "clip_threshold"  # the score a row needed (fixed, or the run's percentile)
SEMANTIC_DUP_OF = "semantic_dup_of"  # uid of the kept sample whose image embedding this row matches
SEMANTIC_SIMILARITY = "semantic_similarity"  # cosine similarity of the two image embeddings

# caption and image quality
CAPTION_WORDS = "caption_words"
CAPTION_CHARS = "caption_chars"
CAPTION_DIGIT_FRACTION = "caption_digit_fraction"
CAPTION_ALPHA_FRACTION = "caption_alpha_fraction"
CAPTION_TOP_WORD_FRACTION = "caption_top_word_fraction"
LANGUAGE = "language"  # ISO 639-1 code of the caption's most likely language
LANGUAGE_CONFIDENCE = "language_confidence"
IMAGE_CLUSTER = "image_cluster"  # nearest k-means centre of the pool's CLIP image embeddings
AESTHETIC = "aesthetic_score"
WATERMARK = "watermark_score"

# safety
TOXICITY = "toxicity"  # highest class probability of the caption's toxicity model
TOXICITY_CLASS = "toxicity_class"  # that class (insult, obscene, ..., or profanity)
TOXICITY_MODEL = "toxicity_model"
NSFW = "nsfw"  # highest confidence among the NSFW detector's exposed-body classes
NSFW_CLASS = "nsfw_class"

# privacy
FACES = "faces"  # number of faces found
FACE_BOXES = "face_boxes"  # [[x1, y1, x2, y2], ...] in stored-image pixels
FACE_ACTION = "face_action"  # blurred | flagged | dropped | null
PII_TYPES = "pii_types"  # kinds of personal data found in the caption
PII_ACTION = "pii_action"  # redacted | flagged | dropped | null

# synthesis (per row: what the teacher did; whether each answer was kept is in the record,
# instructions/*.parquet, since run-level checks decide it after the stage)
SYNTH_ANSWERED = "synthesis_answered"  # tasks the teacher answered
SYNTH_FAILED = "synthesis_failed"  # tasks with no answer (http_400, timeout after retries, ...)

IDENTITY_FIELDS = [
    pa.field(UID, pa.string(), nullable=False),
    pa.field(ROW, pa.int64(), nullable=False),
]
DECISION_FIELDS = [
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(REASON, pa.string()),
    pa.field(DETAIL, pa.string()),
]

INGEST_SCHEMA = pa.schema(
    IDENTITY_FIELDS
    + [
        pa.field(SOURCE, pa.string()),
        pa.field(SOURCE_LINE, pa.int64()),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
    ]
    + DECISION_FIELDS
)

ORIGIN_FIELDS = [pa.field(SOURCE_KEY, pa.string()), pa.field(SOURCE_UID, pa.string())]

# a pool's ingest shard: the rows as a URL list's, then their origin and the image's place
# (original width and height as the pool recorded them, before it resized)
POOL_INGEST_SCHEMA = pa.schema(
    list(INGEST_SCHEMA)
    + ORIGIN_FIELDS
    + [
        pa.field(MEMBER, pa.string()),
        pa.field(MEMBER_OFFSET, pa.int64()),
        pa.field(MEMBER_SIZE, pa.int64()),
        pa.field(ORIGINAL_WIDTH, pa.int32()),
        pa.field(ORIGINAL_HEIGHT, pa.int32()),
    ]
)


# an image row of a document: the rows as a URL list's, then where in which document it stands
DOCUMENT_INGEST_SCHEMA = pa.schema(
    list(INGEST_SCHEMA)
    + [pa.field(DOCUMENT, pa.int64()), pa.field(DOCUMENT_ID, pa.string()), pa.field(POSITION, pa.int32())]
)


def ingest_schema(pool: bool, documents: bool = False) -> pa.Schema:
    return DOCUMENT_INGEST_SCHEMA if documents else POOL_INGEST_SCHEMA if pool else INGEST_SCHEMA


# the documents table ingest keeps (stages/ingest/documents/): one row per input document
FIRST_ROW = "first_row"  # the `row` of its first image (its images are the rows after it, in order)
IMAGES_IN = "images_in"  # image rows it has
IMAGES_KEPT = "images_kept"  # of those, kept by every image stage
WORDS = "words"  # whitespace-separated words of its texts
TEXTS = "texts"  # its texts, in order
TEXT_POSITIONS = "text_positions"  # each text's place (obelics: in the aligned lists; mmc4: in text_list)
IMAGE_POSITIONS = "image_positions"  # each image's place (the `position` of its row)
IMAGE_TEXTS = "image_texts"  # the text position each image was paired with (its row's caption)
IMAGE_SIMILARITY = "image_similarity"  # mmc4's matched_sim of each image; null for obelics
TEXTS_IN = "texts_in"  # texts (paragraphs, sentences) the document has
TEXTS_KEPT = "texts_kept"  # of those, left by the paragraph rules (documents.paragraphs)
WORDS_KEPT = "words_kept"  # words of the texts left: what documents.min_words and max_words cut on
DUP_SIMILARITY = "dup_similarity"

DOCUMENT_IDENTITY = [
    pa.field(DOCUMENT, pa.int64(), nullable=False),
    pa.field(DOCUMENT_ID, pa.string()),
    pa.field(SOURCE, pa.string()),
    pa.field(SOURCE_LINE, pa.int64()),
    pa.field(URL, pa.string()),
]
DOCUMENTS_SCHEMA = pa.schema(
    DOCUMENT_IDENTITY
    + DECISION_FIELDS
    + [
        pa.field(FIRST_ROW, pa.int64()),
        pa.field(IMAGES_IN, pa.int32()),
        pa.field(WORDS, pa.int32()),
        pa.field(TEXTS, pa.list_(pa.large_string())),
        pa.field(TEXT_POSITIONS, pa.list_(pa.int32())),
        pa.field(IMAGE_POSITIONS, pa.list_(pa.int32())),
        pa.field(IMAGE_TEXTS, pa.list_(pa.int32())),
        pa.field(IMAGE_SIMILARITY, pa.list_(pa.float32())),
    ]
)

# documents.parquet: one row per input document, decided after the image stages
DOCUMENT_LEDGER_SCHEMA = pa.schema(
    DOCUMENT_IDENTITY
    + [
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(STAGE, pa.string()),  # ingest (a document that could not be read) or documents
        pa.field(REASON, pa.string()),
        pa.field(DETAIL, pa.string()),
        pa.field(IMAGES_IN, pa.int32()),
        pa.field(IMAGES_KEPT, pa.int32()),
        pa.field(WORDS, pa.int32()),
        pa.field(TEXTS_IN, pa.int32()),
        pa.field(TEXTS_KEPT, pa.int32()),
        pa.field(WORDS_KEPT, pa.int32()),
        pa.field(DUP_OF, pa.string()),  # near_duplicate_document: the document_id of the kept one
        pa.field(DUP_SIMILARITY, pa.float32()),  # and the Jaccard similarity of their texts' word 3-grams
    ]
)

# a file of the documents step (stages/documents/): the ledger's rows, and what the exports read: the
# texts left (redacted), every image's position, the text it is paired with (null: none, and so not
# exported) and its similarity, and the signature near-duplicate documents are grouped by
SIGNATURE = "signature"  # a hash of the document's images' stored bytes (null: an image without them)
DOCUMENT_STEP_SCHEMA = pa.schema(
    list(DOCUMENT_LEDGER_SCHEMA)
    + [f for f in DOCUMENTS_SCHEMA if f.name in (TEXTS, TEXT_POSITIONS, IMAGE_POSITIONS, IMAGE_TEXTS, IMAGE_SIMILARITY)]
    + [pa.field(SIGNATURE, pa.string())]
)


LOAD_SCHEMA = pa.schema(  # images read from a pool (the load stage)
    IDENTITY_FIELDS
    + DECISION_FIELDS
    + [
        pa.field(IMAGE, pa.binary()),
        pa.field(IMAGE_FORMAT, pa.string()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(ORIGINAL_WIDTH, pa.int32()),
        pa.field(ORIGINAL_HEIGHT, pa.int32()),
        pa.field(DOWNLOAD_BYTES, pa.int64()),
    ]
)

DOWNLOAD_SCHEMA = pa.schema(list(LOAD_SCHEMA) + [pa.field(DOWNLOAD_ATTEMPTS, pa.int16())])

FEATURES_SCHEMA = pa.schema(
    IDENTITY_FIELDS
    + DECISION_FIELDS
    + [
        pa.field(SHA256, pa.string()),
        pa.field(PHASH, pa.string()),
        pa.field(DHASH, pa.string()),
        pa.field(LUMA_STD, pa.float32()),
        pa.field(COLOUR, pa.binary()),
    ]
)

DEDUP_SCHEMA = pa.schema(
    IDENTITY_FIELDS + DECISION_FIELDS + [pa.field(DUP_OF, pa.string()), pa.field(DUP_DISTANCE, pa.int16())]
)

def embedding_type(dim: int | None = None) -> pa.DataType:
    """fixed_size_list<float16, dim>: no offsets, so a table of them has no 2^31-value limit (a
    variable list's int32 offsets overflow at 4.19M rows of 512-d). Without a dim, the variable
    list that shards written before the fixed form hold (still read: `algos.embeddings.as_fixed`)."""
    return pa.list_(pa.float16(), dim) if dim else pa.list_(pa.float16())


def clip_embed_schema(dim: int | None = None) -> pa.Schema:
    return pa.schema(IDENTITY_FIELDS + DECISION_FIELDS + [
        pa.field(CLIP_SCORE, pa.float32()),
        pa.field(CLIP_MODEL, pa.string()),
        pa.field(CLIP_EMBEDDING, embedding_type(dim)),
    ])


CLIP_EMBED_SCHEMA = clip_embed_schema()  # the score columns' types; the embedding's dim comes with the model

CLIP_SCHEMA = pa.schema(IDENTITY_FIELDS + DECISION_FIELDS + [pa.field(CLIP_THRESHOLD, pa.float32())])

SEMANTIC_DEDUP_SCHEMA = pa.schema(
    IDENTITY_FIELDS
    + DECISION_FIELDS
    + [pa.field(SEMANTIC_DUP_OF, pa.string()), pa.field(SEMANTIC_SIMILARITY, pa.float32())]
)

IMAGE_BASED_SCHEMA = pa.schema(IDENTITY_FIELDS + DECISION_FIELDS + [pa.field(IMAGE_CLUSTER, pa.int32())])

SYNTHESIS_SCHEMA = pa.schema(
    IDENTITY_FIELDS
    + DECISION_FIELDS
    + [pa.field(SYNTH_ANSWERED, pa.int16()), pa.field(SYNTH_FAILED, pa.int16())]
)

# one instruction record per (sample, task): DESIGN A.5 plus provenance
INSTRUCTION_SCHEMA = pa.schema([
    pa.field("id", pa.string()),  # <export key>-<task>
    pa.field(UID, pa.string()),
    pa.field(ROW, pa.int64()),
    pa.field("image", pa.string()),  # images/<export key>.<ext>, relative to llava.json
    pa.field("task", pa.string()),
    pa.field(STATUS, pa.string()),  # ok | rejected | failed
    pa.field(REASON, pa.string()),  # the first problem, or the failure
    pa.field("problems", pa.list_(pa.string())),
    pa.field("flags", pa.list_(pa.string())),  # kept but worth a look (possibly_ungrounded)
    pa.field("conversations", pa.list_(pa.struct([pa.field("from", pa.string()), pa.field("value", pa.string())]))),
    pa.field("answer", pa.string()),  # the teacher's text as received
    pa.field("finish_reason", pa.string()),
    pa.field("teacher_model", pa.string()),
    pa.field("endpoint", pa.string()),  # never with a key
    pa.field("template_id", pa.string()),
    pa.field("template_version", pa.string()),
    pa.field("sampling", pa.string()),  # JSON
    pa.field("request_hash", pa.string()),
    pa.field("cached", pa.bool_()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("latency_s", pa.float32()),
    pa.field("attempts", pa.int16()),
    pa.field("retries", pa.int16()),
    pa.field("answer_clip_score", pa.float32()),
    pa.field("caption_clip_score", pa.float32()),
    pa.field("judge", pa.string()),  # JSON {"accurate": bool, "complete": bool} or null
    pa.field("error", pa.string()),
])

LEDGER_BASE_FIELDS = [
    pa.field(UID, pa.string(), nullable=False),
    pa.field(ROW, pa.int64(), nullable=False),
    pa.field(SOURCE, pa.string()),
    pa.field(SOURCE_LINE, pa.int64()),
    pa.field(URL, pa.string()),
    pa.field(CAPTION, pa.string()),
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(STAGE, pa.string()),
    pa.field(REASON, pa.string()),
    pa.field(DETAIL, pa.string()),
]


def sample_key(row: int) -> str:
    """The export key of a sample: its input row, zero-padded (unique even for repeated inputs)."""
    return f"{row:012d}"


ORIGIN_TYPES = {SOURCE_KEY: pa.string(), SOURCE_UID: pa.string(), DOCUMENT: pa.int64(), DOCUMENT_ID: pa.string(),
                POSITION: pa.int32()}


def ledger_schema(score_fields: list[pa.Field], origin: bool | list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """The ledger's schema: fixed columns (the origin columns the run's stages name after the
    caption: a pool's key and uid, a document's number, id and position; True: a pool's) plus a
    `scores` struct of every score the run computed."""
    names = [f.name for f in ORIGIN_FIELDS] if origin is True else list(origin or ())
    fields = [pa.field(n, ORIGIN_TYPES[n]) for n in names]
    base = LEDGER_BASE_FIELDS[:6] + fields + LEDGER_BASE_FIELDS[6:]
    return pa.schema(base + [pa.field(SCORES, pa.struct(score_fields))])
