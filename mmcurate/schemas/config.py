"""The run configuration (DESIGN A.2): YAML validated into the models of `sections.py`.

Unknown keys are errors; every error names the dotted key and, when the value came
from a file, the file and line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from mmcurate.schemas.documents_section import DocumentsConfig
from mmcurate.schemas.errors import ConfigError
from mmcurate.schemas.sections import (
    ClipConfig,
    DedupConfig,
    DownloadConfig,
    EngineConfig,
    ExportConfig,
    InputConfig,
    PrivacyConfig,
    QualityConfig,
    SafetyConfig,
    _Section,
)
from mmcurate.schemas.synthesis_section import SynthesisConfig

# Sections that change how a run goes, not what it makes: a change to them is no change of the run.
RUNTIME_SECTIONS = ("engine",)
# a loopback address with a port, in any string (an endpoint, a connect_to target): test servers and
# local stand-ins take a free port each time, and the port alone names no other data
_LOOPBACK_PORT = re.compile(r"(?<![\w.])(127(?:\.\d{1,3}){3}|localhost|\[::1\]):\d{1,5}(?!\d)")


def without_loopback_ports(data: Any) -> Any:
    """`data` with every loopback host:port's port masked: what decides whether a run changed."""
    if isinstance(data, str):
        return _LOOPBACK_PORT.sub(r"\1:*", data)
    if isinstance(data, dict):
        return {k: without_loopback_ports(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [without_loopback_ports(v) for v in data]
    return data


class Config(_Section):
    input: InputConfig
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    documents: DocumentsConfig = Field(default_factory=DocumentsConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    def resolved(self) -> dict[str, Any]:
        """The full config with defaults filled in, as plain JSON-able data (holds no secrets)."""
        return self.model_dump(mode="json")

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named top-level sections (all when none are named); a loopback
        server's port is no part of it."""
        data = without_loopback_ports(self.resolved())
        picked = {k: data[k] for k in (sections or sorted(set(data) - set(RUNTIME_SECTIONS)))}
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
    documents_only = [f for f in config.export.formats if f in ("mmc4", "obelics")]
    if documents_only and not config.input.documents:
        raise ConfigError(f"{source}: export.formats: {' and '.join(documents_only)} "
                          f"{'writes' if len(documents_only) == 1 else 'write'} interleaved documents, and input.format "
                          f"{config.input.kind} is image-text pairs (input.format mmc4 or obelics makes a documents run); "
                          "export pairs as webdataset, parquet or hf")
    if config.documents.assignment.enabled and not config.clip.enabled:
        raise ConfigError(f"{source}: documents.assignment.enabled: MMC4's image-text assignment compares the images' "
                          "CLIP embeddings with the texts': it needs clip.enabled: true")
    nsfw = config.safety.nsfw
    if nsfw.enabled and nsfw.model == "clip_head":
        if not config.clip.enabled:
            raise ConfigError(f"{source}: safety.nsfw.model: clip_head needs clip.enabled (it scores CLIP image "
                              "embeddings); use nudenet, or turn clip on")
        if not nsfw.weights:
            raise ConfigError(f"{source}: safety.nsfw.weights: required with safety.nsfw.model: clip_head "
                              "(a head's state dict; see the README on converting LAION's or NeMo Curator's)")


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
    config = config_from_dict(data if data is not None else {}, overrides, str(path), text)
    # checked where a run is configured, not where a run dir's recorded config is read back (an
    # older run dir holding the combination still reads)
    if "llava" in config.export.formats and not config.synthesis.enabled:
        raise ConfigError(f"{path}: export.formats: llava holds the teacher's instruction data, and synthesis.enabled "
                          "is false; turn synthesis on (with its endpoint) or drop llava")
    return config
