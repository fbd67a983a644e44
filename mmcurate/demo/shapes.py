"""A CLIP that means something with no model hub: coloured shapes, and a tiny open_clip trained on them.

Real CLIP weights are downloads; machines without a hub (CI, air-gapped clusters) still need a
model whose scores mean something to test and demonstrate the CLIP stage. This module draws
synthetic pairs ("a red circle" and a picture of one), trains a small open_clip ViT on them with
the usual contrastive loss in well under a minute on two cores, and saves it in open_clip's
`local-dir:` form: the same form, loaded through the same code path, as a user's fine-tuned CLIP.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
TEMPLATES = ("a {c} {s}", "a photo of a {c} {s}", "a {c} {s} on a plain background", "a drawing of a {c} {s}")
IMAGE_SIZE = 64
PHOTO_CROPS = 40  # training crops per demo photograph
VERSION = "1"  # bump when the data, architecture or training changes: cached models are keyed by it

MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class Pair:
    colour: str
    shape: str
    caption: str
    image: object  # PIL.Image


def caption(colour: str, shape: str, rng: np.random.Generator) -> str:
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(c=colour, s=shape)


def draw(colour: str, shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE):
    """One picture: a shape of random size and place on a random light, slightly noisy background."""
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.38) * size
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour])
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 3
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    noise = rng.integers(-8, 9, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))


def pairs(n: int, seed: int, size: int = IMAGE_SIZE) -> list[Pair]:
    """`n` true image-caption pairs, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        s = SHAPES[int(rng.integers(len(SHAPES)))]
        out.append(Pair(c, s, caption(c, s, rng), draw(c, s, rng, size)))
    return out


def wrong_caption(pair: Pair, rng: np.random.Generator) -> str:
    """A caption that is wrong for `pair`: another colour, another shape, or both."""
    kind = int(rng.integers(3))
    colour, shape = pair.colour, pair.shape
    if kind in (0, 2):
        colour = str(rng.choice([c for c in COLOURS if c != pair.colour]))
    if kind in (1, 2):
        shape = str(rng.choice([s for s in SHAPES if s != pair.shape]))
    return caption(colour, shape, rng)


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def cache_dir() -> Path:
    """Where the trained demo model is kept between runs ($MMCURATE_CACHE, else ~/.cache/mmcurate)."""
    root = os.environ.get("MMCURATE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmcurate"
    return Path(root) / f"shapes-clip-v{VERSION}"


def photo_caption(name: str, rng: np.random.Generator) -> str:
    """One of the captions the demo gives photo `name` (see mmcurate.demo.photos.PHOTOS)."""
    from mmcurate.demo.photos import PHOTOS

    base = PHOTOS[name]
    return (base, f"part of {base}", f"{base} (via a redirect)")[int(rng.integers(3))]


def photo_pairs(crops_per_photo: int, seed: int) -> list[Pair]:
    """Random crops of the demo's photographs, fitted to the model's input size."""
    from PIL import ImageOps

    from mmcurate.demo.photos import PHOTOS, _photo_dir, random_crop

    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        path = _photo_dir() / name
        if not path.exists():
            continue
        from PIL import Image

        with Image.open(path) as im:
            photo = im.convert("RGB")
        for _ in range(crops_per_photo):
            crop = ImageOps.fit(random_crop(photo, rng, 0.5), (IMAGE_SIZE, IMAGE_SIZE))
            out.append(Pair("photo", name, PHOTOS[name], crop))
    return out


def train(out_dir: str | Path, steps: int = 1000, batch: int = 64, seed: int = 0, with_photos: bool = True) -> dict:
    """Train the shapes CLIP and save it in open_clip's `local-dir:` form; return its card.

    With `with_photos` it also learns the demo's ~20 photographs with their demo captions, so
    that the demo's photos pass its CLIP stage: it knows those pictures, not photographs.

    The card (also saved as `mmcurate_card.json`) holds the accuracy on fresh held-out pairs
    (how often the true caption outscores a wrong one) and the score threshold that best
    separates true from wrong captions there (the one with the highest min(kept true, dropped wrong)).
    """
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**MODEL_CFG)
    tokenizer = open_clip.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])
    preprocess_cfg = {"size": IMAGE_SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

    def to_tensor(images) -> torch.Tensor:
        arr = np.stack([np.asarray(im, np.float32) for im in images]) / 255.0
        return (torch.from_numpy(arr).permute(0, 3, 1, 2) - 0.5) / 0.5

    pool = pairs(4096, seed=seed + 1)
    images = to_tensor([p.image for p in pool])
    photos = photo_pairs(PHOTO_CROPS, seed=seed + 6) if with_photos else []
    photo_images = to_tensor([p.image for p in photos]) if photos else None
    n_photo = batch // 4 if photos else 0
    caption_rng = np.random.default_rng(seed + 2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed + 3)
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(pool), batch - n_photo, replace=False)
        # fresh caption templates each step, so the model learns the words, not one phrasing
        texts = [caption(pool[i].colour, pool[i].shape, caption_rng) for i in idx]
        labels = [(pool[i].colour, pool[i].shape) for i in idx]
        x = images[idx]
        if n_photo:
            pidx = rng.choice(len(photos), n_photo, replace=False)
            texts += [photo_caption(photos[i].shape, caption_rng) for i in pidx]
            labels += [(photos[i].colour, photos[i].shape) for i in pidx]
            x = torch.cat([x, photo_images[pidx]])
        img_f, txt_f, scale = model(x, tokenizer(texts))
        logits = scale * img_f @ txt_f.T
        same = torch.tensor([[a == b for b in labels] for a in labels])
        # pairs whose captions mean the same are not negatives of each other
        logits = logits.masked_fill(same & ~torch.eye(batch, dtype=torch.bool), float("-inf"))
        target = torch.arange(batch)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()

    held = pairs(400, seed=seed + 4)
    wrong_rng = np.random.default_rng(seed + 5)
    with torch.no_grad():
        img_f = F.normalize(model.encode_image(to_tensor([p.image for p in held])), dim=-1)
        true_f = F.normalize(model.encode_text(tokenizer([p.caption for p in held])), dim=-1)
        wrong_f = F.normalize(model.encode_text(tokenizer([wrong_caption(p, wrong_rng) for p in held])), dim=-1)
    true_s = (img_f * true_f).sum(-1).numpy()
    wrong_s = (img_f * wrong_f).sum(-1).numpy()
    card = {
        "name": "mmcurate shapes CLIP",
        "version": VERSION,
        "steps": steps,
        "batch": batch,
        "seed": seed,
        "ranking_accuracy": float((true_s > wrong_s).mean()),
        "mean_true_score": float(true_s.mean()),
        "mean_wrong_score": float(wrong_s.mean()),
        "threshold": best_threshold(true_s, wrong_s),
        "with_photos": with_photos,
        "note": "trained on synthetic coloured shapes (and the demo's own photographs): "
        "its scores mean nothing for other images",
    }
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": preprocess_cfg}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    (out / "mmcurate_card.json").write_text(json.dumps(card, indent=1))
    return card


def best_threshold(true_s: np.ndarray, wrong_s: np.ndarray) -> float:
    """The threshold (on a 0.01 grid) that keeps most true pairs and drops most wrong ones, worst case."""
    grid = np.round(np.arange(-1, 1, 0.01), 2)
    worst = [min((true_s >= t).mean(), (wrong_s < t).mean()) for t in grid]
    return float(grid[int(np.argmax(worst))])


def ensure_model(folder: str | Path | None = None) -> tuple[Path, dict]:
    """The trained shapes CLIP in `folder` (default: the cache), training it first if absent."""
    folder = Path(folder) if folder else cache_dir()
    card_file = folder / "mmcurate_card.json"
    if card_file.exists():
        return folder, json.loads(card_file.read_text())
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    train(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: use its model
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder, json.loads(card_file.read_text())
