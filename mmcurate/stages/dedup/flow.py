"""Dedup's decisions as a dataflow of tasks, none of which holds every row of the run.

The same decisions as the one-task path (`signals.py`; tested equal), in `parts` hash partitions
of about `engine.rows_per_partition` rows each. A row is named by its gid (`algos/partition`).

1. **scan**, per shard: rows near a reference image (the reference set is small and goes to
   every shard), and each other row's (sha256, rank key, uid) to the part its sha256 hashes to.
2. **exact**, per part: identical sha256s are in one part; the best-ranked is kept.
3. **values**, per shard: the pHash (and dHash) of each row still alive, to the part its value
   hashes to. **unique**, per part: one representative row per distinct value, and an edge from
   every other row with that value to it (a thousand blank images are one value, not 10^6 pairs).
4. **bands**, in waves of a few band choices (`algos/hamming`'s exact pigeonhole plan): each
   distinct value's key per choice, to the part the (choice, key) hashes to; per part, the pairs
   that share a key and are within the radius (`hamming.band_edges`; hot keys joined as stars).
   A wave's keys are freed before the wave after next starts, so the store holds two waves.
5. **components** over the edges, in partitions by node (`algos/components`: large-star and
   small-star phases until two change nothing): each row's group, named by its smallest gid.
6. **members**, per shard: the signals of the rows in a group, to the part the group hashes to.
   **greedy**, per part: each group in rank order, as `algos/grouping` decides it.
7. **write**, per shard: its rows' decisions from the tasks above, assembled and stored.

Edges only ever group rows for `Signals.near` to decide, and every near pair is joined by some
edge, so decisions are those of the one-task path whatever the parts or the hot-key cut.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from mmcurate.algos import hamming, partition
from mmcurate.algos.components import components
from mmcurate.algos.grouping import greedy
from mmcurate.algos.parallel import Tasks, submit_parts
from mmcurate.schemas import columns as C
from mmcurate.stages.base import GlobalStage, ShardIO, assemble
from mmcurate.stages.dedup.signals import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    NEAR_REFERENCE,
    Signals,
    load_reference,
    rank_key,
    reference_matches,
    verdicts,
)

log = logging.getLogger(__name__)

HOT = 1000  # a band key shared by more distinct hashes than this joins them as a star
PASSES_PER_WAVE = 4  # band choices whose keys are in the object store at once (two waves in flight)
Part = dict[str, np.ndarray]


def _ascii(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype("S")


# 1-2: reference and exact duplicates


def _scan(stage: GlobalStage, io: ShardIO, shard: int, parts: int, ref) -> list:
    cfg = stage.config.dedup
    rows = io.read(shard)
    n = rows.num_rows
    alive = np.ones(n, bool)
    near_ref = (np.empty(0, np.int64),) * 3
    if ref is not None and n:
        _, ref_sig, ref_hash = ref
        near_ref = reference_matches(Signals.from_table(rows), ref_sig, ref_hash, cfg.phash.max_distance,
                                     lambda fn, items, shared: [fn(shared, i) for i in items])
        alive[near_ref[0]] = False
    if not cfg.exact:
        return [near_ref, *({} for _ in range(parts))]
    idx = np.flatnonzero(alive)
    sha = _ascii(rows[C.SHA256])[idx]
    keys = {"sha": sha, "key": rank_key(rows, cfg.phash.keep)[idx], "uid": _ascii(rows[C.UID])[idx],
            "gid": partition.gid(shard, n)[idx]}
    return [near_ref, *partition.split(keys, partition.bucket(_fold(sha), parts), parts)]


def _fold(sha: np.ndarray) -> np.ndarray:
    """One uint64 per sha256 hex string, from all of its characters (not only a prefix)."""
    words = np.frombuffer(np.ascontiguousarray(sha.astype("S64")).tobytes(), np.uint64).reshape(len(sha), 8)
    out = np.zeros(len(sha), np.uint64)
    for w in words.T:
        out = (out ^ w) * partition.GOLDEN
    return out


def _exact(parts: int, *pieces: Part) -> list[Part]:
    got = partition.merge(pieces)
    if not got or not len(got["gid"]):
        return [{} for _ in range(parts)]
    order = np.lexsort((got["uid"], got["key"], got["sha"]))
    sha, gid, uid = got["sha"][order], got["gid"][order], got["uid"][order]
    same = np.r_[False, sha[1:] == sha[:-1]]
    first = np.maximum.accumulate(np.where(same, 0, np.arange(len(sha))))
    return partition.by_group({"gid": gid[same], "name": uid[first[same]]}, parts)


# 3-5: near-duplicate groups


def _values(stage: GlobalStage, io: ShardIO, shard: int, parts: int, near_ref, *exact: Part) -> list[Part]:
    cfg = stage.config.dedup
    rows = io.read(shard)
    n = rows.num_rows
    alive = np.ones(n, bool)
    alive[near_ref[0]] = False
    dropped = partition.merge(exact)
    if dropped:
        alive[partition.local(partition.of_shard(dropped, shard)["gid"])] = False
    sig = Signals.from_table(rows)
    gids = partition.gid(shard, n)[alive]
    out = []
    for values in [sig.phash] + ([sig.dhash] if cfg.phash.dhash_distance is not None else []):
        v = values[alive]
        out += partition.split({"value": v, "gid": gids}, partition.bucket(v, parts), parts)
    return out


def _unique(*pieces: Part) -> tuple[np.ndarray, Part]:
    got = partition.merge(pieces)
    if not got:
        return np.empty((0, 2), np.int64), {"value": np.empty(0, np.uint64), "rep": np.empty(0, np.int64)}
    order = np.lexsort((got["gid"], got["value"]))
    v, g = got["value"][order], got["gid"][order]
    first = np.r_[True, v[1:] != v[:-1]]
    rep = g[np.maximum.accumulate(np.where(first, np.arange(len(v)), 0))]
    return np.stack([g[~first], rep[~first]], axis=1), {"value": v[first], "rep": g[first]}


def _band_keys(uniq: Part, bands: hamming.BandPlan, combos: list[tuple[int, ...]], first: int,
               parts: int) -> list[Part]:
    v, rep = uniq["value"], uniq["rep"]
    keys = [hamming.band_values(v, bands, combo) for combo in combos]
    combo = np.repeat(np.arange(first, first + len(combos)), len(v))
    key = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    part = partition.bucket(key ^ (combo.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)), parts)
    return partition.split({"combo": combo, "key": key, "value": np.tile(v, len(combos)), "rep": np.tile(rep, len(combos))},
                           part, parts)


def _band_pairs(radius: int, hot: int, *pieces: Part) -> np.ndarray:
    got = partition.merge(pieces)
    if not got:
        return np.empty((0, 2), np.int64)
    return hamming.band_edges(got["combo"], got["key"], got["value"], got["rep"], radius, hot)


def band_search(tasks: Tasks, uniq: list, radius: int, n: int, parts: int) -> list:
    """References to edges between the reps of every two distinct values within `radius`, from
    `uniq` (references to parts of distinct values and their reps): step 4 of the module doc."""
    bands = hamming.plan(max(n, 2), radius)
    combos = bands.combos
    waves = [combos[i:i + PASSES_PER_WAVE] for i in range(0, len(combos), PASSES_PER_WAVE)]
    edges: list = []
    in_flight: list[list] = []
    for w, wave in enumerate(waves):
        keyed = [submit_parts(tasks, parts, _band_keys, u, bands, wave, w * PASSES_PER_WAVE, parts) for u in uniq]
        found = [tasks.submit(_band_pairs, radius, HOT, *(kp[p] for kp in keyed)) for p in range(parts)]
        del keyed
        edges += found
        in_flight.append(found)
        if len(in_flight) > 2:  # keys of at most two waves in the store
            tasks.wait(in_flight.pop(0))
    return edges


# 6-7: groups decided, shards written


def _members(stage: GlobalStage, io: ShardIO, shard: int, parts: int, *labels: Part) -> list[Part]:
    mine = partition.of_shard(partition.merge(labels), shard) if any(labels) else {}
    if not mine or not len(mine["gid"]):
        return [{} for _ in range(parts)]
    rows = io.read(shard)
    loc = partition.local(mine["gid"])
    sig = Signals.from_table(rows)
    group = {"label": mine["label"], "gid": mine["gid"], "key": rank_key(rows, stage.config.dedup.phash.keep)[loc],
             "uid": _ascii(rows[C.UID])[loc], "phash": sig.phash[loc], "dhash": sig.dhash[loc],
             "luma": sig.luma_std[loc], "colour": sig.colour[loc]}
    return partition.split(group, partition.bucket(mine["label"].astype(np.uint64), parts), parts)


def _greedy(k: int, kd: int | None, parts: int, *pieces: Part) -> list[Part]:
    got = partition.merge(pieces)
    if not got:
        return [{} for _ in range(parts)]
    order = np.lexsort((got["uid"], got["key"], got["label"]))
    got = {name: values[order] for name, values in got.items()}
    sig = Signals(got["phash"], got["dhash"], got["luma"], got["colour"])
    n = len(order)
    keeper_of, distance = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    starts = np.flatnonzero(np.r_[True, got["label"][1:] != got["label"][:-1]])
    for members in np.split(np.arange(n), starts[1:]):
        greedy(members, lambda keeper, rest: sig.near(keeper, rest, k, kd), keeper_of, distance)
    d = keeper_of >= 0
    return partition.by_group({"gid": got["gid"][d], "name": got["uid"][keeper_of[d]], "dist": distance[d]}, parts)


def _write(stage: GlobalStage, io: ShardIO, shard: int, started: float, parts: int, ref, near_ref,
           *groups: Part) -> list[dict]:
    rows = io.read(shard)
    n = rows.num_rows
    why, dist = np.zeros(n, np.int8), np.zeros(n, np.int64)
    names: list[str | None] = [None] * n
    i, j, d = near_ref
    why[i], dist[i] = NEAR_REFERENCE, d
    for row, ref_index in zip(i.tolist(), j.tolist()):
        names[row] = ref[0][ref_index]
    for reason, found in ((EXACT_DUPLICATE, partition.merge(groups[:parts])), (NEAR_DUPLICATE, partition.merge(groups[parts:]))):
        if not found:
            continue
        found = partition.of_shard(found, shard)
        loc = partition.local(found["gid"])
        why[loc] = reason
        if "dist" in found:
            dist[loc] = found["dist"]
        for row, name in zip(loc.tolist(), found["name"].tolist()):
            names[row] = name.decode()
    out = assemble(stage, rows, verdicts(why, names, dist, stage.config.dedup.phash.max_distance, rows[C.UID].to_pylist()))
    return [io.write(shard, out, started)]


def decide(stage: GlobalStage, io: ShardIO, tasks: Tasks, parts: int) -> list:
    """Submit the dataflow; references to each pending shard's [stats]."""
    cfg = stage.config.dedup
    started = time.time()
    log.debug("dedup: %d rows in %d partitions of %d shards", io.rows, parts, io.shards)
    shards = range(io.shards)
    ref = tasks.submit(load_reference, cfg.reference_path, cfg.phash.exact) if cfg.reference_path else None
    scans = [submit_parts(tasks, parts + 1, _scan, stage, io, s, parts, ref) for s in shards]
    near_ref = [scan[0] for scan in scans]
    exact = [submit_parts(tasks, parts, _exact, parts, *(scan[1 + p] for scan in scans)) for p in range(parts)]
    del scans
    exact_of = [[exact[p][s % parts] for p in range(parts)] for s in shards]
    near_of: list[list] = [[] for _ in shards]
    if cfg.phash.enabled:
        groups = _near_groups(stage, io, tasks, parts, near_ref, exact_of)
        near_of = [[groups[p][s % parts] for p in range(parts)] for s in shards]
    return [tasks.submit(_write, stage, io, s, started, parts, ref, near_ref[s], *exact_of[s], *near_of[s])
            for s in io.pending]


def _near_groups(stage: GlobalStage, io: ShardIO, tasks: Tasks, parts: int, near_ref: list, exact_of: list) -> list:
    cfg = stage.config.dedup
    radii = [cfg.phash.max_distance] + ([cfg.phash.dhash_distance] if cfg.phash.dhash_distance is not None else [])
    values = [submit_parts(tasks, parts * len(radii), _values, stage, io, s, parts, near_ref[s], *exact_of[s])
              for s in range(io.shards)]
    edge_refs = []
    for h, radius in enumerate(radii):
        uniq = []
        for p in range(parts):
            star, distinct = tasks.submit(_unique, *(v[h * parts + p] for v in values), returns=2)
            edge_refs.append(star)
            uniq.append(distinct)
        edge_refs += band_search(tasks, uniq, radius, io.rows, parts)
    del values
    labels = components(tasks, edge_refs, parts)
    members = [submit_parts(tasks, parts, _members, stage, io, s, parts, *(lab[s % parts] for lab in labels))
               for s in range(io.shards)]
    k, kd = cfg.phash.max_distance, cfg.phash.dhash_distance
    return [submit_parts(tasks, parts, _greedy, k, kd, parts, *(m[p] for m in members)) for p in range(parts)]
