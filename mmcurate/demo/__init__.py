"""The embedded demo: real photographs from scikit-image's wheel, served from a loopback server.

The sample holds distinct images (photos and crops of them, as JPEG, PNG and WebP),
near-duplicates (re-encoded, resized copies), redirects, broken links of every kind and rows
that cannot be used at all, so every part of the ledger has something to show. A shapes subset
(coloured shapes, a third of them with wrong captions) and two photos with another photo's
caption give the CLIP stage something to find; it scores them with the offline stand-in CLIP
of `mmcurate.demo.shapes`, which knows shapes and these photos and nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

from mmcurate.demo.photos import PHOTOS, _photo_dir, load_photos, random_crop  # noqa: F401 - the demo's API
from mmcurate.demo.server import ImageServer, Route
from mmcurate.schemas.errors import ConfigError

# The sample's URLs name these hosts, never the server's port (a free one each time), so that the
# same sample gets the same uids, hence the same decisions, on every run and every machine:
# `download.connect_to` sends the requests to the loopback server (the alias to 127.0.0.2, which
# the guard refuses). `.test` names never resolve anywhere else (RFC 6761).
HOST = "images.mmcurate.test"
ALIAS = "alias.mmcurate.test"
NEAR_DUPLICATES = 8  # the first photos also appear as re-encoded, slightly resized copies
SHAPES = 36  # shape pictures in the sample; every third has a wrong caption
MISCAPTIONED = {"coffee.png": "chelsea.png", "rocket.jpg": "moon.png"}  # photo -> photo whose caption it gets
# crops whose caption goes on with something for the safety and privacy stages to find
# (the photo's own caption comes first, so the CLIP stage still sees what the picture shows)
CAPTION_TAILS = {
    ("coins", 1): " - what a fucking rip-off, these are shit",  # profanity: dropped as toxic_caption
    ("coffee", 0): ", prints from jane.doe@example.com",  # e-mail: redacted to [EMAIL]
    ("brick", 0): ", call the builder on +44 20 7946 0958",  # phone: redacted to [PHONE]
}


def _encode(img, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    elif fmt == "WEBP":
        img.convert("RGB").save(buf, "WEBP", quality=quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A small file whose header claims a huge image: a decompression bomb, caught from the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def url(path: str, host: str = HOST) -> str:
    """A sample URL: on the demo's host name, whatever port its server took."""
    return f"http://{host}{path}"


def connect_to(server: ImageServer) -> list[str]:
    """`download.connect_to` for the sample's hosts: both to `server`'s port (the alias on 127.0.0.2)."""
    return [f"{HOST}:80:127.0.0.1:{server.port}", f"{ALIAS}:80:127.0.0.2:{server.port}"]


def build_sample(server: ImageServer) -> list[dict]:
    """Register the sample's routes on `server`; return the input rows (url, caption), bad ones included."""
    from PIL import Image

    rows: list[dict] = []
    folder = _photo_dir()
    for i, (name, caption) in enumerate(PHOTOS.items()):
        path = folder / name
        if not path.exists():
            continue
        with Image.open(path) as im:
            img = im.convert("RGB")
        img.thumbnail((640, 640))
        stem = path.stem
        server.routes[f"/img/{stem}.jpg"] = Route(_encode(img, "JPEG"))
        rows.append({"url": url(f"/img/{stem}.jpg"), "caption": caption})
        w, h = img.size
        for j, box in enumerate([(0, 0, int(w * 0.6), int(h * 0.6)), (int(w * 0.4), int(h * 0.4), w, h)]):
            fmt, ctype, ext = [("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp")][j]
            server.routes[f"/img/{stem}-part{j}.{ext}"] = Route(_encode(img.crop(box), fmt), content_type=ctype)
            tail = CAPTION_TAILS.get((stem, j), "")
            rows.append({"url": url(f"/img/{stem}-part{j}.{ext}"), "caption": f"part of {caption}{tail}"})
        if i < NEAR_DUPLICATES:
            copy = img.resize((int(w * 0.9), int(h * 0.9)))
            server.routes[f"/img/{stem}-copy.jpg"] = Route(_encode(copy, "JPEG", quality=55))
            rows.append({"url": url(f"/img/{stem}-copy.jpg"), "caption": caption})
        if i < 3:
            server.routes[f"/go/{stem}"] = Route(b"", 302, "text/plain", {"Location": f"/img/{stem}.jpg"})
            rows.append({"url": url(f"/go/{stem}"), "caption": f"{caption} (via a redirect)"})
    rows += _shape_rows(server)
    for name, other in MISCAPTIONED.items():
        if (folder / name).exists() and (folder / other).exists():
            with Image.open(folder / name) as im:
                img = im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # not a duplicate
            img.thumbnail((480, 480))
            server.routes[f"/img/{Path(name).stem}-mirrored.jpg"] = Route(_encode(img, "JPEG"))
            rows.append({"url": url(f"/img/{Path(name).stem}-mirrored.jpg"), "caption": PHOTOS[other]})
    server.routes["/error.jpg"] = Route(b"oops", 500, "text/plain")
    server.routes["/page.jpg"] = Route(b"<html><body>not an image</body></html>", content_type="image/jpeg")
    server.routes["/bomb.png"] = Route(bomb_png(), content_type="image/png")
    server.routes["/slow.jpg"] = Route(b"late", delay_s=4.0)
    server.routes["/loop"] = Route(b"", 302, "text/plain", {"Location": "/loop"})
    server.routes["/optout.jpg"] = Route(next(iter(server.routes.values())).body, headers={"X-Robots-Tag": "noai"})
    rows += [
        {"url": url("/missing-1.jpg"), "caption": "a photo that was deleted"},
        {"url": url("/missing-2.jpg"), "caption": "another deleted photo"},
        {"url": url("/error.jpg"), "caption": "a server that fails"},
        {"url": url("/page.jpg"), "caption": "an html page served as an image"},
        {"url": url("/bomb.png"), "caption": "a decompression bomb"},
        {"url": url("/slow.jpg"), "caption": "a server too slow to answer"},
        {"url": url("/loop"), "caption": "a redirect loop"},
        {"url": url("/optout.jpg"), "caption": "an image whose owner opted out of AI use"},
        {"url": url("/img/astronaut.jpg", host=ALIAS), "caption": "a loopback alias the guard refuses"},
        {"url": url("/img/brick.jpg?camera-roll"), "caption": "IMG_0042.jpg"},
        {"url": url("/img/grass.jpg?cms"), "caption": "untitled"},
        {"url": "ftp://example.com/image.jpg", "caption": "an ftp link"},
        {"url": "", "caption": "a row without a url"},
        {"url": "http://user:secret@example.com/a.jpg", "caption": "a url with a password in it"},
    ]
    return rows


def _shape_rows(server: ImageServer) -> list[dict]:
    """Coloured shapes; every third captioned wrongly (another colour or shape)."""
    import numpy as np

    from mmcurate.demo import shapes

    rng = np.random.default_rng(7)
    rows = []
    for i, pair in enumerate(shapes.pairs(SHAPES, seed=2024, size=96)):
        server.routes[f"/shapes/{i}.png"] = Route(shapes.png(pair.image), content_type="image/png")
        text = shapes.wrong_caption(pair, rng) if i % 3 == 2 else pair.caption
        rows.append({"url": url(f"/shapes/{i}.png"), "caption": text})
    return rows


def write_inputs(rows: list[dict], folder: Path) -> str:
    """Write the sample as a CSV plus a JSONL with a malformed line; return the input glob."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    with open(folder / "urls.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["url", "caption"])
        writer.writeheader()
        writer.writerows(rows[:half])
    with open(folder / "urls.jsonl", "w", encoding="utf-8") as f:
        for i, row in enumerate(rows[half:]):
            f.write(json.dumps(row) + "\n")
            if i == 3:
                f.write('{"url": "http://example.com/broken.jpg", "caption": \n')
    return str(folder / "urls.*")


def demo_config(input_glob: str, clip_dir: str | Path, clip_threshold: float, teacher: str | None = None,
                routes: list[str] = ()) -> dict:
    """The default pipeline, allowed to reach the loopback server and nothing else private,
    with the offline stand-in CLIP in place of ViT-B-32 (no model hub here), and toxicity scored
    by alt-profanity-check's model (in its wheel) in place of detoxify's download; `routes` is
    `download.connect_to` (the sample's hosts to the server). NSFW
    filtering runs where the optional NudeNet extra is installed. With `teacher` (an endpoint),
    synthesis runs against it: the demo passes its loopback stand-in teacher, which is not a model."""
    try:
        import nudenet  # noqa: F401

        nsfw = True
    except ImportError:
        nsfw = False
    return {
        "input": {"path": input_glob, "shard_size": 25},
        "download": {"allow_networks": ["127.0.0.1/32"], "timeout_s": 2, "retries": 1, "threads": 16,
                     "connect_to": list(routes)},
        "clip": {"model": f"local-dir:{clip_dir}", "min_score": clip_threshold, "batch_size": 64},
        "quality": {"text": {"enabled": True}},  # boilerplate captions; basic filtering stays a recipe
        # profanity-check scores some plain captions near 0.6 ("part of a man with a camera ..."):
        # the demo asks for a surer call than its 0.5 default
        "safety": {"toxicity": {"model": "profanity-check", "max_score": 0.75}, "nsfw": {"enabled": nsfw}},
        "export": {"formats": ["webdataset", "parquet", "hf", "llava"] if teacher else ["webdataset", "parquet", "hf"]},
        **({"synthesis": {"enabled": True, "endpoint": teacher, "model": "mmcurate-stand-in-teacher"}} if teacher else {}),
    }


def run_demo(run_dir: str | Path, progress=None, force: bool = False):
    """Serve the sample on loopback, run the default pipeline on its pairs, then on its interleaved
    documents in `run_dir/documents/` (`mmcurate.demo.documents`); return both RunResults."""
    from mmcurate.demo import documents, shapes
    from mmcurate.demo.teacher import StandInTeacher
    from mmcurate.engine.executor import start, stop
    from mmcurate.engine.rundir import RunDir
    from mmcurate.jobs.run import run
    from mmcurate.schemas.config import config_from_dict

    where = RunDir.at(run_dir)
    if where.remote:  # refused before anything is written: the demo keeps its sample beside the run
        raise ConfigError(f"--run-dir {where.root}: the demo runs on a local folder; `mmcurate run` takes s3:// run dirs")
    run_dir = where.root
    clip_dir, card = shapes.ensure_model()
    # the teacher is a loopback STAND-IN (mmcurate.demo.teacher): well-formed answers written from
    # the caption, so the synthesis path can be seen offline; it is not a model
    with ImageServer() as server, StandInTeacher() as teacher:
        rows = build_sample(server)
        lines = documents.build_documents(server, url)
        input_glob = write_inputs(rows, run_dir / "demo-input")
        data = demo_config(input_glob, clip_dir, card["threshold"], teacher.endpoint, connect_to(server))
        folder = run_dir / documents.FOLDER
        docs = config_from_dict(documents.documents_config(data, documents.write_documents(lines, folder / "demo-input")),
                                source="demo documents")
        started = start()  # one embedded Ray for both runs: a run leaves running a Ray it did not start
        try:
            # the URLs name no port and a loopback port changes no run: the same command resumes
            pairs = run(config_from_dict(data, source="demo"), run_dir, progress=progress, force=force)
            interleaved = run(docs, folder, progress=progress and documents.Prefixed(progress), force=force)
        finally:
            if started:
                stop()
    return pairs, interleaved
