"""`mmcurate demo`: the embedded sample runs end to end offline and every part answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _stats_files(run_dir):
    """Every stage's stats files, the documents run's (documents/stages/) too."""
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("stages/**/*.stats.json")}


def _holding(run_dir: Path, secret: str) -> list[str]:
    """The files of a run dir that hold `secret`: in their bytes, or in a parquet file's values (the
    demo's input, which the demo writes there, aside)."""
    found = []
    for path in (p for p in run_dir.rglob("*") if p.is_file() and "demo-input" not in p.parts):
        held = secret.encode() in path.read_bytes()
        if path.suffix == ".parquet":
            held = held or secret in json.dumps(pq.read_table(path).to_pylist(), default=repr)
        if held:
            found.append(str(path.relative_to(run_dir)))
    return found


def test_demo_end_to_end(demo_run):
    run_dir, proc = demo_run
    # quiet is quiet: none of Ray's or datasets' lines
    for noise in ("core_worker", "max_restarts", "UserWarning", "examples/s", "Generating train split"):
        assert noise not in proc.stderr, proc.stderr
    # the same command again resumes: nothing redone, the same numbers (the URLs name no port), a
    # line per stage saying so
    made = _stats_files(run_dir)
    again = run_cli("demo", "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr
    assert _stats_files(run_dir) == made
    assert again.stdout.splitlines()[1] == proc.stdout.splitlines()[1]  # the ledger's line
    assert [x for x in again.stdout.splitlines() if x.startswith("documents:")] == [
        x for x in proc.stdout.splitlines() if x.startswith("documents:")]
    lines = again.stderr.splitlines()
    # not quiet: mmcurate's own progress lines only (Ray's, datasets' and warnings' are kept out unless -v)
    assert all(re.match(r"\S+ +\d+/\d+ +shards ", line) for line in lines), again.stderr
    assert [line.split()[0] for line in lines if "done in an earlier run" in line][:3] == ["ingest", "download", "quality"]
    assert sum(line.startswith("download ") for line in lines) == 1, again.stderr
    assert any(re.match(r"docs/download +1/1 +shards +done in an earlier run", line) for line in lines), again.stderr
    assert f"report:  {run_dir / 'report' / 'index.html'}" in proc.stdout
    ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(ledger) == manifest["input"]["rows"] == manifest["ledger"]["rows"]
    reasons = {r["reason"] for r in ledger if r["status"] != "kept"}
    reference = (Path(__file__).resolve().parents[1] / "docs" / "reference.md").read_text()
    assert {r for r in reasons if f"`{r}`" not in reference and not r.startswith("http_")} == set()  # each is documented
    assert {"http_404", "http_500", "not_an_image", "image_too_large", "timeout", "redirect_loop",
            "robots_disallowed", "private_address", "unsupported_scheme", "missing_url",
            "credentials_in_url", "malformed_row", "low_clip_score", "near_duplicate",
            "filename_caption", "generic_caption", "toxic_caption"} <= reasons
    # the photos captioned with another photo's caption are caught; the sample's photos pass
    by_url = {r["url"].split("/img/")[-1]: r for r in ledger if "images.mmcurate.test" in (r["url"] or "")
              and "/img/" in r["url"]}
    assert by_url["coffee-mirrored.jpg"]["reason"] == by_url["rocket-mirrored.jpg"]["reason"] == "low_clip_score"
    assert by_url["moon.jpg"]["status"] == by_url["chelsea.jpg"]["status"] == "kept"
    shape_rows = [r for r in ledger if "/shapes/" in (r["url"] or "")]
    assert sum(r["reason"] == "low_clip_score" for r in shape_rows) >= len(shape_rows) // 3 - 2
    # safety and privacy: a profane caption dropped, an e-mail redacted, a face blurred
    assert by_url["coins-part1.webp"]["reason"] == "toxic_caption"
    assert "caption redacted: email" in by_url["coffee-part0.png"]["detail"]
    astronauts = [r for r in ledger if r["status"] == "kept" and "astronaut" in (r["url"] or "")]
    assert any(r["scores"]["faces"] >= 1 for r in astronauts)
    assert all("face(s) blurred" in r["detail"] for r in ledger if r["status"] == "kept" and r["scores"]["faces"])
    kept = [r for r in ledger if r["status"] == "kept"]
    assert len(kept) >= 60
    assert list((run_dir / "shards" / "webdataset").glob("*.tar"))
    import datasets

    assert datasets.load_from_disk(str(run_dir / "shards" / "hf")).num_rows == len(kept)
    audit = run_cli("audit", str(run_dir), "--reason", "private_address", "--format", "json")
    refused = json.loads(audit.stdout)[0]
    assert refused["url"] == "http://alias.mmcurate.test/img/astronaut.jpg" and "127.0.0.2 is a loopback" in refused["detail"]
    # no credentials at rest: the url with a password is stored, and shown, masked
    assert [f for s in ("user:secret@", "secret@example", "secret%40example") for f in _holding(run_dir, s)] == []
    shown = json.loads(run_cli("audit", str(run_dir), "--reason", "credentials_in_url", "--format", "json").stdout)
    assert [r["url"] for r in shown] == ["http://user:***@example.com/a.jpg"]
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["invariant_holds"] and report["rows"] == len(ledger)
    # synthesis against the stand-in teacher: a record per kept sample and task, llava.json loads
    llava = json.loads((run_dir / "instructions" / "llava.json").read_text())
    assert report["synthesis"]["records"] == 3 * len(kept) and len(llava) == report["synthesis"]["llava_records"] > 0
    assert "stand-in teacher" in proc.stdout


def test_demo_documents(demo_run):
    """The demo's MMC4 documents, run after the pairs in RUN/documents/: each shows a rule of the
    documents ledger, and the run's own exports hold one record per kept document."""
    import datasets
    import webdataset as wds

    run_dir, proc = demo_run
    docs_dir = run_dir / "documents"
    assert (f"documents: 6 = 3 kept + 2 dropped + 1 failed (MMC4 documents, run in {docs_dir}; "
            "exported to its shards/mmc4, obelics, webdataset)") in proc.stdout
    docs = pq.read_table(docs_dir / "documents.parquet").to_pylist()
    assert [(d["status"], d["reason"], d["images_in"], d["images_kept"]) for d in docs] == [
        ("kept", None, 3, 2), ("kept", None, 2, 1), ("dropped", "too_few_words", 1, 1),
        ("dropped", "too_few_images", 1, 0), ("failed", "malformed_row", 0, 0), ("kept", None, 2, 2)]
    assert docs[0]["detail"] == "1 of 3 images removed (1 http_404)"  # its text stays: in the exports below
    assert docs[1]["detail"] == "1 of 2 images removed (1 exact_duplicate)"  # the same picture under two URLs
    manifest = json.loads((docs_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["input"]["rows"] == 9
    assert {k: manifest["documents"][k] for k in ("documents", "kept", "dropped", "failed")} == {
        "documents": 6, "kept": 3, "dropped": 2, "failed": 1}
    assert {f: e["rows"] for f, e in manifest["exports"].items()} == {"mmc4": 3, "obelics": 3, "webdataset": 3}
    urls = ["https://blog.mmcurate.test/night-sky", "https://blog.mmcurate.test/the-cat-next-door",
            "https://school.mmcurate.test/shapes"]
    mmc4 = [json.loads(line) for p in sorted((docs_dir / "shards" / "mmc4").glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert [d["url"] for d in mmc4] == urls and [len(d["text_list"]) for d in mmc4] == [5, 3, 3]
    assert all((docs_dir / "shards" / "mmc4" / "images" / i["image_name"]).is_file() for d in mmc4 for i in d["image_info"])
    obelics = datasets.load_from_disk(str(docs_dir / "shards" / "obelics"))
    assert [json.loads(m)["url"] for m in obelics["general_metadata"]] == urls
    tars = sorted(str(p) for p in (docs_dir / "shards" / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False))  # one sample per kept document, its images members of it
    assert [json.loads(s["json"])["url"] for s in samples] == urls
    assert [sum(n is not None for n in json.loads(s["json"])["images"]) for s in samples] == [2, 1, 2]


def test_noise_filter_drops_library_lines_and_keeps_errors():
    from mmcurate.cli.console import NoiseFilter

    lines = {
        b"[2025-06-01 12:00:00,123 E 1234 5678] core_worker.cc:2543: Actor with class name: 'MapWorker' and ID: "
        b"'ab' has constructor arguments in the object store and max_restarts > 0.\n": False,
        b"\x1b[36m(MapWorker(MapBatches(f)) pid=1234)\x1b[0m [2025-06-01 12:00:00,123 I 1 2] core_worker.cc:9: hi\n": False,
        b"[2025-06-01 12:00:00,123 W 1234 5678] core_worker.cc:99: a warning\n": False,
        b"2025-06-01 12:00:00,123\tWARNING worker.py:123 -- a note for Ray's developers\n": False,
        b"Generating train split: 100 examples [00:00, 1234.56 examples/s]\n": False,
        b"(pid=9) /venv/lib/python3.11/site-packages/torch/x.py:12: UserWarning: something\n": False,
        b"(pid=9)   warnings.warn(\n": False,
        b"(raylet) [2025-06-01 12:00:00,123 E 1234 5678] raylet.cc:1: a worker died\n": True,
        b"2025-06-01 12:00:00,123\tERROR worker.py:123 -- Unhandled error (suppress with ...)\n": True,
        b"Traceback (most recent call last):\n": True,
        b'  File "x.py", line 1, in <module>\n': True,
        b"mmcurate: error: RayTaskError(ValueError): ray::task() (pid=7)\n": True,
        b"download                6/6      shards         126 rows          6 rows/s\n": True,
    }
    noise = NoiseFilter()
    assert {line: noise.keep(line) for line in lines} == lines
