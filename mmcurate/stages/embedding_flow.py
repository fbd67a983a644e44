"""What the embedding stages share over a run larger than one partition (the shape of NeMo
Curator's SemDeDup): k-means centres fitted on a bounded sample, no task holding every embedding.

1. **sample**, per shard: the stored embeddings of a seeded sample of rows, chosen by row number
   (the same rows however the run is sharded), about `kmeans_sample` rows in all;
2. **fit**, one task: spherical k-means centres on that sample (memory: the sample, not the run);
3. then each stage assigns every shard's rows to their nearest centre in tasks of its own:
   `image_based` decides each shard there, `semantic_dedup` routes rows to their cluster's
   partition and searches each cluster there.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.algos.embeddings import KMEANS_SAMPLE, fit_centres, sampled, stored, unit
from mmcurate.algos.parallel import Tasks
from mmcurate.schemas import columns as C
from mmcurate.stages.base import ShardIO

SEED = 0


def without_default_sample(section: dict) -> dict:
    """A section for the fingerprint: `kmeans_sample` at its default is the constant earlier
    versions used, so leaving it out keeps their run dirs' fingerprints (and their work)."""
    return {k: v for k, v in section.items() if not (k == "kmeans_sample" and v == KMEANS_SAMPLE)}


def _sample(io: ShardIO, shard: int, fraction: float) -> np.ndarray:
    rows = io.read(shard)
    if not rows.num_rows:
        return np.zeros((0, 0), np.float16)
    return stored(rows[C.CLIP_EMBEDDING].filter(pa.array(sampled(rows[C.ROW].to_numpy(), fraction, SEED))))


def _fit(k: int, *samples: np.ndarray) -> np.ndarray:
    got = [s for s in samples if len(s)]
    if not got:
        raise RuntimeError("k-means: no row of the run was sampled (the run's row count overstated its shards)")
    sample = unit(np.concatenate(got))
    return fit_centres(sample, k, np.random.default_rng(SEED))


def centres(tasks: Tasks, io: ShardIO, k: int, sample: int):
    """A reference to k-means centres fitted on about `sample` of the run's rows."""
    fraction = sample / max(io.rows, 1)
    return tasks.submit(_fit, k, *(tasks.submit(_sample, io, s, fraction) for s in range(io.shards)))
