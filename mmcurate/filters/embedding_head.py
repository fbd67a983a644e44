"""Small heads on CLIP image embeddings: the LAION aesthetic predictor, watermark probes.

Weights are the user's files (LAION's are downloads, in no wheel). A head is rebuilt from its
state dict alone, so both LAION formats load as published:
- a linear probe: `weight` (1 x d or 2 x d) and `bias` (LAION aesthetic v1, `sa_0_4_vit_l_14_linear.pth`);
- LAION's aesthetic MLP v2 (`sac+logos+ava1-l14-linearMSE.pth`): `layers.{0,2,4,6,7}.weight/bias`,
  Linear layers with dropout between and no activations, on L2-normalised embeddings.
A single output is the score (aesthetics: 1-10) or, with `probability=True`, its sigmoid; two
outputs are classes and the score is the softmax of the second (watermark: P(watermark)).
"""

from __future__ import annotations

import re

import numpy as np

LAYER = re.compile(r"^(?:layers\.)?(\d+)\.(weight|bias)$")


class HeadError(ValueError):
    pass


def build(state: dict):
    """A torch module with the state dict's layout (see module doc)."""
    import torch

    state = state.get("state_dict", state)
    if set(state) == {"weight", "bias"}:
        layer = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        layer.load_state_dict(state)
        return layer.eval()
    indices = sorted({int(m.group(1)) for k in state if (m := LAYER.match(k))})
    if not indices or len(indices) * 2 != len(state):
        raise HeadError(f"not a linear probe nor LAION's MLP layout (keys: {sorted(state)[:6]} ...)")
    prefix = "layers." if any(k.startswith("layers.") for k in state) else ""
    modules = []
    for i in range(indices[-1] + 1):
        if i in indices:
            w = state[f"{prefix}{i}.weight"]
            modules.append(torch.nn.Linear(w.shape[1], w.shape[0]))
        else:
            modules.append(torch.nn.Identity())  # dropout at inference
    seq = torch.nn.Sequential(*modules)
    seq.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()})
    return seq.eval()


class EmbeddingHead:
    """Scores normalised CLIP image embeddings with a head loaded from `path`."""

    def __init__(self, path: str, probability: bool = False):
        self.path, self.probability = path, probability
        self.module = None

    def load(self) -> None:
        import torch

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise HeadError(f"{self.path}: no such file") from None
        except Exception as err:
            raise HeadError(f"{self.path}: not a torch state dict ({type(err).__name__}: {err})") from None
        self.module = build(state)
        first = next(m for m in self.module.modules() if isinstance(m, torch.nn.Linear))
        self.in_features = first.in_features

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        import torch

        if self.module is None:
            self.load()
        if embeddings.shape[1] != self.in_features:
            raise HeadError(f"{self.path} expects {self.in_features}-d embeddings; the CLIP model gives "
                            f"{embeddings.shape[1]}-d (LAION's heads are for ViT-L-14)")
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)))
        if out.shape[1] == 2:
            return torch.softmax(out, dim=1)[:, 1].numpy()
        out = out[:, 0]
        return (torch.sigmoid(out) if self.probability else out).numpy()
