"""Deduplication over the whole run: decontamination, exact duplicates, pHash near-duplicates.

Order: rows near a reference (evaluation) image go first (`near_reference`), so they never keep
anything; then identical bytes (`exact_duplicate`); then near-duplicates (`near_duplicate`).
Near-duplicate pairs come from the exact banded search in `algos/hamming`, run as parallel passes
that each see every hash; `algos/grouping` turns them into keepers (the best row by the keep
policy), so that each dropped row is within `max_distance` of the keeper its detail names (and
confirmed by the second signal), never merely chained to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.algos import grouping, hamming
from mmcurate.algos.parallel import Parallel
from mmcurate.filters.base import Histogram, Verdicts
from mmcurate.filters.image_hash import COLOUR_GRID, colour_distance, hex_to_uint64
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages.base import GlobalStage

# Second signals. Low-detail images (blank pages, solid colours, faint gradients) have pHashes
# with few distinct DCT signs, so unrelated ones collide; their matches must also agree in colour.
LOW_DETAIL_STD = 6.0  # luma std (0..255) of the 32x32 greyscale
LOW_DETAIL_COLOUR = 12.0  # mean abs colour-grid difference allowed for low-detail matches
MAX_COLOUR = 60.0  # for every match: a roughly similar colour layout (brightness shifts pass)
COLOUR_BYTES = COLOUR_GRID * COLOUR_GRID * 3
REASONS = (None, "near_reference", "exact_duplicate", "near_duplicate")
NEAR_REFERENCE, EXACT_DUPLICATE, NEAR_DUPLICATE = 1, 2, 3


@dataclass(frozen=True)
class Signals:
    """The per-row arrays dedup decides on."""

    phash: np.ndarray  # uint64
    dhash: np.ndarray  # uint64
    luma_std: np.ndarray  # float32
    colour: np.ndarray  # (n, 48) uint8

    @classmethod
    def from_columns(cls, phash: list[str], dhash: list[str], luma_std, colour: list[bytes]) -> Signals:
        """From the features stage's stored forms: hex hashes, floats and colour-grid bytes."""
        grid = np.frombuffer(b"".join(colour), np.uint8).reshape(len(colour), COLOUR_BYTES)
        return cls(hex_to_uint64(phash), hex_to_uint64(dhash), np.asarray(luma_std, np.float32), grid)

    @classmethod
    def from_table(cls, rows: pa.Table) -> Signals:
        """From the stored columns, straight from Arrow's buffers (no Python object per row)."""
        n = rows.num_rows
        ph, dh, colour = (_packed(rows[c], w) for c, w in ((C.PHASH, 16), (C.DHASH, 16), (C.COLOUR, COLOUR_BYTES)))
        luma = rows[C.LUMA_STD].to_numpy(zero_copy_only=False)
        if ph is None or dh is None or colour is None:  # a value of another width: the general path
            return cls.from_columns(rows[C.PHASH].to_pylist(), rows[C.DHASH].to_pylist(), luma, rows[C.COLOUR].to_pylist())
        grid = np.frombuffer(colour, np.uint8).reshape(n, COLOUR_BYTES)
        return cls(_hex64(ph), _hex64(dh), np.asarray(luma, np.float32), grid)

    def near(self, i: int | np.ndarray, j: np.ndarray, k: int, kd: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Which (i, j) are near-duplicates, and their pHash distances.

        Near: colour layouts agree (strictly for low-detail images) and either pHash <= k with
        dHash <= 2k, or (when kd is set) dHash <= kd with pHash <= 2k. dHash catches the border
        crops and re-scalings that move pHash a little past k; each hash confirms the other.
        """
        pd = hamming.popcount(self.phash[i] ^ self.phash[j])
        dd = hamming.popcount(self.dhash[i] ^ self.dhash[j])
        cdist = colour_distance(self.colour[i], self.colour[j])
        low = np.minimum(self.luma_std[i], self.luma_std[j]) < LOW_DETAIL_STD
        colour_ok = np.where(low, cdist <= LOW_DETAIL_COLOUR, cdist <= MAX_COLOUR)
        hashes_ok = (pd <= k) & (dd <= 2 * k)
        if kd is not None:
            hashes_ok |= (dd <= kd) & (pd <= 2 * k)
        return colour_ok & hashes_ok, pd


def _packed(column: pa.ChunkedArray, width: int) -> bytes | None:
    """The values of a string/binary column joined, when every one is exactly `width` bytes."""
    arr = column.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_binary(arr.type)):  # 32-bit offsets only
        return None
    if arr.null_count or not len(arr):
        return None if arr.null_count else b""
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if not np.all(np.diff(offsets) == width):
        return None
    return arr.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def _hex64(packed: bytes) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(packed.decode("ascii")), dtype=">u8").astype(np.uint64)


def _value_edges(values: np.ndarray, radius: int, parallel: Parallel) -> np.ndarray:
    """Edges between rows: rows with equal values, and rows whose values are within `radius`."""
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    same = np.stack([np.arange(len(values)), first[inverse]], axis=1)
    pairs = hamming.search_pairs(uniq, radius, parallel)
    return np.concatenate([same, np.stack([first[pairs[:, 0]], first[pairs[:, 1]]], axis=1)])


def near_duplicates(
    sig: Signals, rank: np.ndarray, alive: np.ndarray, k: int, kd: int | None, parallel: Parallel
) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the index of the kept row it duplicates (-1 if none) and the pHash distance."""
    n = len(rank)
    keeper_of = np.full(n, -1, np.int64)
    distance = np.full(n, -1, np.int64)
    idx = np.flatnonzero(alive)
    if len(idx) < 2:
        return keeper_of, distance
    edges = [_value_edges(sig.phash[idx], k, parallel)]
    if kd is not None:
        edges.append(_value_edges(sig.dhash[idx], kd, parallel))

    def near(keeper: int, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return sig.near(idx[keeper], idx[rest], k, kd)

    local, d = grouping.keepers(len(idx), np.concatenate(edges), rank[idx], near, -1, np.int64)
    found = local >= 0
    keeper_of[idx[found]], distance[idx[found]] = idx[local[found]], d[found]
    return keeper_of, distance


def load_reference(path: str, exact: bool) -> tuple[list[str], Signals | None, np.ndarray]:
    """Reference hashes from a parquet (`phash` column, optional `id`) or a folder of images."""
    from mmcurate.filters.image_hash import signals

    ref = Path(path)
    if ref.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(ref)
        if C.PHASH not in table.column_names:
            raise ValueError(f"dedup.reference_path: {ref} has no {C.PHASH!r} column")
        hexes = [str(h).zfill(16) for h in table[C.PHASH].to_pylist()]
        ids = [str(x) for x in table["id"].to_pylist()] if "id" in table.column_names else [f"ref:{i}" for i in range(len(hexes))]
        return ids, None, hex_to_uint64(hexes)
    files = sorted(p for p in ref.rglob("*") if p.is_file())
    ids, sigs = [], []
    for p in files:
        try:
            sigs.append(signals(p.read_bytes(), exact=exact))
            ids.append(str(p.relative_to(ref)))
        except Exception:  # not an image: a reference folder may hold READMEs and labels
            continue
    sig = Signals.from_columns(
        [s.phash for s in sigs], [s.dhash for s in sigs], [s.luma_std for s in sigs], [s.colour for s in sigs]
    )
    return ids, sig, sig.phash


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

    def rank(self, rows: pa.Table) -> np.ndarray:
        """Position of each row in keep-policy order (0 = keep first)."""
        if self.config.dedup.phash.keep == "first":
            order = np.argsort(rows[C.ROW].to_numpy(), kind="stable")
        else:  # largest first, ties by uid: Arrow's stable sort, no Python string per row
            w = rows[C.ORIGINAL_WIDTH].to_numpy(zero_copy_only=False).astype(np.int64)
            h = rows[C.ORIGINAL_HEIGHT].to_numpy(zero_copy_only=False).astype(np.int64)
            keys = pa.table({"area": -(w * h), "uid": rows[C.UID]})
            order = pc.sort_indices(keys, sort_keys=[("area", "ascending"), ("uid", "ascending")]).to_numpy()
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        return rank

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
            both = np.concatenate([sig.phash, ref_hash])
            pairs = hamming.search_pairs(both, k, parallel)
            cross = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]
            if ref_sig is not None and len(cross):
                merged = Signals(both, np.concatenate([sig.dhash, ref_sig.dhash]),
                                 np.concatenate([sig.luma_std, ref_sig.luma_std]),
                                 np.concatenate([sig.colour, ref_sig.colour]))
                cross = cross[merged.near(cross[:, 0], cross[:, 1], k, None)[0]]
            cross = cross[np.lexsort((cross[:, 1], cross[:, 2], cross[:, 0]))]  # per row: nearest, then first
            first = np.r_[True, cross[1:, 0] != cross[:-1, 0]] if len(cross) else np.zeros(0, bool)
            i, j, d = cross[first, 0], cross[first, 1], cross[first, 2]
            why[i], dup[i], dist[i] = NEAR_REFERENCE, j - n, d

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

        return self._verdicts(rows, why, dup, dist, ref_ids, k)

    def _verdicts(self, rows: pa.Table, why: np.ndarray, dup: np.ndarray, dist: np.ndarray,
                  ref_ids: list[str], k: int) -> Verdicts:
        n = rows.num_rows
        dropped = np.flatnonzero(why > 0)
        uid = rows[C.UID].combine_chunks() if n else pa.array([], pa.string())
        rows_dup = dup[dropped]
        from_rows = why[dropped] != NEAR_REFERENCE
        names = uid.take(pa.array(np.where(from_rows, rows_dup, 0))).to_pylist() if len(dropped) else []
        dup_of: list[str | None] = [None] * n
        detail: list[str | None] = [None] * n
        for i, w, j, name, d in zip(dropped.tolist(), why[dropped].tolist(), rows_dup.tolist(), names,
                                    dist[dropped].tolist()):
            if w == NEAR_REFERENCE:
                dup_of[i] = ref_ids[j]
                detail[i] = f"within pHash distance {d} of reference image {ref_ids[j]} (max {k})"
            elif w == EXACT_DUPLICATE:
                dup_of[i] = name
                detail[i] = f"identical image bytes to {name}"
            else:
                dup_of[i] = name
                detail[i] = f"near-duplicate of {name} (pHash distance {d}, max {k})"
        is_dropped = why > 0
        reason = pa.DictionaryArray.from_arrays(pa.array(why, mask=~is_dropped), list(REASONS))
        return Verdicts(
            scores={C.DUP_OF: pa.array(dup_of, pa.string()),
                    C.DUP_DISTANCE: pa.array(dist, pa.int16(), mask=~is_dropped)},
            reasons=reason.cast(pa.string()), details=detail,
        )
