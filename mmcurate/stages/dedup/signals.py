"""What dedup decides on, and its decisions for rows that fit in one task.

`Signals` are the per-row arrays (pHash, dHash, detail, colour layout) and `Signals.near` says
when two rows are near-duplicates. The one-task path: near-duplicate pairs come from the exact
banded search in `algos/hamming`, run as parallel passes that each see every hash;
`algos/grouping` turns them into keepers (the best row by the keep policy), so that each dropped
row is within `max_distance` of the keeper its detail names (and confirmed by the second signal),
never merely chained to it. `flow.py` makes the same decisions with no task holding every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.algos import grouping, hamming
from mmcurate.algos.parallel import Parallel
from mmcurate.filters.base import Verdicts
from mmcurate.filters.image_hash import COLOUR_GRID, colour_correlation, colour_distance, hex_to_uint64
from mmcurate.schemas import columns as C

# Second signals. Low-detail images (blank pages, solid colours, faint gradients) have pHashes
# with few distinct DCT signs, so unrelated ones collide; their matches must also agree in colour.
LOW_DETAIL_STD = 6.0  # luma std (0..255) of the 32x32 greyscale
LOW_DETAIL_COLOUR = 12.0  # mean abs colour-grid difference allowed for low-detail matches
MAX_COLOUR = 60.0  # for every match: a roughly similar colour layout (brightness shifts pass)
# ...and the same layout: the colour grids' correlation (brightness and contrast changes leave it
# near 1; a crop shifted across a sky or a wall moves its few details to other cells). Grids with
# too little spread to correlate (fine textures, near-uniform images) skip this check.
MIN_COLOUR_CORRELATION = 0.95
MIN_COLOUR_SPREAD = 4.0  # std of a grid's values (0..255) below which correlation is noise
MAX_DISTANCE_SUM = 2.5  # a dHash match: pHash + dHash distances at most this times k
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

        Near: colour layouts agree (strictly for low-detail images; otherwise roughly, and
        correlated where the grids have the spread to correlate) and either pHash <= k with
        dHash <= 2k, or (when kd is set) dHash <= kd with pHash <= 2k and the two distances
        together <= 2.5k. dHash catches the border crops and re-scalings that move pHash a little
        past k; each hash confirms the other. The sum and the correlation keep apart distinct crops
        of one photograph dominated by a flat region, whose hashes carry little (tests/dedup_eval.py
        `hard_negatives`; the README gives precision and recall before and after).
        """
        pd = hamming.popcount(self.phash[i] ^ self.phash[j])
        dd = hamming.popcount(self.dhash[i] ^ self.dhash[j])
        cdist = colour_distance(self.colour[i], self.colour[j])
        low = np.minimum(self.luma_std[i], self.luma_std[j]) < LOW_DETAIL_STD
        corr, spread = colour_correlation(self.colour[i], self.colour[j])
        layout_ok = (cdist <= MAX_COLOUR) & ((spread < MIN_COLOUR_SPREAD) | (corr >= MIN_COLOUR_CORRELATION))
        colour_ok = np.where(low, cdist <= LOW_DETAIL_COLOUR, layout_ok)
        hashes_ok = (pd <= k) & (dd <= 2 * k)
        if kd is not None:
            hashes_ok |= (dd <= kd) & (pd <= 2 * k) & (pd + dd <= MAX_DISTANCE_SUM * k)
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




def rank_key(rows: pa.Table, keep: str) -> np.ndarray:
    """The keep policy's first sort key (ties by uid): the row number for `first`, minus the
    original area for `largest`. Rows are kept in (key, uid) order."""
    if keep == "first":
        return rows[C.ROW].to_numpy(zero_copy_only=False).astype(np.int64)
    w = rows[C.ORIGINAL_WIDTH].to_numpy(zero_copy_only=False).astype(np.int64)
    h = rows[C.ORIGINAL_HEIGHT].to_numpy(zero_copy_only=False).astype(np.int64)
    return -(w * h)


def rank(rows: pa.Table, keep: str) -> np.ndarray:
    """Position of each row in keep-policy order (0 = keep first)."""
    key = rank_key(rows, keep)
    if keep == "first":
        order = np.argsort(key, kind="stable")
    else:  # Arrow's stable sort by (key, uid), no Python string per row
        keys = pa.table({"key": key, "uid": rows[C.UID]})
        order = pc.sort_indices(keys, sort_keys=[("key", "ascending"), ("uid", "ascending")]).to_numpy()
    out = np.empty(len(order), np.int64)
    out[order] = np.arange(len(order))
    return out


def reference_matches(sig: Signals, ref_sig: Signals | None, ref_hash: np.ndarray, k: int,
                      parallel: Parallel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows within k of a reference image: (row, reference, distance), each row's nearest (then first)."""
    n = len(sig.phash)
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
    return cross[first, 0], cross[first, 1] - n, cross[first, 2]


def verdicts(why: np.ndarray, names: list[str | None], dist: np.ndarray, k: int, uids: list[str]) -> Verdicts:
    """Dedup's verdicts: `why` indexes REASONS (0: kept); `names[i]` is the kept row's uid (or the
    reference image's id) that dropped row i matches; `dist` the pHash distance; `uids` the rows' own
    (a repeated input row shares its uid with the row kept: its detail says so)."""
    n = len(why)
    dup_of: list[str | None] = [None] * n
    detail: list[str | None] = [None] * n
    for i in np.flatnonzero(why > 0).tolist():
        w, name, d = int(why[i]), names[i], int(dist[i])
        dup_of[i] = name
        if w == NEAR_REFERENCE:
            detail[i] = f"within pHash distance {d} of reference image {name} (max {k})"
        elif w == EXACT_DUPLICATE:
            detail[i] = f"identical image bytes to {name}"
        else:
            detail[i] = f"near-duplicate of {name} (pHash distance {d}, max {k})"
        if w != NEAR_REFERENCE and name == uids[i]:
            detail[i] += (": a repeat of an earlier input row (same url and caption, so the same uid; "
                          f"audit --uid {name} lists both rows)")
    is_dropped = why > 0
    reason = pa.DictionaryArray.from_arrays(pa.array(why, mask=~is_dropped), list(REASONS))
    return Verdicts(
        scores={C.DUP_OF: pa.array(dup_of, pa.string()),
                C.DUP_DISTANCE: pa.array(dist, pa.int16(), mask=~is_dropped)},
        reasons=reason.cast(pa.string()), details=detail,
    )
