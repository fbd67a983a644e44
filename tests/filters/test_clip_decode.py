"""`clip.decode`: the device path (decode_jpeg + preprocessing on a tensor) against open_clip's PIL
path, its CPU fallback, and the refusals. The device path runs here on the CPU; on CUDA the same
code runs with device="cuda" (nvjpeg), which only a GPU machine checks (bench/gpu.py)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mmcurate.demo import shapes
from mmcurate.filters.clip_decode import decode_jpegs, is_whole_jpeg, prepare_on_device, preprocess_tensor
from mmcurate.filters.clip_score import ClipScorer, Weights, pick_decode, resolve_weights
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.errors import ConfigError, ModelError
from mmcurate.stages.base import Cluster
from mmcurate.stages.clip_embed import ClipEmbedStage
from tests.conftest import make_image, run_cli


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpegs() -> list[bytes]:
    """Shapes pictures at sizes that resize down, up and crop both ways; a greyscale and a CMYK JPEG."""
    pictures = [p.image for p in shapes.pairs(6, seed=77, size=160)]
    sizes = [(160, 160), (211, 97), (83, 240), (48, 40), (640, 480), (65, 64)]
    out = [jpeg(im.resize(size, Image.BICUBIC)) for im, size in zip(pictures, sizes)]
    return out + [jpeg(pictures[0].convert("L")), jpeg(pictures[1].convert("CMYK"))]


@pytest.fixture(scope="module")
def scorer(shapes_clip) -> ClipScorer:
    model_dir, _ = shapes_clip
    s = ClipScorer(resolve_weights(f"local-dir:{model_dir}", None), "cpu", batch_size=4, decode="cpu")
    s.load()
    return s


def no_fallback(data: bytes):
    raise AssertionError("a JPEG went to the CPU path")


def test_device_preprocessing_matches_open_clip(scorer):
    """Tensor path (decode_jpeg, resize, crop, normalise with the model's mean/std) ~ PIL path."""
    images = jpegs()
    cpu = scorer._prepare(images)
    device = prepare_on_device(images, scorer.preprocess_cfg, "cpu", no_fallback)
    assert all(err is None for _, err in cpu + device)
    for (a, _), (b, _) in zip(cpu, device):
        assert a.shape == b.shape == (3, 64, 64)
        assert float((a - b).abs().mean()) < 0.01  # normalised units (std 0.5): 1/400 of the range
    emb_cpu, _ = scorer.encode([t for t, _ in cpu], ["a red circle"] * len(images))
    emb_dev, _ = scorer.encode([t for t, _ in device], ["a red circle"] * len(images))
    cosines = (emb_cpu * emb_dev).sum(-1)
    assert cosines.min() >= 0.99, cosines


@pytest.mark.parametrize("cfg", [
    {"size": 64, "resize_mode": "shortest", "interpolation": "bilinear"},
    {"size": (48, 80), "resize_mode": "shortest"},
    {"size": 64, "resize_mode": "longest", "fill_color": 128},
    {"size": (40, 56), "resize_mode": "squash"},
    {"size": 224, "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)},
])
def test_every_resize_mode_matches_open_clips_transform(cfg):
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision.io import decode_jpeg

    pp = PreprocessCfg(**cfg)
    transform = image_transform_v2(pp, is_train=False)
    for data in (make_image(3, (211, 97)), make_image(4, (90, 300))):
        with Image.open(io.BytesIO(data)) as im:
            want = transform(im.convert("RGB"))
        got = preprocess_tensor(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)), pp)
        assert got.shape == want.shape and float((got - want).abs().mean()) < 0.02, cfg


def test_other_formats_and_bad_files_take_the_cpu_path(scorer):
    """A PNG, bytes that are no image, a JPEG that fails to decode and a truncated JPEG, in one
    batch with JPEGs: only the JPEGs decode on the device; the PNG decodes on CPU, the rest fail."""
    good = jpegs()[:2]
    png = shapes.png(shapes.pairs(1, seed=3)[0].image)
    garbage = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"  # JPEG by its magic bytes only
    truncated = good[0][: len(good[0]) // 2]
    batch = [good[0], png, b"not an image", garbage, truncated, good[1]]
    assert [is_whole_jpeg(b) for b in batch] == [True, False, False, True, False, True]
    assert [t is None for t in decode_jpegs(batch, "cpu")] == [False, True, True, True, True, False]

    seen = []

    def fallback(data: bytes):
        seen.append(data)
        return scorer._decode(data)

    out = prepare_on_device(batch, scorer.preprocess_cfg, "cpu", fallback)
    assert seen == [png, b"not an image", garbage, truncated]
    assert [t is not None for t, _ in out] == [True, True, False, False, False, True]
    assert all(err for _, err in out[2:5]) and out[0][1] is None and out[1][1] is None


def test_stage_on_the_device_path_scores_as_the_cpu_path(shapes_clip, scorer):
    """The stage with its scorer on the device path (forced here, on a CPU): the same verdicts, an
    undecodable file is still `undecodable_image`, scores within resampling noise."""
    model_dir, card = shapes_clip
    config = config_from_dict({"input": {"path": "x"}, "clip": {"model": f"local-dir:{model_dir}", "batch_size": 4}})
    pairs = shapes.pairs(5, seed=11, size=150)
    images = [jpeg(p.image) for p in pairs[:4]] + [b"\xff\xd8\xff broken", shapes.png(pairs[4].image)]
    table = pa.table({C.UID: list("abcdef"), C.ROW: list(range(6)), C.IMAGE: images,
                      C.CAPTION: [p.caption for p in pairs[:4]] + ["x", pairs[4].caption]})
    outs = {}
    for decode in ("cpu", "gpu"):
        stage = ClipEmbedStage(config)
        stage.prepare()
        stage.scorer = scorer
        scorer.decode = decode  # "gpu" on a CPU: the device path with device="cpu"
        try:
            outs[decode] = stage.process(table)
        finally:
            scorer.decode = "cpu"
    cpu, gpu = outs["cpu"], outs["gpu"]
    assert gpu[C.STATUS].to_pylist() == cpu[C.STATUS].to_pylist() == ["kept"] * 4 + ["failed", "kept"]
    assert gpu[C.REASON][4].as_py() == "undecodable_image"
    a = np.array(cpu[C.CLIP_SCORE].to_pylist()[:4] + cpu[C.CLIP_SCORE].to_pylist()[5:])
    b = np.array(gpu[C.CLIP_SCORE].to_pylist()[:4] + gpu[C.CLIP_SCORE].to_pylist()[5:])
    assert np.abs(a - b).max() < 0.02 and gpu[C.CLIP_SCORE][5].as_py() == cpu[C.CLIP_SCORE][5].as_py()


def test_gpu_decode_without_cuda_is_a_config_error(tmp_path):
    assert pick_decode("auto", "cuda") == "gpu" and pick_decode("auto", "cpu") == "cpu"
    assert pick_decode("cpu", "cuda") == "cpu"
    with pytest.raises(ModelError) as err:
        ClipScorer(Weights("ViT-B-32", None, None, None), "cpu", decode="gpu").load()  # before any weights load
    assert err.value.key == "clip.decode" and err.value.exit_code == 2
    auto = ClipEmbedStage(config_from_dict({"input": {"path": "x"}, "clip": {"decode": "gpu"}}))
    with pytest.raises(ConfigError, match=r"^clip.decode: gpu, but clip runs on CPU"):
        auto.resources(Cluster(cpus=8, gpus=0, node_cpus=8))
    assert auto.resources(Cluster(cpus=8, gpus=2, node_cpus=8)).num_gpus == 1
    cpu = ClipEmbedStage(config_from_dict({"input": {"path": "x"}, "clip": {"decode": "gpu", "device": "cpu"}}))
    with pytest.raises(ConfigError, match=r"^clip.decode: gpu decodes on the CUDA device, but clip.device is cpu"):
        cpu.prepare()
    with pytest.raises(ConfigError, match="clip.decode"):
        cpu.resources(Cluster(cpus=8, gpus=2, node_cpus=8))


def test_decode_is_no_part_of_the_fingerprint_and_is_recorded(shapes_clip):
    model_dir, _ = shapes_clip
    prints, plans = set(), []
    for decode in ("auto", "cpu", "gpu"):
        stage = ClipEmbedStage(config_from_dict({"input": {"path": "x"},
                                                 "clip": {"model": f"local-dir:{model_dir}", "decode": decode}}))
        plans.append(stage.prepare()["decode"])
        prints.add(stage.fingerprint("up"))
    assert len(prints) == 1
    assert plans == ["auto: gpu (JPEGs; other formats on cpu) on CUDA workers, else cpu", "cpu",
                     "gpu (JPEGs; other formats on cpu)"]


@pytest.mark.slow
def test_run_with_gpu_decode_on_cpu_exits_2(tmp_path):
    (tmp_path / "u.jsonl").write_text('{"url": "http://127.0.0.1:9/a.jpg", "caption": "a"}\n')
    config = {"input": {"path": str(tmp_path / "u.jsonl")}, "clip": {"device": "cpu", "decode": "gpu"}}
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(config))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "clip.decode: gpu" in proc.stderr, proc.stderr
