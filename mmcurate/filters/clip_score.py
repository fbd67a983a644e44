"""CLIP image-text alignment: open_clip towers, cosine similarity, image embeddings. No Ray here.

Models load the way open_clip users load them: `model` is a built-in architecture name
(`ViT-B-32`), `hf-hub:org/repo` or `local-dir:/path` (a folder with `open_clip_config.json` and
the weights); `pretrained` is an open_clip tag (downloaded where a hub is reachable) or a local
checkpoint file, and is ignored for the `hf-hub:`/`local-dir:` forms, as in open_clip.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmcurate.filters.clip_decode import Prepared, prepare_on_device, preprocess_cfg, supported
from mmcurate.filters.weights import file_sha256, hub_unreachable
from mmcurate.schemas.errors import ModelError

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


@dataclass(frozen=True)
class Weights:
    """Where a CLIP's weights come from, resolved: what the manifest and ledger record."""

    model: str
    pretrained: str | None
    path: str | None  # the weights file, when there is one
    sha256: str | None

    @property
    def label(self) -> str:
        """`model[@pretrained] sha256:<first 12>`: one string per row in the ledger (dictionary-encoded)."""
        name = self.model + (f"@{self.pretrained}" if self.pretrained else "")
        return f"{name} sha256:{self.sha256[:12]}" if self.sha256 else f"{name} (random init)"


def resolve_weights(model: str, pretrained: str | None) -> Weights:
    """Find (downloading a tag where a hub is reachable) the weights file and hash it."""
    import open_clip
    from open_clip.factory import _find_checkpoint_in_dir

    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR) :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ModelError("clip.model", f"{folder} is not an open_clip folder (no open_clip_config.json in it)")
        path = _find_checkpoint_in_dir(folder)
        if path is None:
            raise ModelError("clip.model", f"{folder} holds no weights (*.safetensors, *.bin or *.pth)")
        return Weights(model, None, path, file_sha256(path))
    if model.startswith(HF_HUB):
        from open_clip.pretrained import download_pretrained_from_hf

        why = hub_unreachable(model[len(HF_HUB):])
        if why:
            raise ModelError("clip.model", f"cannot fetch {model}: {why}; with no hub, save the model to a folder "
                                           "and use local-dir:/path")
        try:
            path = download_pretrained_from_hf(model[len(HF_HUB) :])
        except Exception as err:
            raise ModelError("clip.model", f"cannot fetch {model} ({type(err).__name__}: {err}); "
                               "with no hub, save the model to a folder and use local-dir:/path") from None
        return Weights(model, None, path, file_sha256(path))
    if model.replace("/", "-") not in open_clip.list_models():
        raise ModelError("clip.model", f"{model!r} is not an open_clip architecture (see open_clip.list_models()), "
                           "nor hf-hub:org/repo or local-dir:/path")
    if pretrained is None:
        return Weights(model, None, None, None)
    local = Path(pretrained).expanduser()
    if local.is_file():
        return Weights(model, pretrained, str(local), file_sha256(local))
    cfg = open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))) or "none"
        raise ModelError("clip.pretrained", f"{pretrained!r} is neither a file nor a tag of {model} (tags: {known})")
    repo, name = os.path.split(cfg.get("hf_hub") or "")  # "org/repo/" or "org/repo/file.bin"
    why = hub_unreachable(repo, (name, Path(name).with_suffix(".safetensors").name) if name else None) if repo else None
    if why:
        raise ModelError("clip.pretrained", f"cannot download {model}@{pretrained}: {why}; with no hub, give a local "
                                            "checkpoint file or a local-dir: model")
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as err:
        raise ModelError("clip.pretrained", f"cannot download {model}@{pretrained} ({type(err).__name__}: {err}); "
                           "with no hub, give a local checkpoint file or a local-dir: model") from None
    if not path:
        raise ModelError("clip.pretrained", f"open_clip has no download for {model}@{pretrained}")
    return Weights(model, pretrained, path, file_sha256(path))


def embedding_dim(model: str) -> int | None:
    """The image embedding's width from the model's config alone (no weights loaded); None where
    only loading tells (an hf-hub: model, an unknown name)."""
    import json

    import open_clip

    if model.startswith(HF_HUB):
        return None
    if model.startswith(LOCAL_DIR):
        try:
            config = json.loads((Path(model[len(LOCAL_DIR):]).expanduser() / "open_clip_config.json").read_text())
        except (OSError, ValueError):
            return None
        return config.get("model_cfg", {}).get("embed_dim")
    return (open_clip.get_model_config(model.replace("/", "-")) or {}).get("embed_dim")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("clip.device is cuda but this worker has no CUDA device")
    return device


def pick_decode(decode: str, device: str) -> str:
    """Where images decode and preprocess: `gpu` (JPEGs on the CUDA device) or `cpu` (PIL in threads)."""
    if decode == "auto":
        return "gpu" if device == "cuda" else "cpu"
    if decode == "gpu" and device != "cuda":
        raise ModelError("clip.decode", f"gpu decodes on the CUDA device, but this worker's device is {device} "
                                        "(use auto or cpu)")
    return decode


class ClipScorer:
    """Scores image-caption pairs: cosine similarity of the two towers' normalised embeddings.

    Decoding and preprocessing run one batch ahead of the model: with `decode="cpu"` in a thread
    pool (PIL and open_clip's transform), so the towers (which release the GIL) are not kept
    waiting on PIL; with `gpu` (auto's choice on CUDA) JPEGs in batches on the device, on a CUDA
    stream of their own, the other images through the CPU path (`clip_decode.prepare_on_device`).
    On CUDA the towers run under autocast (bf16 where supported, else fp16); on CPU in fp32.
    """

    def __init__(self, weights: Weights, device: str = "auto", batch_size: int = 256, decode_threads: int = 4,
                 decode: str = "auto"):
        self.weights = weights
        self.device_setting = device
        self.batch_size = batch_size
        self.decode_threads = decode_threads
        self.decode_setting = decode
        self.model = None
        self.dim: int | None = None  # known once loaded

    def load(self) -> None:
        import open_clip
        import torch

        self.device = pick_device(self.device_setting)
        self.decode = pick_decode(self.decode_setting, self.device)  # refused before any weights load
        w = self.weights
        schema = w.model.startswith((LOCAL_DIR, HF_HUB))
        model, _, preprocess = open_clip.create_model_and_transforms(
            w.model, pretrained=None if schema else w.pretrained, device=self.device
        )
        model.eval()
        self.model, self.preprocess = model, preprocess
        self.preprocess_cfg = preprocess_cfg(model)  # what `preprocess` is built from: the device path's too
        why = supported(self.preprocess_cfg)
        if why and self.decode_setting == "gpu":
            raise ModelError("clip.decode", f"gpu cannot preprocess for {w.model}: {why} (use auto or cpu)")
        if why:
            self.decode = "cpu"
        log.info("clip: %s on %s, images decoded on %s", w.label, self.device, self.decode)
        self.tokenizer = open_clip.get_tokenizer(w.model)
        from PIL import Image

        with torch.inference_mode():  # the embedding's width, from the model itself (any tower)
            probe = preprocess(Image.new("RGB", (32, 32)))[None].to(self.device)
            self.dim = int(model.encode_image(probe).shape[-1])
        if self.device == "cuda":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="clip-decode")
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="clip-prefetch")  # waits on _pool, never in it
        self._stream = torch.cuda.Stream(self.device) if self.decode == "gpu" and self.device == "cuda" else None

    def _decode(self, data: bytes) -> Prepared:
        """(tensor, None) or (None, error text) for one image."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                return self.preprocess(im.convert("RGB")), None
        except Exception as err:  # stored bytes that do not decode: a ledger reason, not a crash
            return None, f"{type(err).__name__}: {err}"

    def _prepare(self, images: list[bytes]) -> list[Prepared]:
        """(model input, None) or (None, error text) per image, by the scorer's decode path."""
        if self.decode == "cpu":
            return list(self._pool.map(self._decode, images))
        if self._stream is None:  # the device path on a CPU: what tests check it with
            return prepare_on_device(images, self.preprocess_cfg, self.device, self._decode, self._pool.map)
        import torch

        with torch.cuda.stream(self._stream):
            prepared = prepare_on_device(images, self.preprocess_cfg, self.device, self._decode, self._pool.map)
        self._stream.synchronize()  # whole before the towers' stream reads it
        return prepared

    def _autocast(self):
        """The towers' precision: autocast on CUDA (bf16 where supported, else fp16), fp32 on CPU."""
        import contextlib

        import torch

        return (torch.autocast("cuda", dtype=self.autocast_dtype) if self.device == "cuda"
                else contextlib.nullcontext())

    def encode(self, tensors: list, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image embeddings and per-pair cosine scores for ready tensors."""
        import torch

        with torch.inference_mode():
            if tensors[0].is_cuda:  # made on the decode stream: its memory is not reused while this one reads it
                stream = torch.cuda.current_stream(tensors[0].device)
                for tensor in tensors:
                    tensor.record_stream(stream)
            x = torch.stack(tensors).to(self.device, non_blocking=True)
            t = self.tokenizer(captions).to(self.device, non_blocking=True)
            with self._autocast():
                img = self.model.encode_image(x)
                txt = self.model.encode_text(t)
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
            scores = (img * txt).sum(-1)
        return img.cpu().numpy(), scores.cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Normalised text embeddings, float32 (n, d), in batches of `batch_size` (loading the model
        first where needed). A text longer than the model's context is cut by its tokenizer."""
        if self.model is None:
            self.load()
        import torch

        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                t = self.tokenizer(texts[start : start + self.batch_size]).to(self.device, non_blocking=True)
                with self._autocast():
                    txt = self.model.encode_text(t)
                out[start : start + len(t)] = torch.nn.functional.normalize(txt.float(), dim=-1).cpu().numpy()
        return out

    def score(self, images: list[bytes], captions: list[str]):
        """(scores float32, image embeddings float32 (n, d) or None rows, errors) for each pair."""
        if self.model is None:
            self.load()
        n = len(images)
        scores = np.full(n, np.nan, np.float32)
        embeddings: list[np.ndarray | None] = [None] * n
        errors: list[str | None] = [None] * n
        starts = list(range(0, n, self.batch_size))
        ahead = self._ahead.submit(self._prepare, images[: self.batch_size]) if starts else None
        for b, start in enumerate(starts):
            prepared = ahead.result()
            if b + 1 < len(starts):  # decode the next batch while the towers run on this one
                nxt = starts[b + 1]
                ahead = self._ahead.submit(self._prepare, images[nxt : nxt + self.batch_size])
            ok = [i for i, (tensor, _) in enumerate(prepared) if tensor is not None]
            for i, (_, err) in enumerate(prepared):
                errors[start + i] = err
            if not ok:
                continue
            emb, s = self.encode([prepared[i][0] for i in ok], [captions[start + i] for i in ok])
            for j, i in enumerate(ok):
                scores[start + i] = s[j]
                embeddings[start + i] = emb[j]
        return scores, embeddings, errors
