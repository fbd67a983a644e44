"""DataComp's image-based filtering: keep the pool's samples that fall where a target task's images do.

As DataComp did it: fit k-means on the pool's CLIP image embeddings, find each reference image's
(the target task's training images) nearest centre, and keep the pool samples whose nearest
centre is one of those. Reference embeddings come from a parquet file (a `clip_image_embedding`
or `embedding` column) or are computed from a folder of images with the run's CLIP model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmcurate.algos.embeddings import KMEANS_SAMPLE, kmeans, nearest_centre, unit

POOL_ROWS_PER_CLUSTER = 128  # DataComp: 100k centres for 12.8M samples


def centres_of(emb: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, emb.shape[1]), np.float32)
    np.add.at(out, labels, emb)
    return unit(out)


def centres_wanted(rows: int, clusters: int | None) -> int:
    return min(clusters or max(2, rows // POOL_ROWS_PER_CLUSTER), rows)


def select(pool: np.ndarray, reference: np.ndarray, clusters: int | None, seed: int = 0, sample: int = KMEANS_SAMPLE):
    """(pool cluster labels, keep mask, number of target centres, k)."""
    k = centres_wanted(len(pool), clusters)
    labels = kmeans(pool, k, seed, sample)
    centres = centres_of(pool, labels, k)
    targets = np.unique(nearest_centre(reference, centres))
    return labels, np.isin(labels, targets), len(targets), k


def load_reference(path: str, embed_images) -> np.ndarray:
    """Unit-length reference embeddings from a parquet file or (via `embed_images(list[bytes])`) a folder."""
    ref = Path(path)
    if ref.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(ref)
        column = next((c for c in ("clip_image_embedding", "embedding") if c in table.column_names), None)
        if column is None:
            raise ValueError(f"{ref} has no clip_image_embedding or embedding column")
        emb = np.asarray(table[column].to_pylist(), np.float32)
    elif ref.is_dir():
        files = sorted(p for p in ref.rglob("*") if p.is_file())
        emb = embed_images([p.read_bytes() for p in files])
    else:
        raise ValueError(f"{ref}: no such file or folder")
    if not len(emb):
        raise ValueError(f"{ref}: no reference images or embeddings in it")
    return unit(emb)
