"""Deduplication over the whole run: decontamination, exact duplicates, pHash near-duplicates.

Order: rows near a reference (evaluation) image go first (`near_reference`), so they never keep
anything; then identical bytes (`exact_duplicate`); then near-duplicates (`near_duplicate`), each
dropped row within `max_distance` of the kept row its detail names. A run that fits in one
partition (`engine.rows_per_partition`) decides in one task (`signals.py`); a larger one as a
dataflow of tasks in which none holds every row (`flow.py`), with the same decisions.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.algos import hamming
from mmcurate.algos.parallel import Parallel, Tasks
from mmcurate.filters.base import Histogram, Verdicts
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.base import GlobalStage, ShardIO
from mmcurate.stages.dedup import flow
from mmcurate.stages.dedup.signals import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    NEAR_REFERENCE,
    Signals,
    load_reference,
    near_duplicates,
    rank,
    reference_matches,
    verdicts,
)


class DedupStage(GlobalStage):
    """Drops rows near reference images, exact byte duplicates and pHash near-duplicates."""

    name = "dedup"
    version = "1"
    output_schema = C.DEDUP_SCHEMA
    score_columns = (C.DUP_OF, C.DUP_DISTANCE)
    input_columns = (C.SHA256, C.PHASH, C.DHASH, C.LUMA_STD, C.COLOUR, C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT)
    settings = ("dedup.exact", "dedup.phash.max_distance", "dedup.phash.dhash_distance", "dedup.phash.keep",
                "dedup.reference_path")
    histograms = (Histogram(C.DUP_DISTANCE, "dedup.phash.max_distance", "max"),)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.dedup.active

    def config_sections(self) -> dict:
        d = self.config.dedup
        return {"exact": d.exact, "phash": d.phash.model_dump(), "reference_path": d.reference_path}

    def check_scale(self, rows: int) -> None:
        """Refuses a pHash/dHash radius whose band search would move more than engine.max_shuffle_tb
        at this many rows (`hamming.shuffle_bytes`; README "Dedup at scale"), naming the radius that fits."""
        p, budget = self.config.dedup.phash, self.config.engine.max_shuffle_tb
        if not p.enabled or budget is None:
            return
        radii = [p.max_distance] + ([p.dhash_distance] if p.dhash_distance is not None else [])
        tb = sum(hamming.shuffle_bytes(rows, k) for k in radii) / 1e12
        if tb <= budget:
            return
        fits = []  # every radius up to the one named must fit (the cost is not monotone in the radius)
        for k in range(max(radii) + 1):
            if len(radii) * hamming.shuffle_bytes(rows, k) / 1e12 > budget:
                break
            fits.append(k)
        dhash = f" (with dhash_distance {p.dhash_distance})" if p.dhash_distance is not None else ""
        both = " (and dhash_distance)" if p.dhash_distance is not None else ""
        raise ConfigError(
            f"dedup.phash.max_distance: {p.max_distance}{dhash} would move about {tb:,.1f} TB of band keys "
            f"between tasks over {rows:,} input rows, more than engine.max_shuffle_tb ({budget:g}); "
            + (f"set max_distance{both} to {fits[-1]} or less" if fits else "no radius fits: set dedup.phash.enabled to false")
            + ", or raise engine.max_shuffle_tb")

    def rank(self, rows: pa.Table) -> np.ndarray:
        """Position of each row in keep-policy order (0 = keep first)."""
        return rank(rows, self.config.dedup.phash.keep)

    def decide_shards(self, io: ShardIO, tasks: Tasks) -> list:
        parts = math.ceil(io.rows / io.rows_per_partition)
        if parts <= 1:
            return super().decide_shards(io, tasks)
        return flow.decide(self, io, tasks, parts)

    def judge(self, rows: pa.Table, parallel: Parallel) -> Verdicts:
        """Kept or dropped for every row, as arrays: per-row Python objects only for dropped rows."""
        cfg = self.config.dedup
        n = rows.num_rows
        k = cfg.phash.max_distance
        sig = Signals.from_table(rows)
        rank = self.rank(rows)
        why = np.zeros(n, np.int8)  # index into REASONS; 0: kept
        dup = np.full(n, -1, np.int64)  # the kept row (or reference image) each dropped row matches
        dist = np.zeros(n, np.int64)
        ref_ids: list[str] = []

        if cfg.reference_path:
            ref_ids, ref_sig, ref_hash = load_reference(cfg.reference_path, cfg.phash.exact)
            i, j, d = reference_matches(sig, ref_sig, ref_hash, k, parallel)
            why[i], dup[i], dist[i] = NEAR_REFERENCE, j, d

        if cfg.exact and n:
            idx = np.flatnonzero(why == 0)
            keys = pa.table({"sha": rows[C.SHA256].take(pa.array(idx)), "rank": rank[idx]})
            order = pc.sort_indices(keys, sort_keys=[("sha", "ascending"), ("rank", "ascending")]).to_numpy()
            sha = keys["sha"].take(pa.array(order)).combine_chunks()
            same = np.r_[False, pc.equal(sha[1:], sha[:-1]).to_numpy(zero_copy_only=False)] if len(idx) else np.zeros(0, bool)
            run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(idx))))
            rows_sorted = idx[order]
            dropped = rows_sorted[same]
            why[dropped], dup[dropped] = EXACT_DUPLICATE, rows_sorted[run_start[same]]

        if cfg.phash.enabled:
            keeper_of, distance = near_duplicates(sig, rank, why == 0, k, cfg.phash.dhash_distance, parallel)
            near = keeper_of >= 0
            why[near], dup[near], dist[near] = NEAR_DUPLICATE, keeper_of[near], distance[near]

        names: list[str | None] = [None] * n
        from_rows = np.flatnonzero((why > 0) & (why != NEAR_REFERENCE))
        if len(from_rows):
            for i, name in zip(from_rows.tolist(), rows[C.UID].take(pa.array(dup[from_rows])).to_pylist()):
                names[i] = name
        for i in np.flatnonzero(why == NEAR_REFERENCE).tolist():
            names[i] = ref_ids[dup[i]]
        return verdicts(why, names, dist, k, rows[C.UID].to_pylist())
