"""Connected components in partitions (large-star / small-star) label every node as scipy does
over all the edges at once: paths in random order (the slowest case), random graphs, stars,
self-loops and repeated edges, with the edges in several pieces and several partitions."""

from __future__ import annotations

import numpy as np
import pytest

from mmcurate.algos import components
from mmcurate.algos.parallel import SerialTasks


def scipy_labels(edges: np.ndarray) -> dict[int, int]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inverse = np.unique(edges.reshape(-1), return_inverse=True)
    inverse = inverse.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(inverse), np.int8), (inverse[:, 0], inverse[:, 1])), shape=(len(nodes),) * 2)
    labels = connected_components(graph, directed=False)[1]
    smallest = np.full(labels.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, labels, nodes)
    return dict(zip(nodes.tolist(), smallest[labels].tolist()))


def labels_of(edges: np.ndarray, pieces: int, parts: int) -> dict[int, int]:
    got: dict[int, int] = {}
    for per_part in components.components(SerialTasks(), np.array_split(edges, pieces), parts):
        for g, found in enumerate(per_part):
            if found:
                assert ((found["gid"] >> 32) % parts == g).all()  # each shard group's nodes, for its shards
                got.update(zip(found["gid"].tolist(), found["label"].tolist()))
    return got


def graph(kind: str, n: int, rng) -> np.ndarray:
    ids = (np.int64(7) << 32) * rng.integers(0, 4, n) + rng.permutation(n) * 7919 + 13  # gids of several shards
    if kind == "path":
        return np.stack([ids[:-1], ids[1:]], axis=1)
    if kind == "star":
        return np.stack([np.full(n - 1, ids[0]), ids[1:]], axis=1)
    e = ids[rng.integers(0, n, (n, 2))]  # self-loops and repeats among them
    return np.concatenate([e, e[: n // 10]])


@pytest.mark.parametrize("kind", ["path", "star", "random"])
@pytest.mark.parametrize("parts", [1, 3, 7])
def test_components_in_partitions_equal_scipy(kind, parts):
    rng = np.random.default_rng(parts)
    edges = graph(kind, 3000, rng)
    assert labels_of(edges, pieces=4, parts=parts) == scipy_labels(edges)


def test_no_edges_no_labels():
    assert labels_of(np.empty((0, 2), np.int64), pieces=1, parts=3) == {}
