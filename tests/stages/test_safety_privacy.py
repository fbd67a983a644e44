"""Safety and privacy through `mmcurate run`: toxic captions and faces and PII, as users run them."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from skimage import data

from mmcurate.demo.server import ImageServer, Route
from mmcurate.filters import faces
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def jpeg(name: str) -> bytes:
    img = getattr(data, name)()
    buf = io.BytesIO()
    Image.fromarray(img if img.ndim == 3 else np.stack([img] * 3, -1)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


ROWS = {  # path -> (photo, caption)
    "/astronaut.jpg": ("astronaut", "an astronaut in front of a flag"),
    "/coffee.jpg": ("coffee", "a cup of coffee, prints from jane.doe@example.com or +1 202-555-0143"),
    "/brick.jpg": ("brick", "what a fucking ugly wall, shit bricks"),
    "/rocket.jpg": ("rocket", "a rocket on its launch pad"),
    "/chelsea.jpg": ("chelsea", "a tabby cat"),
}


@pytest.fixture(scope="module")
def safety_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    routes = {path: Route(jpeg(photo)) for path, (photo, _) in ROWS.items()}
    with ImageServer(routes) as server:
        lines = [{"url": server.url(path), "caption": caption} for path, (_, caption) in ROWS.items()]
        (tmp / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {
            "input": {"path": str(tmp / "in.jsonl"), "shard_size": 3},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0},
            "clip": {"enabled": False},
            "safety": {"toxicity": {"model": "profanity-check"}},
            "export": {"formats": ["webdataset", "parquet"]},
        }
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))
        proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet")
        assert proc.returncode == 0, proc.stderr
        yield tmp, server


def by_path(run_dir):
    return {r["url"].rsplit("/", 1)[-1]: r for r in pq.read_table(run_dir / "ledger.parquet").to_pylist()}


def test_toxic_caption_dropped_with_its_class_and_score(safety_run):
    tmp, _ = safety_run
    rows = by_path(tmp / "run")
    brick = rows["brick.jpg"]
    assert (brick["status"], brick["stage"], brick["reason"]) == ("dropped", "safety", "toxic_caption")
    assert "(profanity) > 0.5" in brick["detail"] and brick["scores"]["toxicity"] > 0.9
    # every row that reached the stage has both scores, dropped or not (re-thresholding needs them)
    assert all(r["scores"]["toxicity"] is not None and r["scores"]["nsfw"] is not None for r in rows.values())
    assert max(r["scores"]["nsfw"] for r in rows.values()) < 0.5
    manifest = json.loads((tmp / "run" / "manifest.json").read_text())
    assert manifest["models"]["safety"]["nsfw"]["model"] == "nudenet-320n"
    assert manifest["models"]["privacy"]["faces"]["detector"] == "centerface"


def test_pii_redacted_in_exports_and_said_in_the_ledger(safety_run):
    tmp, _ = safety_run
    coffee = by_path(tmp / "run")["coffee.jpg"]
    assert coffee["status"] == "kept" and coffee["detail"] == "caption redacted: email, phone"
    assert coffee["scores"]["pii_types"] == ["email", "phone"] and coffee["scores"]["pii_action"] == "redacted"
    assert "jane.doe@example.com" in coffee["caption"]  # the ledger records the input as given
    exported = [r for f in sorted((tmp / "run" / "shards" / "parquet").glob("*.parquet"))
                for r in pq.read_table(f).to_pylist()]
    redacted = "a cup of coffee, prints from [EMAIL] or [PHONE]"
    assert [r["caption"] for r in exported if r["uid"] == coffee["uid"]] == [redacted]
    texts = []
    for tar_path in sorted((tmp / "run" / "shards" / "webdataset").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            texts += [tar.extractfile(m).read().decode() for m in tar.getmembers() if not m.name.endswith(".jpg")]
    assert any(redacted in t for t in texts)
    assert not any("jane.doe@example.com" in t or "202-555-0143" in t for t in texts)


def test_faces_blurred_and_the_original_never_exported(safety_run):
    tmp, _ = safety_run
    rows = by_path(tmp / "run")
    astro = rows["astronaut.jpg"]
    assert astro["status"] == "kept" and astro["detail"] == "1 face(s) blurred"
    assert astro["scores"]["faces"] == 1 and len(astro["scores"]["face_boxes"]) == 1
    assert all(rows[p]["scores"]["faces"] == 0 for p in ("rocket.jpg", "chelsea.jpg"))
    downloaded = [r for f in sorted((tmp / "run" / "stages" / "download").glob("*.parquet"))
                  for r in pq.read_table(f).to_pylist()]
    original = next(r["image"] for r in downloaded if r["uid"] == astro["uid"])
    exported = {r["uid"]: r for r in [r for f in sorted((tmp / "run" / "shards" / "parquet").glob("*.parquet"))
                for r in pq.read_table(f).to_pylist()]}
    stored = exported[astro["uid"]]["image"]
    assert stored != original
    tar_bytes = b"".join(p.read_bytes() for p in (tmp / "run" / "shards" / "webdataset").glob("*.tar"))
    assert original not in tar_bytes and stored in tar_bytes
    # the face is gone from what is exported: the detector no longer finds it there
    detector = faces.FaceDetector(*faces.resolve("centerface", None))
    before = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"))
    after = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
    assert len(detector.detect(before)) == 1 and detector.detect(after) == []
    # images without faces are exported as downloaded
    rocket = rows["rocket.jpg"]
    assert exported[rocket["uid"]]["image"] == next(r["image"] for r in downloaded if r["uid"] == rocket["uid"])


def test_drop_actions_redo_only_the_privacy_stage(safety_run):
    tmp, server = safety_run
    before = sum(server.requests.values())
    proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet", "--force",
                   "--set", "privacy.faces.action=drop", "--set", "privacy.pii.action=drop")
    assert proc.returncode == 0, proc.stderr
    assert sum(server.requests.values()) == before  # nothing downloaded again
    rows = by_path(tmp / "run")
    assert (rows["astronaut.jpg"]["reason"], rows["coffee.jpg"]["reason"]) == ("contains_face", "contains_pii")
    assert rows["astronaut.jpg"]["stage"] == rows["coffee.jpg"]["stage"] == "privacy"
    ledger = json.loads((tmp / "run" / "manifest.json").read_text())["ledger"]
    assert ledger["rows"] == len(ROWS) == ledger["kept"] + ledger["dropped"] + ledger["failed"]
