"""One table of the model-bound scorers on one device: CLIP end to end vs forward-only, the scorer's
JPEG decode and preprocessing on the GPU vs PIL, the NSFW head and NudeNet, CenterFace and detoxify.

Every row calls mmcurate's scorer directly (no Ray): `ClipScorer` with random weights
(`pretrained=None`: nothing is downloaded), `EmbeddingHead` with a random head of the published
NSFW heads' shape, `NsfwDetector`, `FaceDetector` and `ToxicityScorer`. Images are JPEGs of
256-512 px generated in memory. A row whose component is missing prints `skipped: <why>`; the
run never touches the network (connections outside loopback are refused, and hub libraries are
told to stay offline). Each row runs passes until `--seconds-per-row` is spent (at least one,
after a warm-up); CLIP's end to end and forward-only passes alternate, so their ratio comes from
one run (goal on a GPU: end to end >= 0.7x forward-only).

    python bench/gpu.py --wheels bench/wheels            # GPU machine: ~5 min with the defaults
    python bench/gpu.py --device cpu --quick             # CPU smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import importlib
import io
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.gpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HEAD_DIMS = (768, 64, 512, 256, 1)  # LAION's and NeMo Curator's NSFW heads: Linear + ReLU on ViT-L-14
CPU_SAMPLE = 256  # images per pass for the detectors that run on CPU (a pass of 1024 would take a minute)
SHARD = 1000  # the NSFW filter applies its head once per shard (input.shard_size's default)

Row = tuple[str, str, str, str]  # (row, device, images/s, ratio or note)


class Skip(Exception):
    """A row that cannot run here; its message is the why."""


def install_wheels(folder: str) -> str:
    """pip-install every wheel in `folder` (no index, no dependencies) into a fresh directory put
    first on sys.path: the machine's own environment is left as it is. Without pip, the wheels
    are unpacked there (what pip --target does for them, less the scripts)."""
    import importlib.util
    import zipfile

    wheels = sorted(str(p) for p in Path(folder).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--wheels {folder}: no *.whl there")
    target = tempfile.mkdtemp(prefix="mmcurate-bench-wheels-")
    if importlib.util.find_spec("pip") is None:
        for wheel in wheels:
            zipfile.ZipFile(wheel).extractall(target)
    else:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--disable-pip-version-check", "--target", target, *wheels], check=True)
    sys.path.insert(0, target)
    return f"{len(wheels)} wheels from {folder}"


def forbid_network() -> list:
    """Refuse (and record) every connection outside loopback from now on, and keep hub clients offline."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[key] = "1"
    attempts: list = []
    real = socket.socket.connect, socket.socket.connect_ex

    def check(address) -> None:
        if isinstance(address, tuple):
            try:
                ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
                if ip.is_loopback:
                    return
            except ValueError:
                pass
            attempts.append(address[:2])
            raise OSError(f"bench/gpu.py refuses network connections (to {address[0]})")

    def connect(self, address):
        check(address)
        return real[0](self, address)

    def connect_ex(self, address):
        check(address)
        return real[1](self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    return attempts


def scorer_module(name: str) -> types.ModuleType:
    """`mmcurate.filters.<name>`. Where the filters package cannot be imported (its registry needs
    pyarrow and pydantic, which a bare GPU image may lack), the module is imported on its own."""
    try:
        importlib.import_module("mmcurate.filters")
    except ImportError:
        package = types.ModuleType("mmcurate.filters")
        package.__path__ = [str(ROOT / "mmcurate" / "filters")]
        sys.modules["mmcurate.filters"] = package
    return importlib.import_module(f"mmcurate.filters.{name}")


def make_jpegs(n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """`n` JPEGs of 256-512 px (smooth colour fields, shapes, a little noise) and their captions."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}
    images, captions = [], []
    for i in range(n):
        w, h = (int(x) for x in rng.integers(256, 513, 2))
        field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(field)
        name = list(colours)[i % len(colours)]
        x, y, s = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2)), int(rng.integers(40, 160))
        (draw.ellipse if i % 2 else draw.rectangle)((x, y, x + s, y + s), fill=colours[name])
        pixels = np.asarray(field, np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
        captions.append(f"a {name} {'circle' if i % 2 else 'square'}")
    return images, captions


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rate(fn: Callable[[], object], items: int, seconds: float, warm_up: Callable[[], object] | None = None) -> float:
    """Items/s over passes of `fn` (each handles `items`) after one warm-up (`fn` itself unless
    given), until `seconds` are spent."""
    (warm_up or fn)()
    spent, passes = 0.0, 0
    while passes == 0 or spent < seconds:
        spent += timed(fn)
        passes += 1
    return items * passes / spent


def clip_rows(args, device: str, images: list[bytes], captions: list[str], model: str) -> list[Row]:
    """End to end (JPEG bytes -> decode + preprocess by `clip.decode: auto`'s path: on the device on
    CUDA, else in threads -> both towers -> embeddings and scores) vs the towers alone on ready
    tensors, same scorer, same batch size, alternating passes."""
    clip = scorer_module("clip_score")
    scorer = clip.ClipScorer(clip.resolve_weights(model, None), device, args.batch, args.decode_threads)
    scorer.load()
    tensors = [t for t, _ in scorer._prepare(images)]

    def forward() -> None:
        for i in range(0, len(images), args.batch):
            scorer.encode(tensors[i:i + args.batch], captions[i:i + args.batch])  # returns numpy: synchronised

    def end_to_end() -> None:
        scorer.score(images, captions)

    scorer.encode(tensors[:args.batch], captions[:args.batch])  # warm-up: kernels, allocator, thread pools
    scorer.score(images[:args.batch], captions[:args.batch])
    e2e = fwd = 0.0
    passes = 0
    while passes == 0 or e2e + fwd < args.seconds_per_row:
        e2e += timed(end_to_end)
        fwd += timed(forward)
        passes += 1
    n = len(images) * passes
    label = f"{scorer.device}, batch {args.batch}, decode {scorer.decode}, {args.decode_threads} decode threads"
    return [(f"CLIP {model}: end to end", label, f"{n / e2e:,.1f}",
             f"**{fwd / e2e:.2f}×** forward-only (goal ≥ 0.7)"),
            (f"CLIP {model}: forward only", scorer.device, f"{n / fwd:,.1f}", "ready tensors, both towers")]


def decode_rows(args, device: str, images: list[bytes]) -> list[Row]:
    """The scorer's two decode paths, JPEG bytes to the first model's input, a batch at a time as
    `ClipScorer.score` prepares them: `clip.decode: cpu` (PIL and open_clip's transform in its
    thread pool) vs `gpu` (batched decode_jpeg and the preprocessing on the device)."""
    clip = scorer_module("clip_score")
    model = args.models.split(",")[0]
    weights = clip.resolve_weights(model, None)

    def prepare(decode: str) -> Callable[[], object]:
        scorer = clip.ClipScorer(weights, device, args.batch, args.decode_threads, decode=decode)
        scorer.load()
        return lambda: [scorer._prepare(images[i:i + args.batch]) for i in range(0, len(images), args.batch)]

    cpu = rate(prepare("cpu"), len(images), args.seconds_per_row)
    rows: list[Row] = [("decode: PIL + preprocess (clip.decode: cpu)", f"cpu, {args.decode_threads} threads",
                        f"{cpu:,.1f}", f"to {model}'s input")]
    name = "decode: torchvision decode_jpeg, batched + preprocess (clip.decode: gpu)"
    try:
        if device != "cuda":
            raise Skip("no CUDA device" if device == "cpu" else device)
        speed = rate(prepare("gpu"), len(images), args.seconds_per_row)  # _prepare waits for its stream
        rows.append((name, "cuda", f"{speed:,.1f}", f"{speed / cpu:.2f}× PIL"))
    except Exception as err:  # noqa: BLE001 - the PIL row above stands either way
        rows += failed(name, "cuda", err)
    return rows


def head_rows(args, device: str) -> list[Row]:
    """The NSFW head (random weights, the published heads' shape) on unit 768-d embeddings, a shard
    at a time: through `EmbeddingHead.score` (what the filter runs, on CPU), and its module on CUDA."""
    import torch

    head_module = scorer_module("embedding_head")
    torch.manual_seed(0)
    state = {}
    for i in range(len(HEAD_DIMS) - 1):
        layer = torch.nn.Linear(HEAD_DIMS[i], HEAD_DIMS[i + 1])
        state[f"{2 * i}.weight"], state[f"{2 * i}.bias"] = layer.weight.detach(), layer.bias.detach()
    path = Path(tempfile.mkdtemp()) / "nsfw_head.pt"
    torch.save(state, path)
    head = head_module.EmbeddingHead(str(path), probability=True, key="safety.nsfw.weights", activation="relu")
    head.load()
    emb = np.random.default_rng(0).normal(size=(args.head_rows, HEAD_DIMS[0])).astype(np.float32)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)  # as clip_embed stores them
    shards = [emb[i:i + SHARD] for i in range(0, len(emb), SHARD)]
    speed = rate(lambda: [head.score(s.astype(np.float32)) for s in shards], len(emb), args.seconds_per_row)
    rows: list[Row] = [("NSFW head (clip_head) on embeddings", "cpu", f"{speed:,.0f}",
                        f"EmbeddingHead.score, {SHARD} rows a call; rows, not images")]
    if device != "cuda":
        return rows + [("NSFW head on embeddings, module on CUDA", "cuda", "", "skipped: no CUDA device")]
    module = head.module.to("cuda")

    def gpu() -> None:
        with torch.inference_mode():
            for s in shards:
                torch.sigmoid(module(torch.from_numpy(s).to("cuda").float())[:, 0]).cpu()

    try:
        fast = rate(gpu, len(emb), args.seconds_per_row)
    except Exception as err:  # noqa: BLE001 - the CPU row above stands either way
        return rows + failed("NSFW head on embeddings, module on CUDA", "cuda", err)
    return rows + [("NSFW head on embeddings, module on CUDA", "cuda", f"{fast:,.0f}",
                    f"{fast / speed:.1f}× CPU (the filter's head on a safety actor with a GPU)")]


def nudenet_row(args, images: list[bytes]) -> Row:
    nsfw = scorer_module("nsfw")
    try:
        detector = nsfw.NsfwDetector(batch_size=16, device="auto")  # CUDA where onnxruntime-gpu sees a GPU
    except ImportError as err:
        raise Skip(f"NudeNet not installed ({err}); carry its wheel") from None
    providers = ",".join(p.replace("ExecutionProvider", "") for p in detector.session.get_providers())
    sample = images[:CPU_SAMPLE]
    speed = rate(lambda: detector.score(sample), len(sample), args.seconds_per_row, lambda: detector.score(sample[:16]))
    return ("NSFW: NudeNet 320n, batch 16", f"onnxruntime {providers}", f"{speed:,.1f}",
            "decode + detect, each image at its size (≤ 320)")


def faces_row(args, images: list[bytes]) -> Row:
    faces = scorer_module("faces")
    decode_rgb = scorer_module("images").decode_rgb
    try:
        detector = faces.FaceDetector(*faces.resolve("centerface", None), device="auto")  # CUDA as NudeNet
    except (FileNotFoundError, ImportError) as err:
        raise Skip(str(err)) from None
    providers = ",".join(p.replace("ExecutionProvider", "") for p in detector.session.get_providers())
    sample = images[:CPU_SAMPLE]
    speed = rate(lambda: detector.detect_many([decode_rgb(b) for b in sample]), len(sample), args.seconds_per_row,
                 lambda: detector.detect_many([decode_rgb(b) for b in sample[:16]]))
    return ("faces: CenterFace", f"onnxruntime {providers}, batch 16", f"{speed:,.1f}",
            "decode + detect, each image at its size (≤ 384)")


def toxicity_row(args, device: str, captions: list[str]) -> Row:
    """detoxify on the captions, from local files only: a given checkpoint, or the released one
    where torch hub's cache already holds it (and its tokenizer is in the Hugging Face cache)."""
    toxicity = scorer_module("toxicity")
    os.environ.setdefault("MMCURATE_CACHE", tempfile.mkdtemp())
    if args.toxicity_checkpoint:
        spec = toxicity.resolve(args.toxicity, args.toxicity_checkpoint, args.toxicity_config)
    else:
        import torch.hub
        from detoxify.detoxify import MODEL_URLS

        cached = Path(torch.hub.get_dir()) / "checkpoints" / MODEL_URLS[args.toxicity].rsplit("/", 1)[-1]
        if not cached.is_file():
            raise Skip(f"no weights offline (detoxify {args.toxicity!r} is not in {cached.parent}; "
                       "or give --toxicity-checkpoint and --toxicity-config)")
        spec = toxicity.resolve(args.toxicity, None, None)  # finds the cached file: no download
    try:
        scorer = toxicity.ToxicityScorer(spec, device, 64)
    except OSError as err:  # transformers, offline, without the tokenizer and config in its cache
        raise Skip(f"no weights offline ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    texts = (captions * (args.captions // len(captions) + 1))[:args.captions]
    speed = rate(lambda: scorer.score(texts), len(texts), args.seconds_per_row)
    name = Path(args.toxicity_checkpoint).name if args.toxicity_checkpoint else args.toxicity
    return (f"toxicity: detoxify {name}, batch 64", device, f"{speed:,.1f}", "captions, not images")


def failed(name: str, device: str, err: BaseException) -> list[Row]:
    """`skipped: <why>` where a component is missing; otherwise `error: ...` (main() then exits 1)."""
    if isinstance(err, Skip):
        return [(name, device, "", f"skipped: {err}")]
    if isinstance(err, ImportError):
        return [(name, device, "", f"skipped: {err} (carry its wheel: see bench/gpu.sh)")]
    log.error("row %r failed", name, exc_info=err)
    first = (str(err).splitlines() or [""])[0][:160]
    return [(name, device, "", f"error: {type(err).__name__}: {first} (traceback on stderr)")]


def guarded(name: str, device: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
    """The row(s) `fn` measures, or one row saying why not: one broken row must not hide the others."""
    try:
        out = fn()
    except Exception as err:  # noqa: BLE001 - reported in the table (and on stderr), never swallowed
        return failed(name, device, err)
    return out if isinstance(out, list) else [out]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--wheels", help="a folder of wheels to pip install (--no-index --no-deps) first")
    parser.add_argument("--models", help="comma-separated open_clip names (random weights) or local-dir:/path "
                        "(default ViT-B-32,ViT-L-14; quick: ViT-B-32, as ViT-L-14 alone takes minutes on a CPU)")
    parser.add_argument("--quick", action="store_true", help="few images, one pass a row: a smoke run")
    parser.add_argument("--seconds-per-row", type=float, help="time spent measuring each row (default 20; quick 0)")
    parser.add_argument("--images", type=int, help="JPEGs per pass (default 1024; quick 16)")
    parser.add_argument("--batch", type=int, help="CLIP and GPU-decode batch size (default 256; quick 8)")
    parser.add_argument("--decode-threads", type=int, default=4, help="PIL decode threads (ClipScorer's default)")
    parser.add_argument("--head-rows", type=int, help="embeddings the NSFW head scores per pass (default 200000)")
    parser.add_argument("--captions", type=int, help="captions detoxify scores per pass (default 2048; quick 64)")
    parser.add_argument("--toxicity", default="original", help="detoxify model name")
    parser.add_argument("--toxicity-checkpoint", help="a local detoxify .ckpt (else the released one, if cached)")
    parser.add_argument("--toxicity-config", help="the folder with that checkpoint's transformer config and tokenizer")
    args = parser.parse_args(argv)
    quick = args.quick
    for key, full, small in (("models", "ViT-B-32,ViT-L-14", "ViT-B-32"), ("seconds_per_row", 20.0, 0.0),
                             ("images", 1024, 16), ("batch", 256, 8), ("head_rows", 200_000, 4_000),
                             ("captions", 2048, 64)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)

    carried = install_wheels(args.wheels) if args.wheels else "none"
    attempts = forbid_network()
    started = time.perf_counter()
    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    images, captions = make_jpegs(args.images)
    rows: list[Row] = []
    for model in args.models.split(","):
        rows += guarded(f"CLIP {model}", device, lambda m=model: clip_rows(args, device, images, captions, m))
    rows += guarded("decode", device, lambda: decode_rows(args, device, images))
    rows += guarded("NSFW head (clip_head) on embeddings", device, lambda: head_rows(args, device))
    rows += guarded("NSFW: NudeNet 320n", "cpu", lambda: nudenet_row(args, images))
    rows += guarded("faces: CenterFace", "cpu", lambda: faces_row(args, images))
    rows += guarded(f"toxicity: detoxify {args.toxicity}", device, lambda: toxicity_row(args, device, captions))

    print(f"bench/gpu.py: {device}{f' ({gpu})' if gpu else ''}, torch {torch.__version__}, {os.cpu_count()} CPU cores, "
          f"{args.images} JPEGs of 256-512 px, {args.seconds_per_row:g} s a row, wheels carried: {carried}\n")
    print("| row | device | images/s | ratio or note |")
    print("|---|---|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{time.perf_counter() - started:.0f} s in all; network: "
          + (f"{len(attempts)} connection(s) refused: {attempts[:3]}" if attempts else "no connection attempted"))
    if any(note.startswith("error:") for *_, note in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
