"""Deduplication over the whole run: decontamination, exact duplicates, pHash near-duplicates.

Order: rows near a reference (evaluation) image go first (`near_reference`), so they never keep
anything; then identical bytes (`exact_duplicate`); then near-duplicates (`near_duplicate`).
Near-duplicate pairs come from the exact banded search in `hamming`, run as parallel passes that
each see every hash. Pairs are grouped into connected components; inside a component the best
row by the keep policy is kept and every row within distance of it (and confirmed by the second
signal) is dropped, then the best remaining row is kept, and so on: each dropped row is within
`max_distance` of the keeper its detail names, never merely chained to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcurate.filters.image_hash import COLOUR_GRID, colour_distance, hex_to_uint64
from mmcurate.pipelines import hamming
from mmcurate.pipelines.stage import GlobalStage, Parallel, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

# Second signals. Low-detail images (blank pages, solid colours, faint gradients) have pHashes
# with few distinct DCT signs, so unrelated ones collide; their matches must also agree in colour.
LOW_DETAIL_STD = 6.0  # luma std (0..255) of the 32x32 greyscale
LOW_DETAIL_COLOUR = 12.0  # mean abs colour-grid difference allowed for low-detail matches
MAX_COLOUR = 60.0  # for every match: a roughly similar colour layout (brightness shifts pass)
PASSES_PER_TASK = 12
COLOUR_BYTES = COLOUR_GRID * COLOUR_GRID * 3


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


def _search_task(shared: tuple[np.ndarray, int, hamming.BandPlan], combos: list) -> np.ndarray:
    hashes, k, bands = shared
    return hamming.pairs_for_combos(hashes, k, bands, combos)


def search_pairs(hashes: np.ndarray, k: int, parallel: Parallel) -> np.ndarray:
    """All pairs within k, the band passes spread over `parallel` workers."""
    bands = hamming.plan(len(hashes), k)
    combos = bands.combos
    chunks = [combos[i : i + PASSES_PER_TASK] for i in range(0, len(combos), PASSES_PER_TASK)]
    found = parallel(_search_task, chunks, (hashes, k, bands))
    found = [f for f in found if len(f)]
    return hamming.unique_pairs(np.concatenate(found)) if found else np.empty((0, 3), np.int64)


def greedy_keepers(
    members: np.ndarray, sig: Signals, k: int, kd: int | None, keeper_of: np.ndarray, distance: np.ndarray
) -> None:
    """Inside one component (members in keep-policy order) keep the best, drop what is near it, repeat."""
    remaining = members
    while len(remaining) > 1:
        keeper, rest = remaining[0], remaining[1:]
        near, d = sig.near(keeper, rest, k, kd)
        keeper_of[rest[near]] = keeper
        distance[rest[near]] = d[near]
        remaining = rest[~near]


def _value_edges(values: np.ndarray, radius: int, parallel: Parallel) -> np.ndarray:
    """Edges between rows: rows with equal values, and rows whose values are within `radius`."""
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    same = np.stack([np.arange(len(values)), first[inverse]], axis=1)
    pairs = search_pairs(uniq, radius, parallel)
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
    edges = np.concatenate(edges)
    labels = hamming.components(len(idx), edges)
    counts = np.bincount(labels)
    grouped = counts[labels] >= 2
    idx, labels = idx[grouped], labels[grouped]
    order = np.lexsort((rank[idx], labels))
    idx, labels = idx[order], labels[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    for members in np.split(idx, starts[1:]):
        greedy_keepers(members, sig, k, kd, keeper_of, distance)
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

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.dedup.active

    def config_sections(self) -> dict:
        d = self.config.dedup
        return {"exact": d.exact, "phash": d.phash.model_dump(), "reference_path": d.reference_path}

    def rank(self, rows: pa.Table) -> np.ndarray:
        """Position of each row in keep-policy order (0 = keep first)."""
        uid = np.array(rows[C.UID].to_pylist(), dtype=object)
        if self.config.dedup.phash.keep == "first":
            order = np.argsort(rows[C.ROW].to_numpy(), kind="stable")
        else:
            w = rows[C.ORIGINAL_WIDTH].to_numpy(zero_copy_only=False).astype(np.int64)
            h = rows[C.ORIGINAL_HEIGHT].to_numpy(zero_copy_only=False).astype(np.int64)
            order = np.lexsort((uid, -(w * h)))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        return rank

    def decide(self, rows: pa.Table, parallel: Parallel) -> pa.Table:
        cfg = self.config.dedup
        n = rows.num_rows
        k = cfg.phash.max_distance
        uid = rows[C.UID].to_pylist()
        sig = Signals.from_columns(
            rows[C.PHASH].to_pylist(), rows[C.DHASH].to_pylist(),
            rows[C.LUMA_STD].to_numpy(zero_copy_only=False), rows[C.COLOUR].to_pylist(),
        )
        rank = self.rank(rows)
        status = [C.KEPT] * n
        reason: list[str | None] = [None] * n
        detail: list[str | None] = [None] * n
        dup_of: list[str | None] = [None] * n
        dist_out: list[int | None] = [None] * n
        alive = np.ones(n, bool)

        if cfg.reference_path:
            ref_ids, ref_sig, ref_hash = load_reference(cfg.reference_path, cfg.phash.exact)
            both = np.concatenate([sig.phash, ref_hash])
            pairs = search_pairs(both, k, parallel)
            cross = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]
            if ref_sig is not None and len(cross):
                merged = Signals(both, np.concatenate([sig.dhash, ref_sig.dhash]),
                                 np.concatenate([sig.luma_std, ref_sig.luma_std]),
                                 np.concatenate([sig.colour, ref_sig.colour]))
                cross = cross[merged.near(cross[:, 0], cross[:, 1], k, None)[0]]
            for i, j, d in cross[np.lexsort((cross[:, 1], cross[:, 2], cross[:, 0]))]:
                if alive[i]:
                    alive[i] = False
                    status[i], reason[i] = C.DROPPED, "near_reference"
                    dup_of[i], dist_out[i] = ref_ids[j - n], int(d)
                    detail[i] = f"within pHash distance {d} of reference image {ref_ids[j - n]} (max {k})"

        if cfg.exact and n:
            sha = np.array(rows[C.SHA256].to_pylist(), dtype=object)
            idx = np.flatnonzero(alive)
            order = idx[np.lexsort((rank[idx], sha[idx]))]
            first = None
            for pos, i in enumerate(order):
                if pos == 0 or sha[i] != sha[order[pos - 1]]:
                    first = i
                    continue
                alive[i] = False
                status[i], reason[i], dup_of[i], dist_out[i] = C.DROPPED, "exact_duplicate", uid[first], 0
                detail[i] = f"identical image bytes to {uid[first]}"

        if cfg.phash.enabled:
            kd = cfg.phash.dhash_distance
            keeper_of, distance = near_duplicates(sig, rank, alive, k, kd, parallel)
            for i in np.flatnonzero(keeper_of >= 0):
                keeper = int(keeper_of[i])
                status[i], reason[i], dup_of[i], dist_out[i] = C.DROPPED, "near_duplicate", uid[keeper], int(distance[i])
                detail[i] = f"near-duplicate of {uid[keeper]} (pHash distance {distance[i]}, max {k})"

        cols = decisions(rows, status, reason, detail)
        cols[C.DUP_OF] = pa.array(dup_of, pa.string())
        cols[C.DUP_DISTANCE] = pa.array(dist_out, pa.int16())
        return pa.table(cols, schema=self.output_schema)
