"""The demo's interleaved documents: six MMC4 documents whose images are the sample's photographs and
shapes, on the same loopback server, run after the pairs into `RUN/documents/` and exported as
MMC4, OBELICS and webdataset (one sample per document).

Each shows a rule of the documents ledger: a kept document that loses a 404 image (its text stays),
one that loses a within-document duplicate, one with too few words, one whose only image is gone,
a broken line, and a kept document of shapes. CLIP scores every image and cuts none: a sentence of
a document is no caption the stand-in CLIP was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route

FOLDER = "documents"  # the documents run's folder inside the demo's run dir
PREFIX = "docs/"  # its stages in the progress lines
BLOG = "https://blog.mmcurate.test"  # the documents' own URLs: never fetched, only recorded


def build_documents(server: ImageServer, url: Callable[[str], str]) -> list[dict | str]:
    """Register the documents' routes on `server` (beside the pairs' photographs); return the MMC4
    lines, a broken one among them, their images' URLs made by `url` from a path (the sample's host)."""
    def _image(path: str, sentence: int) -> dict:
        return {"image_name": Path(path).name, "raw_url": url(path), "matched_text_index": sentence, "matched_sim": None}

    shared = server.routes.get("/img/chelsea.jpg")
    if shared is not None:  # the same bytes under another URL: a duplicate within its document
        server.routes["/doc/chelsea-shared.jpg"] = Route(shared.body)
    lesson = shapes.pairs(2, seed=11, size=96)
    for i, pair in enumerate(lesson):
        server.routes[f"/doc/shape-{i}.png"] = Route(shapes.png(pair.image), content_type="image/png")
    return [
        {"url": f"{BLOG}/night-sky", "text_list": [
            "We set up the telescope in the garden just after sunset and waited for the sky to darken.",
            "the cratered surface of the moon",
            "The comet we hoped to see never showed itself, and the picture of it we had saved is gone too.",
            "galaxies in the Hubble deep field",
            "Even this small patch of sky holds thousands of them, each a whole galaxy of stars."],
         "image_info": [_image("/img/moon.jpg", 1), _image("/doc/comet.jpg", 2), _image("/img/hubble_deep_field.jpg", 3)]},
        {"url": f"{BLOG}/the-cat-next-door", "text_list": [
            "The cat from next door visits every afternoon and sits on our garden wall for hours.",
            "a tabby cat looking at the camera",
            "Here is the same picture again, shared by the neighbours on the street's noticeboard."],
         "image_info": [_image("/img/chelsea.jpg", 1), _image("/doc/chelsea-shared.jpg", 2)]},
        {"url": f"{BLOG}/coffee", "text_list": ["a cup of coffee on a saucer"],
         "image_info": [_image("/img/coffee.jpg", 0)]},
        {"url": f"{BLOG}/lost-photo", "text_list": [
            "The only photograph of the old harbour we ever had was on a server that no longer answers."],
         "image_info": [_image("/doc/harbour.jpg", 0)]},
        '{"url": "https://blog.mmcurate.test/broken", "text_list": ["a line cut short"',
        {"url": "https://school.mmcurate.test/shapes", "text_list": [
            "Today's lesson: name each shape and its colour, then draw one of your own on the back.",
            *(pair.caption for pair in lesson)],
         "image_info": [_image(f"/doc/shape-{i}.png", i + 1) for i in range(len(lesson))]},
    ]


def write_documents(lines: list[dict | str], folder: Path) -> str:
    """The documents as MMC4 JSONL in `folder`; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "documents.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def documents_config(pairs_config: dict, input_path: str) -> dict:
    """The pairs' pipeline over the documents: the same models and guards, CLIP scoring without a
    cut, no teacher, and the documents' own exports."""
    config = {k: v for k, v in pairs_config.items() if k != "synthesis"}
    return {**config, "input": {"path": input_path, "format": "mmc4", "shard_size": 25},
            "clip": {**pairs_config["clip"], "min_score": None},
            "export": {"formats": ["mmc4", "obelics", "webdataset"]}}


class Prefixed:
    """The documents run's progress events, its stages named `docs/<stage>` beside the pairs'."""

    def __init__(self, progress):
        self.progress = progress

    def begin(self, stage: str, total: int, done: int) -> None:
        self.progress.begin(f"{PREFIX}{stage}", total, done)

    def advance(self, stage: str, stats: dict) -> None:
        self.progress.advance(f"{PREFIX}{stage}", stats)

    def end(self, stage: str) -> None:
        self.progress.end(f"{PREFIX}{stage}")
