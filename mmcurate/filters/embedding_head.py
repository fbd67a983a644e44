"""Small heads on CLIP image embeddings: the LAION aesthetic predictor, watermark probes, NSFW heads.

Weights are the user's files (LAION's are downloads, in no wheel), a torch state dict saved by
`torch.save` or as `.safetensors`. A head is rebuilt from its state dict alone, so both LAION
aesthetic formats load as published:
- a linear probe: `weight` (1 x d or 2 x d) and `bias` (LAION aesthetic v1, `sa_0_4_vit_l_14_linear.pth`);
- LAION's aesthetic MLP v2 (`sac+logos+ava1-l14-linearMSE.pth`): `layers.{0,2,4,6,7}.weight/bias`,
  Linear layers with dropout between and no activations, on L2-normalised embeddings.
Linear layers are applied in the order of their index; with `activation="relu"` a ReLU follows
each but the last (the MLP of the NSFW heads: a `torch.nn.Sequential` of Linear and ReLU layers).
A single output is the score (aesthetics: 1-10) or, with `probability=True`, its sigmoid; two
outputs are classes and the score is the softmax of the second (watermark: P(watermark)).
A head runs on the CPU, or on the GPU of a worker its stage gave one (`device`, `to`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcurate.algos.embeddings import embeddings_of
from mmcurate.filters.base import Filter, Histogram, Threshold, Verdicts
from mmcurate.filters.hardware import torch_device
from mmcurate.filters.weights import file_sha256
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ModelError

LAYER = re.compile(r"^(?:layers\.)?(\d+)\.(weight|bias)$")


def build(state: dict, key: str = "weights", activation: str | None = None):
    """A torch module with the state dict's layout (see module doc)."""
    import torch

    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ModelError(key, f"not a state dict (a {type(state).__name__})")
    if set(state) == {"weight", "bias"}:
        state = {"0.weight": state["weight"], "0.bias": state["bias"]}
    indices = sorted({int(m.group(1)) for k in state if (m := LAYER.match(k))})
    if not indices or len(indices) * 2 != len(state):
        raise ModelError(key, f"not a linear probe nor Linear layers named layers.N or N "
                              f"(keys: {sorted(state)[:6]} ...)")
    prefix = "layers." if any(k.startswith("layers.") for k in state) else ""
    modules, width = [], None
    for n, i in enumerate(indices):
        w, b = state.get(f"{prefix}{i}.weight"), state.get(f"{prefix}{i}.bias")
        if w is None or b is None or w.ndim != 2 or (width is not None and w.shape[1] != width):
            raise ModelError(key, f"layer {i} does not follow the layer before it (keys: {sorted(state)[:6]} ...)")
        layer = torch.nn.Linear(w.shape[1], w.shape[0])
        layer.load_state_dict({"weight": w, "bias": b})
        modules.append(layer)
        if activation == "relu" and n < len(indices) - 1:
            modules.append(torch.nn.ReLU())
        width = w.shape[0]
    return torch.nn.Sequential(*modules).eval()  # dropout between layers: nothing at inference


class EmbeddingHead:
    """Scores normalised CLIP image embeddings with a head loaded from `path`; errors name `key`."""

    def __init__(self, path: str, probability: bool = False, key: str = "weights", activation: str | None = None):
        self.path, self.probability, self.key, self.activation = path, probability, key, activation
        self.module = None
        self.device = "cpu"

    def to(self, device: str) -> EmbeddingHead:
        """Run on `device` (`auto`: cuda where this worker sees a GPU); loads the head if needed."""
        if self.module is None:
            self.load()
        self.device = torch_device(device)
        self.module.to(self.device)
        return self

    def load(self) -> None:
        import torch

        if not Path(self.path).is_file():
            raise ModelError(self.key, f"{self.path}: no such file")
        try:
            if str(self.path).endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(self.path)
            else:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ModelError(self.key, f"{self.path}: not a torch state dict ({type(err).__name__}: {err})") from None
        self.module = build(state, self.key, self.activation)
        first = next(m for m in self.module.modules() if isinstance(m, torch.nn.Linear))
        self.in_features = first.in_features

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        import torch

        if self.module is None:
            self.load()
        if embeddings.shape[1] != self.in_features:
            raise ModelError(self.key, f"{self.path} expects {self.in_features}-d embeddings; the CLIP model gives "
                            f"{embeddings.shape[1]}-d (LAION's heads are for ViT-L-14)")
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)).to(self.device))
            if out.shape[1] == 2:
                return torch.softmax(out, dim=1)[:, 1].cpu().numpy()
            out = out[:, 0]
            return (torch.sigmoid(out) if self.probability else out).cpu().numpy()


class _HeadFilter(Filter):
    """A head on the CLIP image embedding whose score decides against a threshold."""

    stage = "clip_heads"
    columns_when_off = True
    needs = (C.CLIP_EMBEDDING,)
    probability: bool = False  # the head's output is a probability (its sigmoid)
    column: str  # its score's column
    label: str  # what its score is called in a detail
    limit: str  # the option holding the threshold: min_score (drops below) or max_score (drops above)
    reason: str
    head: EmbeddingHead | None = None
    sha256: str | None = None
    device = "cpu"  # `auto` where the stage's workers have a GPU (its stage sets it before setup)

    def prepare(self) -> dict:
        """Load and hash the head once on the driver: a bad file exits 2 naming its key."""
        weights = self.options.weights
        head = EmbeddingHead(weights, probability=self.probability, key=f"{self.section}.weights")
        head.load()
        self.head, self.sha256 = head, file_sha256(weights)
        return {"weights": weights, "sha256": self.sha256, "inputs": head.in_features}

    def fingerprint(self) -> dict:
        return {self.name: {**self.options.model_dump(), "sha256": self.sha256}} if self.enabled else {}

    def setup(self) -> None:
        if self.head is None:
            self.prepare()
        self.head.to(self.device)

    def apply(self, rows: pa.Table) -> Verdicts:
        limit = getattr(self.options, self.limit)
        scores = self.head.score(embeddings_of(rows[C.CLIP_EMBEDDING])) if rows.num_rows else np.zeros(0, np.float32)
        below = self.limit == "min_score"
        out = [s < limit if below else s > limit for s in scores]
        sign = "<" if below else ">"
        return Verdicts(scores={self.column: pa.array(scores, pa.float32())},
                        reasons=[self.reason if x else None for x in out],
                        details=[f"{self.label} {s:.3f} {sign} {limit}" if x else None for s, x in zip(scores, out)])


class AestheticFilter(_HeadFilter):
    """LAION-style aesthetic score: drops images under `quality.aesthetic.min_score`."""

    name = "aesthetic"
    section = "quality.aesthetic"
    order = 10
    fields = (pa.field(C.AESTHETIC, pa.float32()),)
    settings = ("quality.aesthetic.min_score",)
    thresholds = (Threshold("low_aesthetic_score", C.AESTHETIC, "quality.aesthetic.min_score", "min"),)
    histograms = (Histogram(C.AESTHETIC, "quality.aesthetic.min_score", "min"),)
    column, label, limit, reason = C.AESTHETIC, "aesthetic score", "min_score", "low_aesthetic_score"


class WatermarkFilter(_HeadFilter):
    """Watermark probability: drops images over `quality.watermark.max_score`."""

    name = "watermark"
    section = "quality.watermark"
    order = 20
    fields = (pa.field(C.WATERMARK, pa.float32()),)
    settings = ("quality.watermark.max_score",)
    thresholds = (Threshold("watermark", C.WATERMARK, "quality.watermark.max_score", "max"),)
    histograms = (Histogram(C.WATERMARK, "quality.watermark.max_score", "max"),)
    column, label, limit, reason = C.WATERMARK, "watermark probability", "max_score", "watermark"
    probability = True
