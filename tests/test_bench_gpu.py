"""bench/gpu.sh's CPU path: every row of its table is measured or says why it is skipped, offline."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmcurate.demo.shapes import MODEL_CFG

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("CLIP local-dir:{clip}: end to end", "CLIP local-dir:{clip}: forward only", "decode: PIL",
        "decode: torchvision decode_jpeg, batched", "NSFW head (clip_head) on embeddings",
        "NSFW head on embeddings, module on CUDA", "NSFW: NudeNet 320n", "faces: CenterFace", "toxicity: detoxify")


def tiny_clip(folder: Path) -> Path:
    """An open_clip folder (the demo's tiny architecture, random weights), as `local-dir:` loads it."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    torch.manual_seed(0)
    model = open_clip.CLIP(**MODEL_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    preprocess = {"size": MODEL_CFG["vision_cfg"]["image_size"], "mean": [0.5] * 3, "std": [0.5] * 3}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": preprocess}))
    return folder


def dummy_wheel(folder: Path) -> Path:
    """A one-module wheel, written by hand: what `--wheels` installs."""
    import zipfile

    folder.mkdir()
    path = folder / "benchdummy-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("benchdummy.py", "X = 1\n")
        whl.writestr("benchdummy-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: benchdummy\nVersion: 0.1\n")
        whl.writestr("benchdummy-0.1.dist-info/WHEEL",
                     "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("benchdummy-0.1.dist-info/RECORD", "")
    return folder


def table(out: str) -> dict[str, list[str]]:
    """The markdown table's rows by name: [device, images/s, ratio or note]."""
    rows = [line.strip("|").split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--quick", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    from tests.filters.test_toxicity import build_tiny_detoxify

    tmp = tmp_path_factory.mktemp("bench-gpu")
    bert = tmp / "tiny-bert"
    return tiny_clip(tmp / "clip"), build_tiny_detoxify(bert, str(bert)), bert


def test_quick_cpu_run_prints_every_row(models):
    """With every component installed, every row but the CUDA ones is measured; nothing goes online."""
    clip, checkpoint, bert = models
    proc = run("--models", f"local-dir:{clip}", "--toxicity-checkpoint", str(checkpoint),
               "--toxicity-config", str(bert))
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)
    names = [r.format(clip=clip) for r in ROWS]
    for name in names:
        assert any(row.startswith(name) for row in rows), f"{name} missing from\n{proc.stdout}"
    for row, (device, speed, note) in rows.items():
        if "CUDA" in row or "cuda" in device:
            assert note == "skipped: no CUDA device", row
        else:
            assert re.fullmatch(r"[\d,]+(\.\d)?", speed) and float(speed.replace(",", "")) > 0, (row, speed, note)
    assert re.search(r"\*\*\d\.\d\d×\*\* forward-only", rows[names[0]][2])
    assert "network: no connection attempted" in proc.stdout


def test_bare_machine_skips_what_is_missing(models, tmp_path):
    """Where pyarrow is missing (a bare GPU image), CLIP and decoding still run; the filter-module
    rows say why they are skipped instead of failing. Carried wheels are installed first."""
    clip, _, _ = models
    (tmp_path / "pyarrow.py").write_text("raise ImportError(\"No module named 'pyarrow'\")\n")
    wheels = dummy_wheel(tmp_path / "wheels")
    proc = run("--models", f"local-dir:{clip}", "--wheels", str(wheels), env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert f"wheels carried: 1 wheels from {wheels}" in proc.stdout
    rows = table(proc.stdout)
    assert float(rows[f"CLIP local-dir:{clip}: end to end"][1]) > 0
    for name in ("NSFW head (clip_head) on embeddings", "NSFW: NudeNet 320n", "faces: CenterFace",
                 "toxicity: detoxify original"):
        assert rows[name][2].startswith("skipped: No module named 'pyarrow'"), (name, rows[name])


def test_detoxify_without_cached_weights_is_skipped(tmp_path, monkeypatch, tripwire):
    """No released checkpoint in torch hub's cache and none given: skipped, never downloaded."""
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MMCURATE_CACHE", str(tmp_path / "cache"))
    args = bench.argparse.Namespace(toxicity="original", toxicity_checkpoint=None, toxicity_config=None,
                                    captions=4, seconds_per_row=0.0)
    with pytest.raises(bench.Skip, match="no weights offline"):
        bench.toxicity_row(args, "cpu", ["a red square"])
