"""The documents of an interleaved input (input.format mmc4, obelics), after the image stages and the
image ledger: three steps, none of which holds every document.

1. **The documents step** (`DocumentsTask`, a worker task per file of the documents table, resumable
   as a stage: `stages/documents/NNNNNN.parquet` and its stats): a file's documents, their images'
   ledger rows (a document's images are consecutive rows from its `first_row` on), the paragraph
   rules on their texts (`filters/paragraphs.py`), the image-text assignment where it is on
   (`filters/assignment.py`, from the clip stage's stored image embeddings), and each document's
   verdict (`jobs/document_rules.py`). It keeps what the exports read: the texts left, the text each
   image is paired with, and a signature of the document's images.
2. **Near-duplicate documents**: documents with the same signature (the same images, as the input
   had them: a copied page's images are duplicates the image stages removed) and mostly the same
   text as an earlier kept one (`algos/near_text.py`), grouped by signature in hash partitions of
   at most `engine.rows_per_partition` documents, each a worker task. Such a document is dropped as
   near_duplicate_document (naming the kept one) whatever the step said of it: that it lost its
   images as duplicates is what a copy does, and the copy is the better reason.
3. **documents.parquet** beside the ledger, one row per input document, written a step file at a
   time; invariant: documents in = kept + dropped + failed, else LedgerError.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.algos.near_text import first_copies
from mmcurate.algos.parallel import Tasks, runner
from mmcurate.engine import atomic
from mmcurate.engine.rundir import RunDir
from mmcurate.engine.shards import shard_stats
from mmcurate.filters.paragraphs import Outcome, ParagraphRules
from mmcurate.jobs.audit import ledger_rows
from mmcurate.jobs.document_rules import STAGE, UNASSIGNED, verdict
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.schemas.errors import LedgerError
from mmcurate.storage import paths

STEP = STAGE  # the documents step's folder under stages/ and its name in progress lines
NEAR_DUPLICATE = "near_duplicate_document"
EMBED_STAGE = "clip_embed"


class DocumentsTask:
    """A picklable task: the documents step on one file of the documents table (`shard` is its index)."""

    def __init__(self, root: str, config: Config, rules: ParagraphRules, weights=None):
        self.root, self.config, self.rules, self.weights = root, config, rules, weights
        self.scorer = None

    def setup(self) -> None:
        self.rules.setup()
        if self.weights is not None and self.scorer is None:
            from mmcurate.filters.clip_score import ClipScorer

            c = self.config.clip
            self.scorer = ClipScorer(self.weights, c.device, c.batch_size, decode="cpu")

    def __call__(self, shard: int) -> dict:
        run_dir = RunDir.at(self.root)
        marker = run_dir.stats_file(STEP, shard)
        if marker.exists():
            return json.loads(marker.read_text())
        started = time.time()
        self.setup()
        docs = paths.read_table(run_dir.documents_files()[shard])
        table = self.decide(run_dir, docs)
        atomic.write_parquet(run_dir.shard_file(STEP, shard), table)
        stats = shard_stats(STEP, shard, table, time.time() - started, started)
        atomic.write_json(marker, stats)
        return stats

    def decide(self, run_dir: RunDir, docs: pa.Table) -> pa.Table:
        """The step's rows (`C.DOCUMENT_STEP_SCHEMA`) of one file's documents."""
        counts = docs[C.IMAGES_IN].to_numpy(zero_copy_only=False).astype(np.int64)
        lo = int(docs[C.FIRST_ROW][0].as_py()) if docs.num_rows else 0
        images = _image_rows(run_dir, lo, int(counts.sum()))
        if not np.array_equal(images[C.DOCUMENT].to_numpy(zero_copy_only=False),
                              np.repeat(docs[C.DOCUMENT].to_numpy(zero_copy_only=False), counts)):
            raise LedgerError("documents: image rows of the ledger do not follow their documents in order")
        rows = docs.to_pylist()
        texts = [r[C.TEXTS] or [] for r in rows]
        outcomes = self.rules.apply(texts)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        image = images.to_pylist()
        pairing = self._pairing(run_dir, rows, image, starts, outcomes)
        out = []
        for i, (doc, texts_left) in enumerate(zip(rows, outcomes)):
            mine = image[starts[i]:starts[i + 1]]
            paired, similarity = pairing[i]
            states = [(r[C.POSITION], r[C.STATUS], r[C.REASON]) if r[C.STATUS] != C.KEPT or paired[k] is not None
                      else (r[C.POSITION], C.DROPPED, UNASSIGNED) for k, r in enumerate(mine)]
            v = verdict(doc, states, texts_left, self.config.documents)
            positions = doc[C.TEXT_POSITIONS] or []
            out.append({
                **{f.name: doc[f.name] for f in C.DOCUMENT_IDENTITY},
                C.STATUS: v.status, C.STAGE: v.stage, C.REASON: v.reason, C.DETAIL: v.detail,
                C.IMAGES_IN: doc[C.IMAGES_IN], C.IMAGES_KEPT: v.images_kept, C.WORDS: doc[C.WORDS],
                C.TEXTS_IN: len(texts[i]), C.TEXTS_KEPT: len(texts_left.kept), C.WORDS_KEPT: v.words_kept,
                C.DUP_OF: None, C.DUP_SIMILARITY: None,
                C.TEXTS: texts_left.texts, C.TEXT_POSITIONS: [positions[k] for k in texts_left.kept],
                C.IMAGE_POSITIONS: [r[C.POSITION] for r in mine], C.IMAGE_TEXTS: paired, C.IMAGE_SIMILARITY: similarity,
                C.SIGNATURE: _signature(mine) if v.status != C.FAILED and v.reason != "nsfw_document" else None,
            })
        return pa.Table.from_pylist(out, schema=C.DOCUMENT_STEP_SCHEMA)

    def _pairing(self, run_dir: RunDir, rows: list[dict], image: list[dict], starts: np.ndarray,
                 outcomes: list[Outcome]) -> list[tuple[list, list | None]]:
        """Per document: the text position each image is paired with (None: none) and the similarity.
        Without the assignment, as the input paired them (a paragraph the rules removed leaves its
        images unpaired only under the assignment, which pairs with the texts left)."""
        if self.scorer is None:
            return [(list(r[C.IMAGE_TEXTS] or []), r[C.IMAGE_SIMILARITY]) for r in rows]
        from mmcurate.filters.assignment import match_documents

        wanted = [r[C.ROW] for r in image if r[C.STATUS] == C.KEPT]
        embedding = _embeddings(run_dir, wanted, self.config.input.shard_size)
        batch = [([embedding.get(r[C.ROW]) if r[C.STATUS] == C.KEPT else None for r in image[starts[i]:starts[i + 1]]],
                  o.texts) for i, o in enumerate(outcomes)]
        out = []
        for (indices, sims), doc, o in zip(match_documents(batch, self.scorer, self.config.documents.assignment.min_similarity),
                                           rows, outcomes):
            positions = [(doc[C.TEXT_POSITIONS] or [])[k] for k in o.kept]
            out.append(([positions[j] if j >= 0 else None for j in indices],
                        [None if j < 0 else float(s) for j, s in zip(indices, sims)]))
        return out


_IMAGE_ROWS = pa.schema([(C.ROW, pa.int64()), (C.DOCUMENT, pa.int64()), (C.POSITION, pa.int32()), (C.STATUS, pa.string()),
                         (C.REASON, pa.string()), (C.URL, pa.string()), (C.SHA256, pa.string())])


def _image_rows(run_dir: RunDir, lo: int, n: int) -> pa.Table:
    """The ledger rows lo .. lo + n - 1, in row order: row, document, position, status, reason, url and
    the stored image's sha256 (null where the run has none)."""
    if not n:
        return _IMAGE_ROWS.empty_table()
    table = ledger_rows(run_dir, list(range(lo, lo + n)))
    table = table.sort_by(C.ROW)
    if table.num_rows != n:
        raise LedgerError(f"documents: rows {lo}..{lo + n - 1} expected in the ledger, {table.num_rows} found")
    scores = table[C.SCORES].type if C.SCORES in table.column_names else None
    sha = (pc.struct_field(table[C.SCORES], C.SHA256) if scores is not None and scores.get_field_index(C.SHA256) >= 0
           else pa.nulls(n, pa.string()))
    return table.select(_IMAGE_ROWS.names[:-1]).append_column(C.SHA256, sha)


def _embeddings(run_dir: RunDir, rows: list[int], shard_size: int) -> dict[int, np.ndarray]:
    """The clip stage's stored image embedding of each of `rows` that has one."""
    out: dict[int, np.ndarray] = {}
    wanted = pa.array(rows, pa.int64())
    for shard in sorted({r // shard_size for r in rows}):
        table = run_dir.read_shard(EMBED_STAGE, shard, columns=[C.ROW, C.CLIP_EMBEDDING])
        table = table.filter(pc.is_in(table[C.ROW], wanted))
        for row, emb in zip(table[C.ROW].to_pylist(), table[C.CLIP_EMBEDDING].to_pylist()):
            if emb is not None:
                out[row] = np.asarray(emb, np.float32)
    return out


def _signature(images: list[dict]) -> str | None:
    """A hash of the multiset of a document's images (each by its stored bytes' sha256, else its URL);
    None for a document without images: near-duplicate documents share their images."""
    if not images:
        return None
    names = sorted(r[C.SHA256] or f"url:{r[C.URL]}" for r in images)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- near-duplicates

def _partition_of(signatures: pa.Array, parts: int) -> np.ndarray:
    heads = pc.utf8_slice_codeunits(signatures, 0, 8).to_pylist()
    return np.array([int(h, 16) % parts for h in heads], np.int64)


def _near_duplicates_in(shared: tuple, part: int) -> list[tuple[int, str, float]]:
    """A task: the near-duplicate documents among the kept ones whose signature falls in `part`."""
    root, files, parts, threshold = shared
    run_dir = RunDir.at(root)
    found = []
    for k in range(files):
        t = run_dir.read_shard(STEP, k, columns=[C.DOCUMENT, C.SIGNATURE, C.STATUS])
        t = t.filter(pc.is_valid(t[C.SIGNATURE]))
        if t.num_rows:
            found.append(t.filter(pa.array(_partition_of(t[C.SIGNATURE], parts) == part)))
    if not found:
        return []
    table = pa.concat_tables(found)
    kept = set(table.filter(pc.equal(table[C.STATUS], C.KEPT))[C.DOCUMENT].to_pylist())
    groups = table.group_by(C.SIGNATURE).aggregate([(C.DOCUMENT, "list")])
    wanted = sorted(d for docs in groups[f"{C.DOCUMENT}_list"].to_pylist() if len(docs) > 1 for d in docs)
    if not wanted:
        return []
    texts, ids = {}, {}
    for k in range(files):
        t = run_dir.read_shard(STEP, k, columns=[C.DOCUMENT, C.DOCUMENT_ID, C.TEXTS])
        t = t.filter(pc.is_in(t[C.DOCUMENT], pa.array(wanted, pa.int64())))
        for doc, doc_id, words in zip(t[C.DOCUMENT].to_pylist(), t[C.DOCUMENT_ID].to_pylist(), t[C.TEXTS].to_pylist()):
            texts[doc], ids[doc] = "\n".join(words or []), doc_id
    out = []
    for docs in groups[f"{C.DOCUMENT}_list"].to_pylist():
        if len(docs) < 2:
            continue
        docs = sorted(docs)
        for doc, copy in zip(docs, first_copies([texts[d] for d in docs], threshold, [d in kept for d in docs])):
            if copy is not None:
                out.append((doc, ids[docs[copy[0]]], copy[1]))
    return out


def near_duplicates(run_dir: RunDir, files: int, threshold: float | None, candidates: int, per_partition: int,
                    tasks: Callable[[], Tasks] | None) -> dict[int, tuple[str, float]]:
    """{document: (document_id of the kept one it nearly repeats, similarity)} over every step file;
    `candidates`: the documents that may be one (those not failed), at most `per_partition` a task."""
    if threshold is None or not files:
        return {}
    parts = max(1, math.ceil(candidates / per_partition))
    shared = (str(run_dir.root), files, parts, threshold)
    found = runner(tasks, parts).parallel(_near_duplicates_in, list(range(parts)), shared)
    return {doc: (of, sim) for part in found for doc, of, sim in part}


# ----------------------------------------------------------------------------- documents.parquet

def write_ledger(run_dir: RunDir, files: int, dups: dict[int, tuple[str, float]], expected: int) -> dict[str, int]:
    """documents.parquet from the step's files, near-duplicates dropped; checks the invariant."""
    counts = {"documents": 0, **{s: 0 for s in C.STATUSES}}
    reasons: Counter = Counter()

    def write(tmp) -> None:
        with pq.ParquetWriter(tmp, C.DOCUMENT_LEDGER_SCHEMA, compression="zstd") as writer:
            for k in range(files):
                table = run_dir.read_shard(STEP, k, columns=C.DOCUMENT_LEDGER_SCHEMA.names)
                numbers = table[C.DOCUMENT].to_numpy(zero_copy_only=False)
                if len(numbers) and not np.array_equal(numbers, np.arange(counts["documents"], counts["documents"] + len(numbers))):
                    raise LedgerError(f"documents ledger: documents are not numbered in order at step file {k}")
                if dups and any(int(n) in dups for n in numbers):
                    table = _mark(table, dups)
                counts["documents"] += table.num_rows
                for s, r in zip(table[C.STATUS].to_pylist(), table[C.REASON].to_pylist()):
                    counts[s] += 1
                    if s != C.KEPT:
                        reasons[r] += 1
                writer.write_table(table.cast(C.DOCUMENT_LEDGER_SCHEMA))

    atomic.write_with(run_dir.documents_ledger, write)
    if counts["documents"] != expected or sum(counts[s] for s in C.STATUSES) != expected:
        raise LedgerError(
            f"documents invariant broken: {expected} input documents but the documents ledger has {counts['documents']}, "
            f"kept {counts[C.KEPT]} + dropped {counts[C.DROPPED]} + failed {counts[C.FAILED]}")
    return {**counts, "reasons": dict(sorted(reasons.items()))}


def _mark(table: pa.Table, dups: dict[int, tuple[str, float]]) -> pa.Table:
    rows = table.to_pylist()
    for r in rows:
        hit = dups.get(r[C.DOCUMENT])
        if hit is not None:
            r.update({C.STATUS: C.DROPPED, C.STAGE: STAGE, C.REASON: NEAR_DUPLICATE, C.DUP_OF: hit[0],
                      C.DUP_SIMILARITY: hit[1],
                      C.DETAIL: f"the same images as document {hit[0]} and {hit[1]:.0%} of its text's word 3-grams"})
    return pa.Table.from_pylist(rows, schema=table.schema)


def build_documents(run_dir: RunDir, config: Config, expected: int, on_workers: Callable[[DocumentsTask], Callable],
                    progress, fingerprint: str, rules: ParagraphRules, weights=None,
                    tasks: Callable[[], Tasks] | None = None) -> dict:
    """The three steps; returns the manifest's `documents` entry. `on_workers(task)` is the work that
    runs `task` on pending files of documents (`engine.runner.run_shards`'s)."""
    from mmcurate.engine.runner import run_shards

    files = len(run_dir.documents_files())
    step = run_shards(run_dir, STEP, on_workers(DocumentsTask(str(run_dir.root), config, rules, weights)), fingerprint,
                      files, progress)
    dups = near_duplicates(run_dir, files, config.documents.near_duplicate_similarity, step["rows_in"] - step[C.FAILED],
                           config.engine.rows_per_partition, tasks)
    out = write_ledger(run_dir, files, dups, expected)
    out["seconds"] = step.get("seconds_this_run")
    return out


def step_fingerprint(chain: str, config: Config, rules: ParagraphRules, weights) -> str:
    """What the documents step's files depend on: the image stages' chain, the section, the rules."""
    what = {"chain": chain, "documents": config.documents.model_dump(mode="json"), "rules": rules.fingerprint(),
            "clip": getattr(weights, "sha256", None), "shard_size": config.input.shard_size}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def documents_rules(config: Config, stages: Sequence) -> tuple[ParagraphRules, object]:
    """The paragraph rules (their models found and hashed: exit 2 naming the key) and, where the
    assignment is on, the CLIP weights the clip stage found."""
    from mmcurate.schemas.errors import ConfigError

    rules = ParagraphRules(config)
    rules.prepare()
    weights = None
    if config.documents.assignment.enabled:
        embed = next((s for s in stages if s.name == EMBED_STAGE), None)
        if embed is None or getattr(embed, "weights", None) is None:
            raise ConfigError("documents.assignment.enabled: the assignment needs the images' CLIP embeddings "
                              "(clip.enabled: true)")
        weights = embed.weights
    return rules, weights
