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
from mmcurate.filters.hardware import onnx_session
from mmcurate.filters.images import decode_rgb
from mmcurate.filters.weights import file_sha256
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ModelError

EXPOSED = frozenset({
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
})
INPUT_SIZE = 320  # the longest side NudeNet's model sees; smaller images go in as they are
GROUPED = 8  # batches' worth of images decoded and grouped by input size at a time
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
    """Scores images with NudeNet's model through onnxruntime: each image at its stored size (at most
    INPUT_SIZE on its long side, padded to multiples of 32), the images of one input size batched."""

    def __init__(self, weights: str | None = None, batch_size: int = 16, threads: int | None = None,
                 device: str = "cpu"):
        import nudenet.nudenet

        self.session = onnx_session(weights or default_weights(), threads, device)
        self.input = self.session.get_inputs()[0].name
        self.batch_size = batch_size
        self.labels = np.array(vars(nudenet.nudenet)["__labels"])  # the model's classes, in its order

    def detections(self, images: Sequence[bytes | None]) -> list[list[dict] | str]:
        """NudeNet's detections per image (class, score, box), or an error string."""
        out: list[list[dict] | str] = []
        step = self.batch_size * GROUPED  # decoded at a time: the inputs of a few batches, not a shard's
        for start in range(0, len(images), step):
            out += self._detect(images[start:start + step])
        return out

    def _detect(self, images: Sequence[bytes | None]) -> list[list[dict] | str]:
        out: list[list[dict] | str] = ["not decoded"] * len(images)
        groups: dict[tuple, list[tuple[int, np.ndarray, float, tuple[int, int]]]] = {}
        for i, data in enumerate(images):
            try:
                rgb = decode_rgb(data)
            except Exception as err:  # noqa: BLE001 - any undecodable image is a failed row
                out[i] = f"cannot decode image: {err}"
                continue
            blob, scale = model_input(rgb)
            groups.setdefault(blob.shape, []).append((i, blob, scale, rgb.shape[:2]))
        for members in groups.values():  # images of one input size run together
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                raw = self.session.run(None, {self.input: np.stack([m[1] for m in chunk])})[0]
                for j, (i, _, scale, size) in enumerate(chunk):
                    out[i] = postprocess(raw[j], scale, size, self.labels)
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


def model_input(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """NudeNet's input for an RGB image (3 x H x W, its channels as NudeNet's own reader leaves them:
    B, G, R, in 0-1) and the image's scale in it: scaled down to INPUT_SIZE on its long side where
    larger, never up, and padded with black to multiples of 32."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(1.0, INPUT_SIZE / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)
    sh, sw = rgb.shape[:2]
    blob = np.zeros((3, -(-sh // 32) * 32, -(-sw // 32) * 32), np.float32)
    blob[:, :sh, :sw] = rgb[..., ::-1].transpose(2, 0, 1)
    blob *= 1 / 255.0
    return blob, scale


def postprocess(raw: np.ndarray, scale: float, size: tuple[int, int], labels: np.ndarray) -> list[dict]:
    """One image's detections from the model's output (4 + classes x candidates): NudeNet's
    post-processing, vectorised: candidates whose best class scores at least 0.2, boxes back in
    image pixels and clipped to it, then class-agnostic NMS (score 0.25, IoU 0.45)."""
    import cv2

    classes = raw[4:]
    best = classes.max(0)
    keep = np.flatnonzero(best >= 0.2)
    if not len(keep):
        return []
    h, w = size
    cx, cy, bw, bh = (raw[:4, keep] / scale).astype(np.float64)
    x = np.clip(cx - bw / 2, 0, w)
    y = np.clip(cy - bh / 2, 0, h)
    boxes = np.stack([x, y, np.minimum(bw, w - x), np.minimum(bh, h - y)], 1)
    scores = best[keep]
    ids = classes[:, keep].argmax(0)
    chosen = np.asarray(cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.25, 0.45), np.int64).reshape(-1)
    return [{"class": str(labels[ids[k]]), "score": float(scores[k]), "box": [int(v) for v in boxes[k]]}
            for k in chosen]


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
    device = "cpu"  # `auto` where the stage's workers have a GPU (the stage sets it before setup)

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
        if self.options.model == HEAD:
            self._head.to(self.device)
        elif self._detector is None:
            self._detector = NsfwDetector(self.weights, self.options.batch_size, device=self.device)

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
