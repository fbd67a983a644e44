"""NSFW images: NudeNet's 320n detector (its ONNX file ships in the `nudenet` wheel), batched.

The score of an image is the highest confidence among the detector's exposed-body classes
(covered parts, faces, feet and bellies do not count); `top` names the class. NudeNet is an
optional extra (`pip install 'mmcurate[nsfw]'`): its wheel carries an AGPL licence file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmcurate.filters.images import decode_rgb

EXPOSED = frozenset({
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
})
INPUT_SIZE = 320


def default_weights() -> str:
    """The 320n model inside the installed `nudenet` wheel (ImportError when it is not installed)."""
    import importlib.resources

    import nudenet  # noqa: F401 - the extra must be installed

    return str(importlib.resources.files("nudenet") / "320n.onnx")


@dataclass
class NsfwResult:
    score: float | None  # None when the image could not be decoded
    top: str | None
    error: str | None = None


class NsfwDetector:
    """Scores images in batches through onnxruntime, with NudeNet's own pre- and post-processing."""

    def __init__(self, weights: str | None = None, batch_size: int = 16):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        options = onnxruntime.SessionOptions()
        self.session = onnxruntime.InferenceSession(
            weights or default_weights(), options, providers=onnxruntime.get_available_providers()
        )
        self.input = self.session.get_inputs()[0].name
        self.batch_size = batch_size

    def detections(self, images: Sequence[bytes | None]) -> list[list[dict] | str]:
        """NudeNet's detections per image (class, score, box), or an error string."""
        import cv2
        from nudenet.nudenet import _postprocess, _read_image

        out: list[list[dict] | str] = ["not decoded"] * len(images)
        decoded = []
        for i, data in enumerate(images):
            try:
                decoded.append((i, cv2.cvtColor(decode_rgb(data), cv2.COLOR_RGB2BGR)))
            except Exception as err:  # noqa: BLE001 - any undecodable image is a failed row
                out[i] = f"cannot decode image: {err}"
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start:start + self.batch_size]
            blobs = [_read_image(img, INPUT_SIZE) for _, img in chunk]
            raw = self.session.run(None, {self.input: np.vstack([b[0] for b in blobs])})[0]
            for j, ((i, _), (_, x_ratio, y_ratio, x_pad, y_pad, w, h)) in enumerate(zip(chunk, blobs)):
                out[i] = _postprocess([raw[j:j + 1]], x_pad, y_pad, x_ratio, y_ratio, w, h, INPUT_SIZE, INPUT_SIZE)
        return out

    def score(self, images: Sequence[bytes | None]) -> list[NsfwResult]:
        results = []
        for found in self.detections(images):
            if isinstance(found, str):
                results.append(NsfwResult(None, None, found))
                continue
            exposed = [d for d in found if d["class"] in EXPOSED]
            best = max(exposed, key=lambda d: d["score"], default=None)
            results.append(NsfwResult(float(best["score"]) if best else 0.0, best["class"] if best else None))
        return results
