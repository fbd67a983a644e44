"""First claims across a run, in tasks: items in order, each with a set of keys; an item is refused
when one of its keys was claimed by an earlier item that was not itself refused.

That is a sequential rule (whether an item claims its keys depends on the items before it), but
only items that share a key can affect each other. So, with no task holding every key:

1. per shard: each item's keys, to the partition its key hashes to;
2. per partition: for each key held by two or more items, an edge from its first item to each
   other one; `algos.components` joins the items that share keys, directly or through others;
3. per shard: the keys of items in a component, to the partition the component hashes to;
4. per partition: each component's items in order, the rule applied as one process would.

An item that shares no key with any other is never refused and never leaves its shard's task.
Memory: a partition's keys, then the keys of the components in a partition (about as many as
there are repeated keys, however large the run).
"""

from __future__ import annotations

import numpy as np

from mmcurate.algos import partition
from mmcurate.algos.components import components
from mmcurate.algos.parallel import Tasks, submit_parts

Keys = dict[str, np.ndarray]  # "item": gid (int64, order = the rule's order), "key": fixed-width bytes


def _word(key: np.ndarray) -> np.ndarray:
    return np.frombuffer(np.ascontiguousarray(key.astype("S8")).tobytes(), np.uint64)


def _by_key(keys: Keys, parts: int) -> list[Keys]:
    return partition.split(keys, partition.bucket(_word(keys["key"]), parts), parts) if len(keys["item"]) else [{}] * parts


def _shared(*pieces: Keys) -> np.ndarray:
    got = partition.merge(pieces)
    if not got:
        return np.empty((0, 2), np.int64)
    order = np.lexsort((got["item"], got["key"]))
    key, item = got["key"][order], got["item"][order]
    first = np.r_[True, key[1:] != key[:-1]]
    head = item[np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))]
    other = ~first & (item != head)
    return np.stack([head[other], item[other]], axis=1)


def _to_component(keys: Keys, shard: int, parts: int, *labels: dict) -> list[dict]:
    mine = partition.of_shard(partition.merge(labels), shard) if any(labels) else {}
    if not mine or not len(mine["gid"]) or not len(keys["item"]):
        return [{}] * parts
    order = np.argsort(mine["gid"])
    gids, label = mine["gid"][order], mine["label"][order]
    at = np.minimum(np.searchsorted(gids, keys["item"]), len(gids) - 1)
    hit = gids[at] == keys["item"]
    out = {"label": label[at[hit]], "item": keys["item"][hit], "key": keys["key"][hit]}
    return partition.split(out, partition.bucket(out["label"].astype(np.uint64), parts), parts)


def _decide(parts: int, *pieces: dict) -> list[dict]:
    got = partition.merge(pieces)
    if not got:
        return [{}] * parts
    order = np.lexsort((got["item"], got["label"]))
    label, item, key = got["label"][order], got["item"][order], got["key"][order]
    starts = np.flatnonzero(np.r_[True, (item[1:] != item[:-1]) | (label[1:] != label[:-1])])
    refused: list[int] = []
    seen: set[bytes] = set()
    for a, b in zip(starts.tolist(), np.r_[starts[1:], len(item)].tolist()):
        if a == 0 or label[a] != label[a - 1]:
            seen = set()  # a new component: nothing before it shares a key with it
        mine = {bytes(k) for k in key[a:b]}
        if seen.isdisjoint(mine):
            seen |= mine
        else:
            refused.append(int(item[a]))
    return partition.by_group({"gid": np.array(refused, np.int64)}, parts)


def first_claims(tasks: Tasks, keyed: list, parts: int) -> list[list]:
    """References to refused items: for shard s, one reference per partition p, `out[p][s % parts]`,
    each {"gid": refused items} (or {}). `keyed[s]` is shard s's Keys (or a reference to them),
    every item's gid in shard s."""
    by_key = [submit_parts(tasks, parts, _by_key, k, parts) for k in keyed]
    edges = [tasks.submit(_shared, *(b[p] for b in by_key)) for p in range(parts)]
    del by_key
    labels = components(tasks, edges, parts)
    routed = [submit_parts(tasks, parts, _to_component, k, s, parts, *(lab[s % parts] for lab in labels))
              for s, k in enumerate(keyed)]
    return [submit_parts(tasks, parts, _decide, parts, *(r[p] for r in routed)) for p in range(parts)]
