"""What auditors and researchers ask of a finished run: report, explanations, samples, exports, cuts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route
from tests.conftest import SAFETY_OFF, run_cli

pytestmark = pytest.mark.slow
N = 60


@pytest.fixture(scope="module")
def run(shapes_clip, tmp_path_factory):
    model_dir, card = shapes_clip
    tmp = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(5)
    pairs = shapes.pairs(N, seed=4242, size=96)
    routes = {f"/s/{i}.png": Route(shapes.png(p.image), content_type="image/png") for i, p in enumerate(pairs)}
    routes["/gone.png"] = Route(b"no", 404, "text/plain")
    # row 1 made smaller: a near-duplicate (dedup keeps the larger, row 1)
    routes["/near.png"] = Route(shapes.png(pairs[1].image.resize((80, 80))), content_type="image/png")
    with ImageServer(routes) as server:
        lines = [{"url": server.url(f"/s/{i}.png"), "caption": shapes.wrong_caption(p, rng) if i % 3 == 2 else p.caption}
                 for i, p in enumerate(pairs)]
        lines.append({"url": server.url("/s/0.png"), "caption": "the same picture again, another caption"})
        lines.append({"url": server.url("/near.png"), "caption": pairs[1].caption})
        lines.append({"url": server.url("/gone.png"), "caption": "a deleted picture"})
        (tmp / "pool.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {
            "input": {"path": str(tmp / "pool.jsonl"), "shard_size": 25},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0},
            "clip": {"model": f"local-dir:{model_dir}", "min_score": card["threshold"], "batch_size": 32},
            "export": {"formats": ["webdataset", "parquet", "hf"]},
            **SAFETY_OFF,
        }
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))
        proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet")
        assert proc.returncode == 0, proc.stderr
    ledger = pq.read_table(tmp / "run" / "ledger.parquet").to_pylist()
    return tmp, tmp / "run", ledger, card


def test_exports_load_with_their_client_libraries(run):
    import datasets
    import webdataset as wds

    _, run_dir, ledger, _ = run
    kept = {r["row"]: r for r in ledger if r["status"] == "kept"}
    ds = datasets.load_from_disk(str(run_dir / "shards" / "hf"))
    assert ds.num_rows == len(kept) and isinstance(ds.features["image"], datasets.Image)
    assert {"clip_score", "clip_threshold", "dup_distance", "caption", "uid"} <= set(ds.column_names)
    first = ds[0]
    assert first["image"].size[0] > 0 and first["caption"] == kept[first["row"]]["caption"]
    tars = sorted(str(p) for p in (run_dir / "shards" / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == len(kept) and all(s["json"]["clip_score"] >= s["json"]["clip_threshold"] for s in samples)
    parts = [pq.read_table(p) for p in sorted((run_dir / "shards" / "parquet").glob("*.parquet"))]
    assert sum(t.num_rows for t in parts) == len(kept) and "image" in parts[0].column_names


def test_where_exports_another_cut_without_rerunning(run, tmp_path):
    _, run_dir, ledger, card = run
    loose = card["threshold"] - 0.3
    proc = run_cli("export", str(run_dir), "--format", "parquet", "--out", str(tmp_path / "loose"),
                   "--where", f"clip_score > {loose} and original_width > 0")
    assert proc.returncode == 0, proc.stderr
    got = {r["row"] for p in (tmp_path / "loose").glob("*.parquet") for r in pq.read_table(p).to_pylist()}
    want = {r["row"] for r in ledger if (r["status"] == "kept" or r["reason"] == "low_clip_score")
            and r["scores"]["clip_score"] is not None and r["scores"]["clip_score"] > loose}
    assert got == want and any(r["reason"] == "low_clip_score" for r in ledger if r["row"] in got)
    # duplicates and failures never come back, whatever the expression
    assert not {r["row"] for r in ledger if r["reason"] in ("exact_duplicate", "http_404")} & got
    manifest = json.loads((tmp_path / "loose" / "mmcurate_export.json").read_text())
    assert manifest["where"].startswith("clip_score >") and manifest["rows"] == len(got)
    bad = run_cli("export", str(run_dir), "--format", "parquet", "--out", str(tmp_path / "bad"),
                  "--where", "clip_scor > 0.3")
    assert bad.returncode == 2 and "--where" in bad.stderr


def test_export_folder_holds_exactly_one_export_and_nothing_else_is_touched(run, tmp_path):
    _, run_dir, ledger, _ = run
    out = tmp_path / "cut"

    def export(fmt: str, where: str | None = None, to=out):
        return run_cli("export", str(run_dir), "--format", fmt, "--out", str(to), *(["--where", where] if where else []))

    assert export("parquet").returncode == 0
    assert len(list(out.glob("0*.parquet"))) == 3  # 63 rows in shards of 25
    (out / ".000001.parquet.k1ll3d.tmp").write_bytes(b"half a file")  # as a killed export leaves it
    # a stricter cut into the same folder: shards with no rows left must not keep the old files
    proc = export("parquet", "row < 25 and clip_score > -1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000.parquet", "mmcurate_export.json"]
    rows = {r["row"] for r in pq.read_table(out / "000000.parquet").to_pylist()}
    assert rows and max(rows) < 25
    assert json.loads((out / "mmcurate_export.json").read_text())["rows"] == len(rows)
    # a bad expression exits 2 and leaves the previous export as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert export("parquet", "clip_scor > 0").returncode == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # another format replaces the earlier export whole
    assert export("webdataset").returncode == 0
    assert sorted(p.suffix for p in out.iterdir()) == [".json"] + [".tar"] * 3
    # a folder with anything an export did not write is refused, exit 2, nothing deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "000000.parquet").write_bytes(b"not ours either, but named like ours")
    for fmt in ("hf", "parquet", "webdataset"):
        proc = export(fmt, to=mine)
        assert proc.returncode == 2 and f"--out {mine}: holds files that no mmcurate export wrote" in proc.stderr, fmt
    assert export("llava", to=mine).returncode == 2  # this run has no instruction data: refused before --out
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 2


def test_explain_and_reproducible_samples(run):
    _, run_dir, ledger, card = run
    low = next(r for r in ledger if r["reason"] == "low_clip_score")
    proc = run_cli("audit", str(run_dir), "--explain", low["uid"], "--format", "json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    steps = {s["stage"]: s for s in row["steps"]}
    assert row["decided_by"] == "clip" and list(steps)[:3] == ["ingest", "download", "features"]
    assert steps["clip"]["reason"] == "low_clip_score"
    assert steps["clip"]["settings"]["clip.min_score"] == pytest.approx(card["threshold"])
    assert steps["clip_embed"]["values"]["clip_score"] < steps["clip"]["values"]["clip_threshold"]
    text = run_cli("audit", str(run_dir), "--explain", low["uid"]).stdout
    assert "low_clip_score" in text and "setting clip.min_score" in text
    samples = [run_cli("audit", str(run_dir), "--status", "dropped", "--sample", "4", "--seed", str(seed),
                       "--format", "json").stdout for seed in (7, 7, 8)]
    a, b, c = ([r["uid"] for r in json.loads(s)] for s in samples)
    assert a == b and len(a) == 4 and a != c
    assert run_cli("audit", str(run_dir), "--explain", "nope").returncode == 2


def test_report_numbers_match_the_ledger(run):
    _, run_dir, ledger, card = run
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["rows"] == len(ledger) and report["invariant_holds"]
    funnel = [f["stage"] for f in report["funnel"]]
    assert funnel[:4] == ["input", "ingest", "download", "features"] and funnel[-1] == "clip"
    assert report["funnel"][-1]["rows"] == sum(r["status"] == "kept" for r in ledger)
    hist = {h["score"]: h for h in report["histograms"]}
    assert sum(hist["clip_score"]["counts"]) == sum(r["scores"]["clip_score"] is not None for r in ledger)
    assert hist["clip_score"]["threshold"] == pytest.approx(card["threshold"])
    low = {r["uid"] for r in ledger if r["reason"] == "low_clip_score"}
    assert {s["uid"] for s in report["samples"]["low_clip_score"]} <= low
    assert report["models"]["clip_embed"]["sha256"]
    page = (run_dir / "report" / "index.html").read_text()
    head = page.split("<h2>Configuration")[0].replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in page and "src=\"http" not in head  # self-contained: nothing fetched
    assert page.count('class="thumb"') >= 3 and "<svg" in page
    # a near-duplicate beside its keeper, with their pHash distance, in report.json and on the page
    by_row = {r["row"]: r for r in ledger}
    pairs = report["pairs"]["near_duplicate"]  # /near.png's, and one of the random pictures' (rows 8 and 37)
    pair = next(p for p in pairs if by_row[p["row"]]["url"].endswith("/near.png"))
    near = by_row[pair["row"]]
    assert near["reason"] == "near_duplicate" and by_row[pair["keeper_row"]]["url"].endswith("/s/1.png")
    assert pair["keeper_uid"] == near["scores"]["dup_of"] == by_row[pair["keeper_row"]]["uid"]
    assert pair["distance"] == near["scores"]["dup_distance"] <= 8
    assert pair["keeper_status"] == by_row[pair["keeper_row"]]["status"]
    (exact,) = report["pairs"]["exact_duplicate"]
    assert by_row[exact["keeper_row"]]["url"] == by_row[exact["row"]]["url"] and exact["distance"] == 0
    shown = page.split(">near_duplicate</h3>")[1].split("<h3>")[0]
    assert shown.count('class="pair"') == len(pairs) and shown.count('class="thumb"') == 2 * len(pairs)
    assert pair["keeper_uid"][:12] in shown
    assert f"pHash distance {pair['distance']}<" in shown


def test_report_renders_in_headless_chromium(run, browser):
    _, run_dir, _, _ = run
    browser.get((run_dir / "report" / "index.html").as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    thumbs = browser.execute_script(
        "return [...document.querySelectorAll('img.thumb')].map(i => i.complete && i.naturalWidth > 0)")
    assert len(thumbs) >= 3 and all(thumbs)
    pairs = browser.execute_script("return document.querySelectorAll('.pair img.thumb').length")
    assert pairs >= 4  # the near and the exact duplicate, each beside its keeper
    charts = browser.execute_script(
        "return [...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect().width)")
    assert charts and all(w > 100 for w in charts)
    lines = browser.execute_script("return document.querySelectorAll('line.threshold').length")
    assert lines >= 1
    browser.save_screenshot(str(run_dir / "report" / "screenshot.png"))
    assert (run_dir / "report" / "screenshot.png").stat().st_size > 10_000


def test_audit_takes_the_report_s_uid_prefix_and_names_what_it_does_not_know(run):
    _, run_dir, ledger, _ = run
    audit = lambda *args: run_cli("audit", str(run_dir), *args)  # noqa: E731
    low = next(r for r in ledger if r["reason"] == "low_clip_score")
    proc = audit("--uid", low["uid"][:12], "--format", "json")
    assert proc.returncode == 0 and {r["uid"] for r in json.loads(proc.stdout)} == {low["uid"]}, proc.stderr
    proc = audit("--explain", low["uid"][:12], "--format", "json")
    assert proc.returncode == 0 and [r["uid"] for r in json.loads(proc.stdout)] == [low["uid"]], proc.stderr
    uids = sorted({r["uid"] for r in ledger})
    first = next(u[0] for u, v in zip(uids, uids[1:]) if u[0] == v[0])  # a start two uids share
    for flag in ("--uid", "--explain"):
        proc = audit(flag, first)
        assert proc.returncode == 2 and f"{flag} {first}: ambiguous" in proc.stderr, proc.stderr
        assert [u for u in uids if u.startswith(first)][0] in proc.stderr
    assert audit("--uid", "0" * 32).stdout.strip() == "no ledger rows match"

    for args, says in ((["--reason", "nosuch"], "--reason nosuch: no stage of this run gives it; they give: "),
                       (["--stage", "nosuch", "--sample", "2"], "--stage nosuch: not a stage of this run; its stages: ingest, ")):
        proc = audit(*args)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert "low_clip_score" in audit("--reason", "nosuch").stderr and "clip" in audit("--stage", "x").stderr
    for args in (["--reason", "near_reference"], ["--reason", "http_500"], ["--stage", "dedup", "--reason", "low_clip_score"]):
        proc = audit(*args)  # a reason the run's stages give, that no row has
        assert proc.returncode == 0 and proc.stdout.strip() == "no ledger rows match", (args, proc.stderr)

    dropped = sum(r["status"] == "dropped" for r in ledger)
    assert audit("--status", "dropped", "--limit", "2").stdout.rstrip().endswith(f"2 of {dropped} shown (--limit 0 for all)")
    proc = audit("--status", "dropped", "--limit", "2", "--format", "json")
    assert len(json.loads(proc.stdout)) == 2 and f"2 of {dropped} shown" in proc.stderr
    assert "shown" not in audit("--status", "dropped", "--limit", "0").stdout


def test_ledger_in_parts_reads_as_the_single_file(run, tmp_path):
    """A run above engine.ledger_part_rows writes ledger.parquet/ as parts (here one shard each);
    pyarrow, polars and datasets read it as the file, and audit and report answer the same."""
    import datasets
    import polars as pl

    from mmcurate.engine.rundir import RunDir
    from mmcurate.jobs.ledger import check_invariant

    tmp, run_dir, ledger, _ = run
    parted = tmp_path / "run"
    shutil.copytree(run_dir, parted)
    proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(parted), "--quiet", "--set", "engine.ledger_part_rows=30")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (parted / "ledger.parquet").iterdir()) == [f"part-00000{k}.parquet" for k in range(3)]
    assert pq.read_table(parted / "ledger.parquet").to_pylist() == ledger
    assert pl.read_parquet(parted / "ledger.parquet").equals(pl.read_parquet(run_dir / "ledger.parquet"))
    ds = datasets.load_dataset("parquet", data_dir=str(parted / "ledger.parquet"), split="train")
    assert ds["uid"][:] == [r["uid"] for r in ledger]
    parts = json.loads((parted / "ledger_index" / "parts.json").read_text())["parts"]
    assert [(p["first_row"], p["rows"]) for p in parts] == [(0, 25), (25, 25), (50, len(ledger) - 50)]
    assert check_invariant(RunDir.at(parted), len(ledger))["rows"] == len(ledger)

    dup = next(r for r in ledger if r["reason"] == "exact_duplicate")
    for query in (["--uid", dup["uid"]], ["--status", "dropped", "--sample", "3", "--seed", "2"],
                  ["--reason", "low_clip_score", "--limit", "2"], ["--explain", ledger[-1]["uid"]],
                  ["--uid", ledger[-2]["uid"][:12]]):
        one, many = (run_cli("audit", str(d), *query, "--format", "json") for d in (run_dir, parted))
        assert one.returncode == many.returncode == 0 and json.loads(one.stdout) == json.loads(many.stdout), query
    reports = [json.loads((d / "report" / "report.json").read_text()) for d in (run_dir, parted)]
    for key in ("rows", "kept", "dropped", "failed", "reasons", "samples", "pairs", "histograms", "funnel",
                "invariant_holds"):
        assert reports[0][key] == reports[1][key], key

    proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(parted), "--quiet")  # back to one file
    assert proc.returncode == 0, proc.stderr
    assert (parted / "ledger.parquet").is_file() and not (parted / "ledger_index").exists()
    assert pq.read_table(parted / "ledger.parquet").to_pylist() == ledger


def test_empty_cuts_and_empty_inputs_export_empty_datasets(run, tmp_path):
    """A cut nothing matches, and an input with no rows, give an empty dataset in every format."""
    import datasets
    import webdataset as wds

    _, run_dir, _, _ = run
    nothing = ["--where", "original_width > 100000"]
    for fmt, extra in (("webdataset", []), ("parquet", []), ("hf", []), ("ids", []), ("parquet", ["--samples-per-shard", "5"])):
        out = tmp_path / f"{fmt}{len(extra)}"
        proc = run_cli("export", str(run_dir), "--format", fmt, "--out", str(out), *nothing, *extra)
        assert proc.returncode == 0, proc.stderr
        assert "exported 0 " in proc.stdout and "empty dataset" in proc.stdout, proc.stdout
    assert datasets.load_from_disk(str(tmp_path / "hf0")).num_rows == 0
    assert "clip_score" in datasets.load_from_disk(str(tmp_path / "hf0")).column_names
    assert pq.read_table(tmp_path / "parquet0" / "000000.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "parquet2" / "keys.parquet").num_rows == 0
    assert list(wds.WebDataset(str(tmp_path / "webdataset0" / "000000.tar"), shardshuffle=False, empty_check=False)) == []
    assert pq.read_table(tmp_path / "ids0" / "ids.parquet").num_rows == 0
    # a header-only input, every format (llava too: synthesis is on, and never asked)
    (tmp_path / "empty.csv").write_text("url,caption\n")
    config = {"input": {"path": str(tmp_path / "empty.csv")}, "clip": {"enabled": False}, **SAFETY_OFF,
              "synthesis": {"enabled": True}, "export": {"formats": ["webdataset", "parquet", "hf", "llava"]}}
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(tmp_path / "empty.yaml"), "--run-dir", str(tmp_path / "empty"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "0 rows = 0 kept" in proc.stdout and "the input has no rows" in proc.stdout
    shards = tmp_path / "empty" / "shards"
    assert datasets.load_from_disk(str(shards / "hf")).num_rows == 0
    assert pq.read_table(shards / "parquet" / "000000.parquet").num_rows == 0
    assert json.loads((tmp_path / "empty" / "instructions" / "llava.json").read_text()) == []


def test_audit_arguments_and_a_closed_pipe_get_clear_answers(run, tmp_path):
    import subprocess
    import sys

    _, run_dir, ledger, _ = run
    for args, says in ((["--sample", "-3"], "--sample -3: the number of rows to sample, 1 or more"),
                       (["--sample", "0"], "--sample 0: the number of rows to sample"),
                       (["--limit", "-1"], "--limit -1: the number of rows to show, or 0 for all")):
        proc = run_cli("audit", str(run_dir), *args)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for command in ("audit", "status", "report"):
        proc = run_cli(command, str(tmp_path / "nosuch"))
        assert proc.returncode == 2 and "not a run directory (does not exist)" in proc.stderr, proc.stderr
    # a reader that stops early (`| head -1`; the JSON is larger than a pipe holds) ends the command
    # quietly; CSV carries list scores as JSON
    audit = subprocess.Popen([sys.executable, "-m", "mmcurate", "audit", str(run_dir), "--limit", "0", "--format", "json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    audit.stdout.readline()
    audit.stdout.close()
    assert audit.wait(timeout=120) == 0 and b"Error" not in audit.stderr.read()
    csv = run_cli("audit", str(run_dir), "--limit", "0", "--format", "csv")
    assert csv.returncode == 0 and len(csv.stdout.splitlines()) == len(ledger) + 1, csv.stderr
