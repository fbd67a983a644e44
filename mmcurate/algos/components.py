"""Connected components of a graph whose edges are spread over tasks, no task holding them all.

The alternating algorithm of Kiveris et al., "Connected Components in MapReduce and Beyond"
(SoCC 2014). Nodes are int64 (gids); an edge is a row of an (m, 2) array. Each phase groups the
edges by one of their nodes, in `parts` hash partitions of that node, and rewires them:

- **large-star**: a node u links each *larger* neighbour to m(u), the smallest of u and its
  neighbours;
- **small-star**: a node u links itself and each *smaller* neighbour to the smallest of those.

Neither changes which nodes are connected, and together they converge to one star per
component, centred on its smallest node, in O(log² n) phases (a handful on duplicate graphs, whose
components are small). A phase changes nothing exactly when no node has both a smaller and a
larger neighbour (large-star) or no node has two smaller neighbours (small-star); two quiet phases
in a row leave nothing but such stars, so a node's label is then the smallest of itself and its
neighbours: the same labels as `scipy.sparse.csgraph` over all the edges at once.

Memory: a task holds one partition of one phase's edges (each edge twice, once per direction);
the coordinator holds references and one count per partition per phase.
"""

from __future__ import annotations

import logging

import numpy as np

from mmcurate.algos import partition
from mmcurate.algos.parallel import Tasks, submit_parts

log = logging.getLogger(__name__)
LARGE, SMALL = "large", "small"
MAX_PHASES = 200  # O(log^2 n): about 30 at 10^9 nodes on a path, the worst case; never reached


def _cut(edges: np.ndarray, parts: int) -> list[np.ndarray]:
    """Each edge in both directions, to the part of its first node."""
    both = np.concatenate([edges, edges[:, ::-1]])
    got = partition.split({"e": both}, partition.bucket(both[:, 0].astype(np.uint64), parts), parts)
    return [g["e"] for g in got]


def _scatter(edges: np.ndarray, parts: int) -> list[np.ndarray]:
    return _cut(np.asarray(edges, np.int64).reshape(-1, 2), parts)


def _grouped(pieces: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct directed edges (u, v) sorted by u then v, and where each u's run starts."""
    e = np.concatenate([p for p in pieces if len(p)] or [np.empty((0, 2), np.int64)])
    e = e[np.lexsort((e[:, 1], e[:, 0]))]
    e = e[np.r_[True, (e[1:] != e[:-1]).any(axis=1)]] if len(e) else e
    u, v = e[:, 0], e[:, 1]
    return u, v, np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.empty(0, np.int64)


def _star(phase: str, parts: int, *pieces: np.ndarray) -> list:
    """One phase over one partition: [how many nodes it rewired, the new edges cut in `parts`]."""
    u, v, starts = _grouped(pieces)
    if not len(u):
        return [0, *(np.empty((0, 2), np.int64) for _ in range(parts))]
    group = np.cumsum(np.r_[True, u[1:] != u[:-1]]) - 1
    lowest = np.minimum(u[starts], v[starts])  # v is sorted within a run: its smallest neighbour first
    m = lowest[group]
    ends = np.r_[starts[1:], len(u)] - 1
    alone = u[starts][(v[starts] == u[starts]) & (v[ends] == u[starts])]  # a node whose one edge is to itself: kept as it is
    alone = np.stack([alone, alone], axis=1)
    if phase == LARGE:
        changed = int(((lowest < u[starts]) & (v[ends] > u[starts])).sum())
        keep = v > u
        out = np.concatenate([np.stack([v[keep], m[keep]], axis=1), alone])
    else:
        smaller = v < u
        changed = int((np.bincount(group[smaller], minlength=len(starts)) >= 2).sum())
        linked = smaller & (v != m)
        out = np.concatenate([np.stack([v[linked], m[linked]], axis=1),
                              np.stack([u[starts], lowest], axis=1)[lowest < u[starts]], alone])
    return [changed, *_cut(out, parts)]


def _labels(parts: int, *pieces: np.ndarray) -> list[dict[str, np.ndarray]]:
    u, v, starts = _grouped(pieces)
    if not len(u):
        return [{} for _ in range(parts)]
    return partition.by_group({"gid": u[starts], "label": np.minimum(u[starts], v[starts])}, parts)


def components(tasks: Tasks, edge_refs: list, parts: int) -> list[list]:
    """Each node's component, named by its smallest node, from references to (m, 2) edge arrays.

    Returns, for each of `parts` partitions, `parts` references: the {"gid", "label"} of the
    partition's nodes in shard group g (`partition.by_group`), so a shard reads one from each."""
    cut = [submit_parts(tasks, parts, _scatter, e, parts) for e in edge_refs]
    quiet, phase = 0, 0
    while quiet < 2:
        if phase == MAX_PHASES:
            raise RuntimeError(f"connected components did not converge in {MAX_PHASES} phases")
        name = LARGE if phase % 2 == 0 else SMALL
        outs = [tasks.submit(_star, name, parts, *(c[p] for c in cut), returns=parts + 1) for p in range(parts)]
        cut = [o[1:] for o in outs]
        quiet = quiet + 1 if sum(tasks.get(o[0]) for o in outs) == 0 else 0
        phase += 1
    log.debug("components: %d phases over %d partitions", phase, parts)
    return [submit_parts(tasks, parts, _labels, parts, *(c[p] for c in cut)) for p in range(parts)]
