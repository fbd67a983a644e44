"""NSFW images: NudeNet's 320n detector (its ONNX file ships in the `nudenet` wheel), batched, or
a head on the CLIP image embedding (`safety.nsfw.model: clip_head`).

NudeNet's score of an image is the highest confidence among the detector's exposed-body classes
(covered parts, faces, feet and bellies do not count); `top` names the class. NudeNet is an
optional extra (`pip install 'mmcurate[nsfw]'`): its wheel carries an AGPL licence file.

A head (`filters/embedding_head.py`: Linear layers with ReLU between, one logit out, as LAION's
CLIP-based NSFW detector and NeMo Curator's NSFW classifier are once converted) scores the
embedding `clip_embed` stored: no image is decoded. Its score is the logit's sigmoid, in the same
`nsfw` column under the same threshold and reason as NudeNet's; `nsfw_class` says `clip_head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcurate.algos.embeddings import embeddings_of
from mmcurate.filters.base import Filter, Histogram, Threshold, Verdicts
from mmcurate.filters.clip_score import embedding_dim
from mmcurate.filters.embedding_head import EmbeddingHead
from mmcurate.filters.images import decode_rgb
from mmcurate.filters.weights import file_sha256
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ModelError

EXPOSED = frozenset({
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
})
INPUT_SIZE = 320
HEAD = "clip_head"  # safety.nsfw.model's value for a head on the CLIP embedding, and its nsfw_class


def default_weights() -> str:
    """The 320n model inside the installed `nudenet` wheel (ImportError when it is not installed)."""
    import importlib.resources

    import nudenet  # noqa: F401 - the extra must be installed

    return str(importlib.resources.files("nudenet") / "320n.onnx")


@dataclass
class NsfwResult:
    score: float | None  # None when the image could not be decoded
    top: str | None
    error: str | None = None


class NsfwDetector:
    """Scores images in batches through onnxruntime, with NudeNet's own pre- and post-processing."""

    def __init__(self, weights: str | None = None, batch_size: int = 16):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        options = onnxruntime.SessionOptions()
        self.session = onnxruntime.InferenceSession(
            weights or default_weights(), options, providers=onnxruntime.get_available_providers()
        )
        self.input = self.session.get_inputs()[0].name
        self.batch_size = batch_size

    def detections(self, images: Sequence[bytes | None]) -> list[list[dict] | str]:
        """NudeNet's detections per image (class, score, box), or an error string."""
        import cv2
        from nudenet.nudenet import _postprocess, _read_image

        out: list[list[dict] | str] = ["not decoded"] * len(images)
        decoded = []
        for i, data in enumerate(images):
            try:
                decoded.append((i, cv2.cvtColor(decode_rgb(data), cv2.COLOR_RGB2BGR)))
            except Exception as err:  # noqa: BLE001 - any undecodable image is a failed row
                out[i] = f"cannot decode image: {err}"
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start:start + self.batch_size]
            blobs = [_read_image(img, INPUT_SIZE) for _, img in chunk]
            raw = self.session.run(None, {self.input: np.vstack([b[0] for b in blobs])})[0]
            for j, ((i, _), (_, x_ratio, y_ratio, x_pad, y_pad, w, h)) in enumerate(zip(chunk, blobs)):
                out[i] = _postprocess([raw[j:j + 1]], x_pad, y_pad, x_ratio, y_ratio, w, h, INPUT_SIZE, INPUT_SIZE)
        return out

    def score(self, images: Sequence[bytes | None]) -> list[NsfwResult]:
        results = []
        for found in self.detections(images):
            if isinstance(found, str):
                results.append(NsfwResult(None, None, found))
                continue
            exposed = [d for d in found if d["class"] in EXPOSED]
            best = max(exposed, key=lambda d: d["score"], default=None)
            results.append(NsfwResult(float(best["score"]) if best else 0.0, best["class"] if best else None))
        return results


class NsfwFilter(Filter):
    """Drops images NudeNet, or a head on their CLIP embedding, scores over `safety.nsfw.max_score`;
    an image NudeNet cannot decode fails."""

    stage = "safety"
    columns_when_off = True
    name = "nsfw"
    section = "safety.nsfw"
    order = 20
    fields = (pa.field(C.NSFW, pa.float32()), pa.field(C.NSFW_CLASS, pa.string()))
    settings = ("safety.nsfw.max_score",)
    thresholds = (Threshold("nsfw_image", C.NSFW, "safety.nsfw.max_score", "max"),)
    histograms = (Histogram(C.NSFW, "safety.nsfw.max_score", "max"),)
    weights: str | None = None
    sha256: str | None = None
    _detector: NsfwDetector | None = None
    _head: EmbeddingHead | None = None

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        """NudeNet reads the image; a head the embedding clip_embed stored."""
        return (C.CLIP_EMBEDDING,) if self.enabled and self.options.model == HEAD else (C.IMAGE,)

    def prepare(self) -> dict:
        if self.options.model == HEAD:
            return self._prepare_head()
        try:
            self.weights = self.options.weights or default_weights()
        except ImportError:
            raise ModelError("safety.nsfw.enabled", "the NSFW detector needs NudeNet, an optional extra "
                             "(AGPL licence file in its wheel): pip install 'mmcurate[nsfw]', "
                             "or set safety.nsfw.enabled: false") from None
        if not Path(self.weights).is_file():
            raise ModelError("safety.nsfw.weights", f"{self.weights}: no such file")
        self.sha256 = file_sha256(self.weights)
        return {"model": "nudenet-320n", "weights": self.weights, "sha256": self.sha256}

    def _prepare_head(self) -> dict:
        """Load and hash the head on the driver; a missing file, another layout or another width
        than the CLIP model's exits 2 naming safety.nsfw.weights."""
        key, self.weights = "safety.nsfw.weights", self.options.weights
        head = EmbeddingHead(self.weights, probability=True, key=key, activation="relu")
        head.load()
        dim = embedding_dim(self.config.clip.model)
        if dim is not None and dim != head.in_features:
            raise ModelError(key, f"{self.weights} expects {head.in_features}-d embeddings; clip.model "
                                  f"{self.config.clip.model} gives {dim}-d (LAION's and NeMo Curator's "
                                  "heads are for ViT-L-14)")
        self._head, self.sha256 = head, file_sha256(self.weights)
        return {"model": HEAD, "weights": self.weights, "sha256": self.sha256, "inputs": head.in_features}

    def fingerprint(self) -> dict:
        n = self.options
        # `model` counts only when it is not NudeNet: runs from before it keep their fingerprint
        skip = {"batch_size"} | ({"model"} if n.model == "nudenet" else set())
        return {"nsfw": {**n.model_dump(exclude=skip), "sha256": self.sha256} if n.enabled else None}

    def setup(self) -> None:
        if self.weights is None:
            self.prepare()
        if self.options.model != HEAD and self._detector is None:
            self._detector = NsfwDetector(self.weights, self.options.batch_size)

    def apply(self, rows: pa.Table) -> Verdicts:
        limit = self.options.max_score
        if self.options.model == HEAD:
            return self._apply_head(rows, limit)
        results = self._detector.score(rows[C.IMAGE].to_pylist())
        reasons, details = [], []
        for r in results:
            if r.error:
                reasons.append("undecodable_image")
                details.append(r.error)
            elif r.score > limit:
                reasons.append("nsfw_image")
                details.append(f"nsfw {r.score:.4f} ({r.top}) > {limit:g}")
            else:
                reasons.append(None)
                details.append(None)
        return Verdicts(scores={C.NSFW: [r.score for r in results], C.NSFW_CLASS: [r.top for r in results]},
                        reasons=reasons, details=details, failed=[r.error is not None for r in results])

    def _apply_head(self, rows: pa.Table, limit: float) -> Verdicts:
        """The head's probability for every row's embedding; no row fails."""
        n = rows.num_rows
        scores = self._head.score(embeddings_of(rows[C.CLIP_EMBEDDING])) if n else np.zeros(0, np.float32)
        over = scores > limit
        return Verdicts(scores={C.NSFW: pa.array(scores, pa.float32()), C.NSFW_CLASS: [HEAD] * n},
                        reasons=["nsfw_image" if x else None for x in over],
                        details=[f"nsfw {s:.4f} ({HEAD}) > {limit:g}" if x else None for s, x in zip(scores, over)])
