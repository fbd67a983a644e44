"""First claims across a run, in tasks: items in order, each with a set of keys, each key with a
capacity (how many items may claim it: 1 unless told); an item is refused when one of its keys
was already claimed by as many earlier items, not themselves refused, as its capacity.

That is a sequential rule (whether an item claims its keys depends on the items before it), but
only items that share a key held by more items than its capacity can affect each other (a key
within its capacity is never full). So, with no task holding every key:

1. per shard: each item's keys, to the partition its key hashes to;
2. per partition: for each key held by more items than its capacity, an edge from its first item
   to each other one; `algos.components` joins the items that share such keys, directly or through
   others (a key within its capacity joins nothing, however many items hold it);
3. per shard: the keys of items in a component, to the partition the component hashes to;
4. per partition: each component's items in order, the rule applied as one process would.

An item that shares no key over its capacity is never refused and never leaves its shard's task.
Memory: a partition's keys, then the keys of the components in a partition (about as many as
there are keys over their capacity, however large the run).
"""

from __future__ import annotations

import numpy as np

from mmcurate.algos import partition
from mmcurate.algos.components import components
from mmcurate.algos.parallel import Tasks, submit_parts

# "item": gid (int64, order = the rule's order), "key": fixed-width bytes; optional "cap": int64, the
# key's capacity (the same wherever the key is; 1 where absent)
Keys = dict[str, np.ndarray]


def _word(key: np.ndarray) -> np.ndarray:
    return np.frombuffer(np.ascontiguousarray(key.astype("S8")).tobytes(), np.uint64)


def _by_key(keys: Keys, parts: int) -> list[Keys]:
    return partition.split(keys, partition.bucket(_word(keys["key"]), parts), parts) if len(keys["item"]) else [{}] * parts


def _shared(*pieces: Keys) -> np.ndarray:
    got = partition.merge(pieces)
    if not got or not len(got["key"]):
        return np.empty((0, 2), np.int64)
    order = np.lexsort((got["item"], got["key"]))
    key, item, cap = got["key"][order], got["item"][order], _caps(got)[order]
    first = np.r_[True, key[1:] != key[:-1]]
    new = first | np.r_[True, item[1:] != item[:-1]]  # a key's next item (an item may list a key twice)
    group = np.cumsum(first) - 1
    over = (np.bincount(group, weights=new) > cap[first])[group]  # held by more items than it may be
    head = item[np.flatnonzero(first)][group]
    other = new & ~first & over
    return np.stack([head[other], item[other]], axis=1)


def _caps(keys: Keys) -> np.ndarray:
    return keys["cap"] if "cap" in keys else np.ones(len(keys["key"]), np.int64)


def _to_component(keys: Keys, shard: int, parts: int, *labels: dict) -> list[dict]:
    mine = partition.of_shard(partition.merge(labels), shard) if any(labels) else {}
    if not mine or not len(mine["gid"]) or not len(keys["item"]):
        return [{}] * parts
    order = np.argsort(mine["gid"])
    gids, label = mine["gid"][order], mine["label"][order]
    at = np.minimum(np.searchsorted(gids, keys["item"]), len(gids) - 1)
    hit = gids[at] == keys["item"]
    out = {"label": label[at[hit]], "item": keys["item"][hit], "key": keys["key"][hit], "cap": _caps(keys)[hit]}
    return partition.split(out, partition.bucket(out["label"].astype(np.uint64), parts), parts)


def _decide(parts: int, *pieces: dict) -> list[dict]:
    got = partition.merge(pieces)
    if not got or not len(got["item"]):
        return [{}] * parts
    order = np.lexsort((got["item"], got["label"]))
    label, item, key, cap = got["label"][order], got["item"][order], got["key"][order], got["cap"][order]
    starts = np.flatnonzero(np.r_[True, (item[1:] != item[:-1]) | (label[1:] != label[:-1])])
    refused: list[int] = []
    full_keys: list[bytes] = []
    held: dict[bytes, int] = {}
    for a, b in zip(starts.tolist(), np.r_[starts[1:], len(item)].tolist()):
        if a == 0 or label[a] != label[a - 1]:
            held = {}  # a new component: nothing before it shares a key with it
        mine = {bytes(k): int(c) for k, c in zip(key[a:b], cap[a:b])}
        full = sorted(k for k, c in mine.items() if held.get(k, 0) >= c)
        if full:
            refused += [int(item[a])] * len(full)
            full_keys += full
        else:
            for k in mine:
                held[k] = held.get(k, 0) + 1
    return partition.by_group({"gid": np.array(refused, np.int64), "key": np.array(full_keys, key.dtype)}, parts)


def first_claims(tasks: Tasks, keyed: list, parts: int) -> list[list]:
    """References to refused items: for shard s, one reference per partition p, `out[p][s % parts]`,
    each {"gid": refused items, "key": a key that was full} (or {}), a row per full key of a refused
    item (so an item may come more than once). `keyed[s]` is shard s's Keys (or a reference to
    them), every item's gid in shard s."""
    by_key = [submit_parts(tasks, parts, _by_key, k, parts) for k in keyed]
    edges = [tasks.submit(_shared, *(b[p] for b in by_key)) for p in range(parts)]
    del by_key
    labels = components(tasks, edges, parts)
    routed = [submit_parts(tasks, parts, _to_component, k, s, parts, *(lab[s % parts] for lab in labels))
              for s, k in enumerate(keyed)]
    return [submit_parts(tasks, parts, _decide, parts, *(r[p] for r in routed)) for p in range(parts)]
