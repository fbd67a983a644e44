"""Sign-off of `mmcurate audit` on the demo run (every stage on): every format of every mode
parses, --explain tells the whole story alike as text, JSON and CSV, and --dump writes the images
behind a decision, an NSFW row's only when asked."""

from __future__ import annotations

import csv
import io
import json
import shutil

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcurate.cli import main
from mmcurate.cli.audit import ledger_csv
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def audit(capsys, *args: str, code: int = 0) -> str:
    """`mmcurate audit ARGS` in this process (each call through the CLI's own entry); its stdout."""
    capsys.readouterr()
    got = main(["audit", *map(str, args)])
    out, err = capsys.readouterr()
    assert got == code, err
    return out if code == 0 else err


@pytest.fixture(scope="module")
def picks(demo_run) -> dict:
    """Demo rows to explain: a kept row with a blurred face, one with PII redacted, a duplicate,
    and an NSFW drop (None where NudeNet is not installed)."""
    rows = pq.read_table(demo_run[0] / "ledger.parquet").to_pylist()
    kept = [r for r in rows if r["status"] == "kept"]
    return {
        "face": next(r for r in kept if r["scores"]["face_action"] == "blurred"),
        "pii": next(r for r in kept if r["scores"]["pii_types"]),
        "dup": next(r for r in rows if r["reason"] in ("exact_duplicate", "near_duplicate") and r["scores"]["dup_of"]),
        "nsfw": next((r for r in rows if r["reason"] == "nsfw_image"), None),
    }


def test_every_format_of_every_mode_parses(demo_run, picks, capsys):
    run_dir, _ = demo_run
    stages = [s for s in json.loads((run_dir / "manifest.json").read_text())["stage_order"] if not s.startswith("export-")]
    modes = [[], ["--reason", picks["dup"]["reason"]], ["--sample", 7], *(["--stage", s] for s in stages)]
    for mode in modes:
        as_json = json.loads(audit(capsys, run_dir, *mode, "--limit", 0, "--format", "json"))
        as_csv = list(csv.DictReader(io.StringIO(audit(capsys, run_dir, *mode, "--limit", 0, "--format", "csv"))))
        assert len(as_csv) == len(as_json), mode
        for j, c in zip(as_json, as_csv):  # list scores come back from their JSON text
            assert c["uid"] == j["uid"] and (c["face_boxes"] == "" if j["face_boxes"] is None
                                             else json.loads(c["face_boxes"]) == j["face_boxes"])
        table = audit(capsys, run_dir, *mode, "--limit", 0)
        assert all(r["uid"][:12] in table for r in as_json) or not as_json
    proc = run_cli("audit", str(run_dir), "--stage", "ingest", "--format", "csv", "--limit", "0")  # the README's, as users run it
    assert proc.returncode == 0 and len(list(csv.DictReader(io.StringIO(proc.stdout)))) == len(
        json.loads(audit(capsys, run_dir, "--stage", "ingest", "--limit", 0, "--format", "json"))), proc.stderr
    explained = json.loads(audit(capsys, run_dir, "--explain", picks["face"]["uid"], "--format", "json"))[0]
    lines = list(csv.DictReader(io.StringIO(audit(capsys, run_dir, "--explain", picks["face"]["uid"], "--format", "csv"))))
    assert [x["step"] for x in lines] == ["sample", *(s["stage"] for s in explained["steps"]),
                                          *["instruction"] * len(explained["instructions"])]
    assert json.loads(lines[-1]["values"])["turns"] == explained["instructions"][-1]["turns"]
    # a struct score (no demo stage has one) is JSON text too, a null stays empty
    frame = pl.DataFrame({"uid": ["a", "b"], "box": [{"x": 1, "y": [2, 3]}, None]})
    assert list(csv.DictReader(io.StringIO(ledger_csv(frame)))) == [{"uid": "a", "box": '{"x": 1, "y": [2, 3]}'},
                                                                    {"uid": "b", "box": ""}]


def _blocks(table: str) -> dict[str, list[str]]:
    """The table form's lines by block: each stage's and each instruction record's."""
    blocks: dict[str, list[str]] = {}
    name = "head"
    for line in table.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and not line.startswith(("  url:", "  caption:",
                                                                                              "  exported:", "  detail:")):
            name = line.split()[0] if not line.startswith("  instruction ") else line.split(":")[0].strip()
        blocks.setdefault(name, []).append(line.strip())
    return blocks


def _flat(data: dict, prefix: str = "") -> list[str]:
    return [k for key, v in data.items() for k in (_flat(v, f"{prefix}{key}.") if isinstance(v, dict) else [prefix + key])]


@pytest.mark.parametrize("which", ["face", "pii"])
def test_explain_tells_the_whole_story_in_both_forms(demo_run, picks, capsys, which):
    run_dir, _ = demo_run
    uid = picks[which]["uid"]
    text = audit(capsys, run_dir, "--explain", uid, "--format", "json")
    row = json.loads(text)[0]
    table = audit(capsys, run_dir, "--explain", uid)
    assert "laion2b" not in table and "laion2b" not in text  # a local-dir CLIP ran: no pretrained tag
    steps = {s["stage"]: s for s in row["steps"]}
    privacy = steps["privacy"]
    assert privacy["settings"]["privacy.faces.detector"] == "centerface" == privacy["model"]["faces"]["detector"]
    assert privacy["configured"]["privacy.faces.detector"] == "auto"
    assert 'setting privacy.faces.detector = "centerface" (configured "auto")' in table
    assert "ran faces.detector = centerface" in table
    assert steps["clip_embed"]["model"]["label"] in table
    scores = picks[which]["scores"]
    if which == "face":
        assert privacy["values"]["face_boxes"] == scores["face_boxes"] != []
        assert f"face_boxes = {json.dumps(scores['face_boxes'])}" in table
    else:
        assert privacy["values"]["pii_types"] == scores["pii_types"]
        assert f"pii_types = {json.dumps(scores['pii_types'])}" in table
        assert row["exported_caption"] != row["caption"]  # redacted
    assert f"caption:  {row['caption']}" in table and f"exported: {row['exported_caption']}" in table
    assert row["instructions"] and all(t["question"] and t["answer"] for r in row["instructions"] for t in r["turns"])
    # the same fields in both forms, block by block
    blocks = _blocks(table)
    for step in row["steps"]:
        block = blocks[step["stage"]]
        wanted = ([f"{k} = " for k in step["values"]] + [f"setting {k} = " for k in step["settings"]]
                  + [f"ran {k} = " for k in _flat(step.get("model") or {})])
        assert [w for w in wanted if not any(line.startswith(w) for line in block)] == [], step["stage"]
    for rec in row["instructions"]:
        block = "\n".join(blocks[f"instruction {rec['task']}"])
        assert all(f"{k} = " in block for k in rec if k not in ("task", "status", "reason", "turns"))
        assert all(f"Q: {t['question']}" in block and f"A: {t['answer']}" in block for t in rec["turns"])


def test_dump_writes_the_images_behind_a_decision(demo_run, picks, capsys, tmp_path):
    run_dir, _ = demo_run
    face = picks["face"]
    out = audit(capsys, run_dir, "--explain", face["uid"], "--dump", tmp_path / "face")
    written = sorted(p.name for p in (tmp_path / "face").iterdir())
    assert written == sorted(["decision.json", f"row{face['row']}-download.jpg", f"row{face['row']}-privacy.jpg"])
    assert all(f"wrote {tmp_path / 'face' / name}" in out for name in written)
    downloaded, exported = (tmp_path / "face" / f"row{face['row']}-{s}.jpg" for s in ("download", "privacy"))
    assert downloaded.read_bytes() != exported.read_bytes()  # the face blurred
    for path in (downloaded, exported):
        with Image.open(path) as im:
            im.load()
    decision = json.loads((tmp_path / "face" / "decision.json").read_text())
    explained = json.loads(audit(capsys, run_dir, "--explain", face["uid"], "--format", "json"))
    assert [{k: v for k, v in d.items() if k != "images"} for d in decision] == explained
    assert {i["stage"] for i in decision[0]["images"]} == {"download", "privacy"}

    dup = picks["dup"]
    audit(capsys, run_dir, "--explain", dup["uid"], "--dump", tmp_path / "dup")
    keeper = [i for i in json.loads((tmp_path / "dup" / "decision.json").read_text())[0]["images"]
              if i["what"].startswith("keeper")]
    assert keeper and keeper[0]["uid"] == dup["scores"]["dup_of"]
    assert all((tmp_path / "dup" / i["file"]).is_file() for i in keeper)

    err = audit(capsys, run_dir, "--explain", dup["uid"], "--dump", tmp_path / "dup", code=2)  # not empty now
    assert "--dump" in err and "empty" in err


def test_dump_withholds_nsfw_images_unless_asked(demo_run, picks, capsys, tmp_path):
    run_dir, _ = demo_run
    row = picks["nsfw"]
    if row is None:  # no NudeNet here: the run's own ledger says a row was dropped as nsfw_image
        run_dir = shutil.copytree(run_dir, tmp_path / "run")
        ledger = pq.read_table(run_dir / "ledger.parquet")
        rows = ledger.to_pylist()
        row = rows[[r["status"] for r in rows].index("kept")]
        row.update(status="dropped", stage="safety", reason="nsfw_image", detail="nsfw 0.9 > 0.5")
        pq.write_table(pa.Table.from_pylist(rows, schema=ledger.schema), run_dir / "ledger.parquet")
    out = audit(capsys, run_dir, "--explain", row["uid"], "--dump", tmp_path / "hidden")
    assert sorted(p.name for p in (tmp_path / "hidden").iterdir()) == ["decision.json"]
    decision = json.loads((tmp_path / "hidden" / "decision.json").read_text())[0]
    assert decision["images"] == [] and "--show-nsfw" in decision["images_withheld"] and "--show-nsfw" in out
    audit(capsys, run_dir, "--explain", row["uid"], "--dump", tmp_path / "shown", "--show-nsfw")
    assert f"row{row['row']}-download.jpg" in {p.name for p in (tmp_path / "shown").iterdir()}
