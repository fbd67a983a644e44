"""NSFW: NudeNet's 320n model, batched through onnxruntime, agrees with NudeNet's own detector."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data

nudenet = pytest.importorskip("nudenet")

from mmcurate.filters.nsfw import EXPOSED, NsfwDetector

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "brick")


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def generated(i: int) -> bytes:
    """Skin-toned blobs and gradients: the kind of image a detector may be unsure about."""
    rng = np.random.default_rng(i)
    img = Image.new("RGB", (224 + 16 * i, 200), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.integers(0, 200, 2)
        draw.ellipse((int(x), int(y), int(x) + 60, int(y) + 80), fill=(224, 172, 105))
    return jpeg(np.asarray(img))


@pytest.fixture(scope="module")
def detector():
    return NsfwDetector(batch_size=4)


def test_bundled_photos_are_not_nsfw(detector):
    images = [jpeg(getattr(data, name)()) for name in PHOTOS]
    results = detector.score(images)
    assert all(r.error is None for r in results)
    assert max(r.score for r in results) < 0.5, [(n, r.score, r.top) for n, r in zip(PHOTOS, results)]


def test_batched_scores_match_nudenets_own_detector(detector):
    images = [generated(i) for i in range(6)] + [jpeg(data.astronaut()), b"not an image"]
    ours = detector.detections(images)
    reference = nudenet.NudeDetector()
    for data_bytes, found in zip(images[:-1], ours[:-1]):
        theirs = reference.detect(data_bytes)
        assert [(d["class"], d["box"]) for d in found] == [(d["class"], d["box"]) for d in theirs]
        assert np.allclose([d["score"] for d in found], [d["score"] for d in theirs], atol=1e-4)
    assert isinstance(ours[-1], str)  # undecodable: an error, not a crash
    scored = detector.score(images)
    for found, result in zip(ours[:-1], scored[:-1]):
        exposed = [d["score"] for d in found if d["class"] in EXPOSED]
        assert result.score == pytest.approx(max(exposed, default=0.0))
    assert scored[-1].score is None and scored[-1].error
