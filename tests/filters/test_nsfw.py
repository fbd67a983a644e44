"""NSFW: NudeNet's 320n model, batched through onnxruntime at each image's stored size, agrees with
NudeNet's own detector at 320; where a worker's models run (threads, CUDA provider, torch device)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data

from mmcurate.filters import hardware

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "brick")


def jpeg(array: np.ndarray, size: int | None = None) -> bytes:
    img = Image.fromarray(array).convert("RGB")
    if size:
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
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


def nudenet_320(detector, images: list[bytes], batch_size: int = 16) -> list[list[dict]]:
    """The former path, for comparison (here and in bench/safety.py): NudeNet's own reader (padded
    to a square, resized to 320) and its per-candidate Python post-processing, in batches of 16,
    through `detector`'s session."""
    import cv2
    from nudenet.nudenet import _postprocess, _read_image

    from mmcurate.filters.images import decode_rgb

    out = []
    for start in range(0, len(images), batch_size):
        blobs = [_read_image(cv2.cvtColor(decode_rgb(b), cv2.COLOR_RGB2BGR), 320) for b in images[start:start + batch_size]]
        raw = detector.session.run(None, {detector.input: np.vstack([b[0] for b in blobs])})[0]
        out += [_postprocess([raw[j:j + 1]], x_pad, y_pad, x_ratio, y_ratio, w, h, 320, 320)
                for j, (_, x_ratio, y_ratio, x_pad, y_pad, w, h) in enumerate(blobs)]
    return out


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("nudenet")
    from mmcurate.filters.nsfw import NsfwDetector

    return NsfwDetector(batch_size=4)


def top(found: list[dict]) -> tuple[str | None, float]:
    from mmcurate.filters.nsfw import EXPOSED

    best = max((d for d in found if d["class"] in EXPOSED), key=lambda d: d["score"], default=None)
    return (best["class"], best["score"]) if best else (None, 0.0)


def test_bundled_photos_are_not_nsfw(detector):
    images = [jpeg(getattr(data, name)()) for name in PHOTOS]
    results = detector.score(images)
    assert all(r.error is None for r in results)
    assert max(r.score for r in results) < 0.5, [(n, r.score, r.top) for n, r in zip(PHOTOS, results)]


def test_square_photos_match_nudenets_own_detector(detector):
    import nudenet

    # a square image past 320 px goes in as NudeNet's reader sends it: the same detections
    images = [jpeg(getattr(data, name)()) for name in ("astronaut", "camera", "moon", "brick")]
    reference = nudenet.NudeDetector()
    for data_bytes, found in zip(images, detector.detections(images)):
        theirs = reference.detect(data_bytes)
        assert [(d["class"], d["box"]) for d in found] == [(d["class"], d["box"]) for d in theirs]
        assert np.allclose([d["score"] for d in found], [d["score"] for d in theirs], atol=1e-4)


def test_stored_size_scores_as_the_320_input_did(detector):
    images = ([generated(i) for i in range(6)] + [jpeg(getattr(data, n)()) for n in PHOTOS]
              + [jpeg(getattr(data, n)(), 256) for n in PHOTOS] + [b"not an image"])
    ours = detector.detections(images)
    for found, theirs in zip(ours[:-1], nudenet_320(detector, images[:-1])):
        (cls, score), (ref_cls, ref_score) = top(found), top(theirs)
        assert cls == ref_cls and score == pytest.approx(ref_score, abs=0.05), (found, theirs)
    assert isinstance(ours[-1], str)  # undecodable: an error, not a crash
    scored = detector.score(images)
    for found, result in zip(ours[:-1], scored[:-1]):
        assert result.score == pytest.approx(top(found)[1])
    assert scored[-1].score is None and scored[-1].error


def test_vectorised_postprocess_is_nudenets(detector):
    from nudenet.nudenet import _postprocess

    from mmcurate.filters.nsfw import postprocess

    rng = np.random.default_rng(0)
    raw = np.zeros((4 + len(detector.labels), 2100), np.float32)
    raw[:2] = rng.uniform(0, 320, (2, 2100))
    raw[2:4] = rng.uniform(5, 120, (2, 2100))
    raw[4:] = rng.uniform(0, 0.3, raw[4:].shape) ** 2 * 10  # a few hundred candidates over 0.2
    for w, h in ((480, 480), (300, 451)):  # NudeNet's reader: padded to a square of the long side
        side = max(w, h)
        theirs = _postprocess([raw[None]], side - w, side - h, side / w, side / h, w, h, 320, 320)
        ours = postprocess(raw, 320 / side, (h, w), detector.labels)
        assert len(ours) > 3 and [(d["class"], d["box"]) for d in ours] == [(d["class"], d["box"]) for d in theirs]
        assert np.allclose([d["score"] for d in ours], [d["score"] for d in theirs])


def test_threads_are_the_cpus_the_worker_was_given(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # Ray sets it to an actor's CPUs
    assert hardware.worker_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert hardware.worker_threads() == len(__import__("os").sched_getaffinity(0))
    weights = __import__("mmcurate.filters.faces", fromlist=["x"]).centerface_weights()
    if weights:
        from mmcurate.filters.faces import dynamic_centerface

        session = hardware.onnx_session(dynamic_centerface(weights), threads=2)
        assert session.get_session_options().intra_op_num_threads == 2
        assert session.get_providers() == ["CPUExecutionProvider"]


def test_cuda_provider_only_on_a_gpu_worker(monkeypatch):
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert hardware.onnx_providers(both, gpu=True) == both
    assert hardware.onnx_providers(both, gpu=False) == ["CPUExecutionProvider"]
    assert hardware.onnx_providers(["CPUExecutionProvider"], gpu=True) == ["CPUExecutionProvider"]
    import onnxruntime

    asked = []
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: both)
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda model, options, providers: asked.append(providers))
    monkeypatch.setattr(hardware, "cuda_visible", lambda: True)
    hardware.onnx_session(b"", device="auto")
    hardware.onnx_session(b"", device="cpu")  # a CPU worker on a GPU node sees the GPU: still the CPU
    monkeypatch.setattr(hardware, "cuda_visible", lambda: False)
    hardware.onnx_session(b"", device="auto")
    assert asked == [both, ["CPUExecutionProvider"], ["CPUExecutionProvider"]]


def test_torch_models_go_to_the_gpu_of_a_gpu_worker(monkeypatch, tmp_path):
    import torch

    from mmcurate.filters.embedding_head import EmbeddingHead

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.torch_device("auto") == "cuda" and hardware.torch_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.torch_device("auto") == "cpu"
    torch.save({"weight": torch.ones(1, 4), "bias": torch.zeros(1)}, tmp_path / "head.pth")
    head = EmbeddingHead(str(tmp_path / "head.pth")).to("auto")
    assert head.device == "cpu" and head.score(np.ones((2, 4), np.float32)).tolist() == [4.0, 4.0]


def test_the_safety_stage_places_its_models_where_its_actors_run(monkeypatch):
    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.base import Cluster, FilterStage
    from mmcurate.stages.safety import SafetyStage

    monkeypatch.setattr(FilterStage, "setup", lambda self: None)  # no model loads here
    stage = SafetyStage(config_from_dict({"input": {"path": "x"}}))
    nsfw = next(f for f in stage.active if f.name == "nsfw")
    assert stage.resources(Cluster(cpus=8, gpus=1, node_cpus=8)).num_gpus == 1 and stage.gpu
    stage.setup()
    assert nsfw.device == "auto"  # detoxify's GPU actor: NudeNet on its GPU too
    assert stage.resources(Cluster(cpus=8, gpus=0, node_cpus=8)).num_gpus == 0 and not stage.gpu
    stage.setup()
    assert nsfw.device == "cpu"
    cpu = SafetyStage(config_from_dict({"input": {"path": "x"}, "safety": {"toxicity": {"device": "cpu"}}}))
    assert cpu.resources(Cluster(cpus=8, gpus=1, node_cpus=8)).num_gpus == 0 and not cpu.gpu
