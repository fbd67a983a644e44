"""CLIP's image input made on a torch device: JPEGs decoded in batches (nvjpeg on CUDA, through
`torchvision.io.decode_jpeg`), resized, cropped and normalised there, as open_clip's eval
transform does on PIL images. No Ray here.

`clip.decode: gpu` runs this on the scorer's CUDA device; the same code runs on any device, so its
results can be checked against open_clip's PIL transform on a CPU. What is not a whole JPEG by its
first and last bytes, or does not decode on the device, goes to the CPU path (PIL and open_clip's
transform) image by image, which decides as it always has (an image no path decodes is
`undecodable_image`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

JPEG_START = b"\xff\xd8\xff"  # SOI and the first marker's 0xFF
JPEG_END = b"\xff\xd9"  # EOI

Prepared = tuple[Any, "str | None"]  # (preprocessed tensor, None) or (None, why it did not decode)


def is_whole_jpeg(data: bytes) -> bool:
    """JPEG by its magic bytes, ending with EOI (trailing zero padding allowed): a truncated JPEG
    goes to PIL, which fails it as it always has, where a decoder on the device might fill it in."""
    return data[:3] == JPEG_START and data.rstrip(b"\0")[-2:] == JPEG_END


def preprocess_cfg(model) -> Any:
    """open_clip's `PreprocessCfg` of a loaded model: what its own eval transform is built from."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    return PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))


def supported(cfg) -> str | None:
    """None where `preprocess_tensor` reproduces the model's eval transform; else why not."""
    if cfg.mode != "RGB":
        return f"the model's preprocessing wants mode {cfg.mode!r} (only RGB is made on the device)"
    if cfg.resize_mode not in ("shortest", "longest", "squash"):
        return f"unknown resize_mode {cfg.resize_mode!r}"
    return None


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def preprocess_tensor(image, cfg):
    """uint8 RGB (3, H, W) on any device -> float32 (3, h, w) model input on that device: open_clip's
    eval transform (resize by `resize_mode`, antialiased bicubic or bilinear, crop or pad to the
    centre, [0, 1], the model's mean and std) on a tensor, in float where PIL rounds to 8 bits."""
    import torch
    from open_clip.transform import center_crop_or_pad
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    size = _pair(cfg.size)
    mode = InterpolationMode.BILINEAR if cfg.interpolation == "bilinear" else InterpolationMode.BICUBIC
    x = image.to(torch.float32).div_(255)
    h, w = x.shape[-2:]
    if cfg.resize_mode == "squash":
        x = TF.resize(x, list(size), mode, antialias=True)
    elif cfg.resize_mode == "shortest" and size[0] == size[1]:
        x = TF.resize(x, [size[0]], mode, antialias=True)  # torchvision's shortest-edge sizes, as Resize(int)
        x = TF.center_crop(x, list(size))
    else:  # open_clip's ResizeKeepRatio (bicubic whatever `interpolation` says, as there), then the crop
        longest = 1.0 if cfg.resize_mode == "longest" else 0.0
        ratios = (h / size[0], w / size[1])
        ratio = max(ratios) * longest + min(ratios) * (1 - longest)
        x = TF.resize(x, [round(h / ratio), round(w / ratio)], InterpolationMode.BICUBIC, antialias=True)
        x = (center_crop_or_pad(x, list(size), fill=cfg.fill_color / 255) if longest
             else TF.center_crop(x, list(size)))
    x = x.clamp_(0, 1)  # bicubic overshoots; PIL clips to 0..255
    mean, std = _channels(cfg.mean), _channels(cfg.std)
    return TF.normalize(x, mean, std)


def _channels(value) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3


def decode_jpegs(images: list[bytes], device) -> list:
    """uint8 RGB (3, H, W) tensors on `device` for the whole JPEGs of `images` that decode there, in
    one batched call (image by image where the batch fails); None for every other image."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    picks = [i for i, data in enumerate(images) if is_whole_jpeg(data)]
    out: list = [None] * len(images)
    if not picks:
        return out
    raw = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in picks]
    try:
        decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except Exception as err:  # one bad file fails the batch: try each on its own
        log.debug("batched decode_jpeg on %s failed (%s); decoding image by image", device, err)
        decoded = [_decode_one(r, device) for r in raw]
    for i, tensor in zip(picks, decoded):
        out[i] = tensor
    return out


def _decode_one(raw, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except Exception:  # noqa: BLE001 - this image goes to the CPU path, which gives the verdict
        return None


def prepare_on_device(images: list[bytes], cfg, device, fallback: Callable[[bytes], Prepared],
                      map_fn: Callable[[Callable, Iterable], Iterable] = map) -> list[Prepared]:
    """(model input on `device`, None) or (None, error text) per image: JPEGs decoded and
    preprocessed on `device`; every other image through `fallback` (the CPU path: PIL and open_clip's
    transform), mapped with `map_fn` (a thread pool's map), its tensor then moved to `device`."""
    tensors = decode_jpegs(images, device)
    out: list[Prepared] = [(None if t is None else preprocess_tensor(t, cfg), None) for t in tensors]
    rest = [i for i, t in enumerate(tensors) if t is None]
    for i, (tensor, err) in zip(rest, map_fn(fallback, [images[i] for i in rest])):
        out[i] = (None if tensor is None else tensor.to(device), err)
    return out
