"""Toxic captions: detoxify's models, or alt-profanity-check's linear model that ships in its wheel.

`safety.toxicity.model` names the model:
- a detoxify model (`original`, `unbiased`, `multilingual`, `original-small`, `unbiased-small`):
  downloaded by detoxify from GitHub and the Hugging Face hub where those are reachable;
- with `checkpoint` (a detoxify `.ckpt`) and `huggingface_config_path` (a folder holding the
  transformer's config and tokenizer), everything loads from disk. detoxify still calls
  `from_pretrained(model_type)` with the model type stored in the checkpoint, so a checkpoint
  whose model type is a hub name (all released ones) is rewritten once into the cache with the
  local folder as its model type, and that copy is what `detoxify.Detoxify` loads;
- `profanity-check`: alt-profanity-check's TF-IDF + linear SVM (offline, no download).

The score of a caption is its highest class probability; `top` names that class.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mmcurate.filters.base import Filter, Histogram, Threshold, Verdicts
from mmcurate.filters.weights import file_sha256
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ModelError
from mmcurate.schemas.sections import DETOXIFY_MODELS, PROFANITY_CHECK, TOXICITY_MODELS


@dataclass(frozen=True)
class ToxicityModel:
    model: str
    checkpoint: str | None  # the file detoxify loads (possibly the cache's rewritten copy)
    config_path: str | None
    sha256: str | None  # of the checkpoint as given
    label: str


def cache_dir() -> Path:
    return Path(os.environ.get("MMCURATE_CACHE") or Path.home() / ".cache" / "mmcurate")


def _local_checkpoint(checkpoint: Path, config_path: Path, sha: str) -> Path:
    """The checkpoint itself when its model type is already a local folder, else a rewritten copy."""
    import torch

    loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        raise ModelError("safety.toxicity.checkpoint", f"{checkpoint}: not a detoxify checkpoint "
                                 "(it needs 'config' and 'state_dict')")
    args = loaded["config"]["arch"]["args"]
    if Path(str(args.get("model_type", ""))).is_dir():
        return checkpoint
    target = cache_dir() / "detoxify" / f"{sha[:16]}-{hashlib.sha256(str(config_path).encode()).hexdigest()[:8]}.ckpt"
    if not target.exists():
        args["model_type"] = str(config_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp-{os.getpid()}")
        torch.save(loaded, tmp)
        tmp.replace(target)
    return target


def released_checkpoint(model: str) -> Path:
    """detoxify's released checkpoint of `model`, where detoxify itself looks for it (torch hub's
    cache): downloaded here, on the driver, when it is not there yet, so that a machine with no
    route to GitHub fails before any row moves, naming the key, and the manifest gets its sha256."""
    import torch.hub
    from detoxify.detoxify import MODEL_URLS  # heavy (transformers): only for a named model

    url = MODEL_URLS[model]
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)  # temp file, then a rename
        except Exception as err:
            raise ModelError(
                "safety.toxicity.model", f"cannot download detoxify's {model!r} checkpoint from {url} "
                f"({type(err).__name__}: {err}). Without GitHub and the Hugging Face hub: give "
                "safety.toxicity.checkpoint and huggingface_config_path, or use model: profanity-check (offline)"
            ) from None
    return target


def resolve(model: str, checkpoint: str | None, config_path: str | None) -> ToxicityModel:
    """Check the configured model on the driver (files exist, are detoxify's); hash its checkpoint."""
    if model == PROFANITY_CHECK:
        try:
            from importlib.metadata import version

            import profanity_check  # noqa: F401
        except ImportError:
            raise ModelError("safety.toxicity.model", "profanity-check needs alt-profanity-check installed") from None
        return ToxicityModel(model, None, None, None, f"alt-profanity-check {version('alt-profanity-check')}")
    if checkpoint is None:
        if model not in DETOXIFY_MODELS:
            raise ModelError("safety.toxicity.model", f"unknown model {model!r} (choose from {', '.join(TOXICITY_MODELS)}, "
                                     "or give a checkpoint)")
        sha = file_sha256(released_checkpoint(model))
        return ToxicityModel(model, None, config_path, sha, f"detoxify:{model}:{sha[:12]}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError("safety.toxicity.checkpoint", f"{checkpoint}: no such file")
    sha = file_sha256(path)
    if config_path is None:
        return ToxicityModel(model, str(path), None, sha, f"detoxify:{path.name}:{sha[:12]}")
    folder = Path(config_path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError("safety.toxicity.huggingface_config_path",
                                 f"{config_path}: no config.json there (save the model's config and tokenizer into it)")
    local = _local_checkpoint(path, folder.resolve(), sha)
    return ToxicityModel(model, str(local), str(folder.resolve()), sha, f"detoxify:{path.name}:{sha[:12]}")


class ToxicityScorer:
    def __init__(self, model: ToxicityModel, device: str = "cpu", batch_size: int = 64):
        self.spec = model
        self.batch_size = batch_size
        if model.model == PROFANITY_CHECK and model.checkpoint is None:
            import profanity_check

            self._profanity = profanity_check.predict_prob
            self._detoxify = None
            return
        import torch
        from detoxify import Detoxify

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._profanity = None
        self._detoxify = Detoxify(
            model_type=model.model, checkpoint=model.checkpoint, device=device,
            huggingface_config_path=model.config_path,
        )

    def score(self, captions: Sequence[str | None]) -> list[tuple[float, str]]:
        """(highest class probability, that class) per caption."""
        texts = [c or "" for c in captions]
        out: list[tuple[float, str]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            if self._profanity is not None:
                out.extend((float(p), "profanity") for p in self._profanity(batch))
                continue
            result = self._detoxify.predict(batch)  # class -> scores (a bare float for a batch of one)
            classes = list(result)
            for probs in zip(*(v if isinstance(v, list) else [v] for v in result.values())):
                best = max(range(len(classes)), key=lambda i: probs[i])
                out.append((float(probs[best]), classes[best]))
        return out


class ToxicityFilter(Filter):
    """Drops captions whose toxicity (highest class probability) is over `safety.toxicity.max_score`."""

    stage = "safety"
    columns_when_off = True
    name = "toxicity"
    section = "safety.toxicity"
    order = 10
    fields = (pa.field(C.TOXICITY, pa.float32()), pa.field(C.TOXICITY_CLASS, pa.string()),
              pa.field(C.TOXICITY_MODEL, pa.string()))
    settings = ("safety.toxicity.model", "safety.toxicity.max_score")
    thresholds = (Threshold("toxic_caption", C.TOXICITY, "safety.toxicity.max_score", "max"),)
    histograms = (Histogram(C.TOXICITY, "safety.toxicity.max_score", "max"),)
    model: ToxicityModel | None = None  # found on the driver by prepare()
    _scorer: ToxicityScorer | None = None

    def prepare(self) -> dict:
        t = self.options
        self.model = resolve(t.model, t.checkpoint, t.huggingface_config_path)
        m = self.model
        return {"model": m.model, "checkpoint": t.checkpoint, "sha256": m.sha256, "label": m.label}

    def fingerprint(self) -> dict:
        t = self.options
        sha = self.model.sha256 if self.model else None
        return {"toxicity": {**t.model_dump(exclude={"batch_size", "device"}), "sha256": sha} if t.enabled else None}

    def setup(self) -> None:
        if self.model is None:
            self.prepare()
        if self._scorer is None:
            self._scorer = ToxicityScorer(self.model, self.options.device, self.options.batch_size)

    def apply(self, rows: pa.Table) -> Verdicts:
        limit = self.options.max_score
        scored = self._scorer.score(rows[C.CAPTION].to_pylist())
        toxic = [s > limit for s, _ in scored]
        return Verdicts(
            scores={C.TOXICITY: [s for s, _ in scored], C.TOXICITY_CLASS: [c for _, c in scored],
                    C.TOXICITY_MODEL: [self.model.label] * len(scored)},
            reasons=["toxic_caption" if t else None for t in toxic],
            details=[f"toxicity {s:.4f} ({c}) > {limit:g}" if t else None for (s, c), t in zip(scored, toxic)],
        )
