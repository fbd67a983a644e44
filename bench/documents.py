"""Benchmark: the documents step at scale, on synthetic documents (no download: the image ledger is
written as the image stages would leave it).

1. **Near-duplicate documents in one large group** (pages of one site sharing the same images, each
   with its own text, a tenth of them copies with a word changed): the MinHash-proposed search
   (`algos/near_text.first_copies`) against comparing each document with every kept one, same
   decisions, one run.
2. **The three steps' memory is a file's, not the run's**: a synthetic run dir of N documents
   (files of `--file-docs`, 3 images each, 5 paragraphs, 5 % near-duplicate pages), the documents
   step on every file, the near-duplicate partitions and documents.parquet, in a child process per
   N; its peak RSS (above the interpreter's imports) and documents/s at 1x, 4x and 16x.

    python bench/documents.py [--group 4000] [--docs 20000] [--file-docs 2000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _word(x: int) -> str:
    out = ""
    for _ in range(4):
        x, r = divmod(x, 26)
        out += chr(97 + r)
    return out


def words(rng, n: int) -> str:
    return " ".join(_word(int(x)) for x in rng.integers(0, 26 ** 4, n))


def brute(texts: list[str], threshold: float) -> list:
    from mmcurate.algos.near_text import jaccard, shingles

    grams, kept, out = [shingles(t) for t in texts], [], []
    for i, g in enumerate(grams):
        best = max(((jaccard(g, grams[j]), -j) for j in kept), default=None)
        if best is not None and best[0] >= threshold:
            out.append((-best[1], best[0]))
        else:
            out.append(None)
            kept.append(i)
    return out


def group_bench(n: int) -> dict:
    import numpy as np

    from mmcurate.algos.near_text import first_copies

    rng = np.random.default_rng(0)
    texts = []
    for i in range(n):
        if i and i % 10 == 0:  # a copy of an earlier page, one word changed
            t = texts[int(rng.integers(0, i))].split()
            t[int(rng.integers(0, len(t)))] = "changed"
            texts.append(" ".join(t))
        else:
            texts.append(words(rng, 120))
    t0 = time.perf_counter()
    fast = first_copies(texts, 0.8)
    t1 = time.perf_counter()
    slow = brute(texts, 0.8)
    t2 = time.perf_counter()
    same = [x is None for x in fast] == [x is None for x in slow]
    return {"documents": n, "minhash_s": round(t1 - t0, 3), "every_kept_s": round(t2 - t1, 3),
            "speedup": round((t2 - t1) / (t1 - t0), 1), "same_decisions": same,
            "near_duplicates": sum(x is not None for x in fast)}


def make_run(root: Path, n: int, per_file: int) -> None:
    """A run dir as the image stages leave it: the documents table, the ingest record, the ledger."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmcurate.engine.rundir import RunDir
    from mmcurate.schemas import columns as C

    run_dir = RunDir.at(root)
    run_dir.make()
    run_dir.documents_table.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    ledger = pq.ParquetWriter(run_dir.ledger, pa.schema([
        (C.ROW, pa.int64()), (C.DOCUMENT, pa.int64()), (C.POSITION, pa.int32()), (C.STATUS, pa.string()),
        (C.REASON, pa.string()), (C.URL, pa.string()), (C.SCORES, pa.struct([(C.SHA256, pa.string())]))]))
    row = 0
    for f in range(0, n, per_file):
        docs, images = [], []
        for d in range(f, min(n, f + per_file)):
            source = d - 1 if d % 20 == 19 else d  # every 20th page copies the one before: same images, same text
            texts = [words(np.random.default_rng(source * 5 + k), 40) for k in range(5)]
            docs.append({C.DOCUMENT: d, C.DOCUMENT_ID: f"d{d}", C.SOURCE: "x.jsonl", C.SOURCE_LINE: d + 1,
                         C.URL: f"https://s.example/{d}", C.STATUS: C.KEPT, C.REASON: None, C.DETAIL: None,
                         C.FIRST_ROW: row, C.IMAGES_IN: 3, C.WORDS: 200, C.TEXTS: texts,
                         C.TEXT_POSITIONS: [1, 3, 5, 7, 8], C.IMAGE_POSITIONS: [0, 2, 4], C.IMAGE_TEXTS: [1, 3, 5],
                         C.IMAGE_SIMILARITY: None})
            for p in (0, 2, 4):
                dup = d != source
                images.append({C.ROW: row, C.DOCUMENT: d, C.POSITION: p, C.STATUS: C.DROPPED if dup else C.KEPT,
                               C.REASON: "exact_duplicate" if dup else None, C.URL: f"https://i.example/{source}/{p}",
                               C.SCORES: {C.SHA256: f"{source:016x}{p:016x}"}})
                row += 1
        pq.write_table(pa.Table.from_pylist(docs, schema=C.DOCUMENTS_SCHEMA), run_dir.documents_file(f // per_file, 0))
        ledger.write_table(pa.Table.from_pylist(images, schema=ledger.schema), row_group_size=per_file * 3)
    ledger.close()
    del rng


def steps(root: str, n: int, queue) -> None:
    """In a child: the three steps over a run dir of n documents; its peak RSS and time."""
    from mmcurate.engine.rundir import RunDir
    from mmcurate.filters.paragraphs import ParagraphRules
    from mmcurate.jobs.documents import DocumentsTask, near_duplicates, write_ledger
    from mmcurate.schemas.config import config_from_dict

    config = config_from_dict({"input": {"path": "x.jsonl", "format": "obelics"}, "quality": {"text": {"enabled": True}},
                               "safety": {"toxicity": {"enabled": False}, "nsfw": {"enabled": False}},
                               "privacy": {"faces": {"enabled": False}, "pii": {"enabled": True}}})
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_dir = RunDir.at(root)
    files = len(run_dir.documents_files())
    start = time.perf_counter()
    task = DocumentsTask(root, config, ParagraphRules(config))
    for k in range(files):
        task(k)
    dups = near_duplicates(run_dir, files, 0.8, n, max(1, n // 4), None)  # four partitions, as a cluster would cut them
    counts = write_ledger(run_dir, files, dups, n)
    seconds = time.perf_counter() - start
    queue.put({"documents": n, "files": files, "seconds": round(seconds, 2), "documents_per_s": round(n / seconds),
               "peak_rss_mib_above_imports": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
               "near_duplicates": len(dups), "counts": {k: counts[k] for k in ("kept", "dropped", "failed")}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", type=int, default=4000)
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--file-docs", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps({"group": group_bench(args.group)}), flush=True)
    ctx = mp.get_context("spawn")
    for scale in (1, 4, 16):
        n = args.docs * scale
        with tempfile.TemporaryDirectory() as tmp:
            make_run(Path(tmp), n, args.file_docs)
            queue = ctx.Queue()
            child = ctx.Process(target=steps, args=(tmp, n, queue))
            child.start()
            out = queue.get(timeout=3600)
            child.join()
            print(json.dumps({"scale": scale, **out}), flush=True)


if __name__ == "__main__":
    main()
