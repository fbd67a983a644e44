"""A Hugging Face `datasets` folder (`load_from_disk`) made from a generator of records and put
into place whole: built in a temp folder beside it, then renamed there (one folder put on a store).
The pairs export (`export.export_hf`) and the OBELICS export of documents share it."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmcurate.engine import atomic
from mmcurate.storage import paths


def save_dataset(features: Any, records: Callable[[], Iterator[dict]] | None, out_dir: Path,
                 per_file: int | None = None) -> int:
    """Write the records `records()` yields (None: no record, an empty dataset with `features`'
    columns) to `out_dir`, in ceil(records / per_file) arrow files where given; their count.
    `Dataset.from_generator` hashes the generator, so it is given a factory, not a live iterator."""
    import datasets

    remote = paths.is_remote(out_dir)
    if not remote:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=None if remote else out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        if records is None:  # from_generator refuses a generator without rows
            ds = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
        else:
            ds = datasets.Dataset.from_generator(records, features=features, cache_dir=str(Path(tmp) / "cache"))
        count = ds.num_rows
        shards = 1 if not count else math.ceil(count / per_file) if per_file else None  # 0 files would not load
        ds.save_to_disk(str(Path(tmp) / "dataset"), num_shards=shards)
        del ds
        atomic.remove(out_dir)
        if remote:  # its done marker is written after it: a crash between leaves it to be made again
            paths.put_folder(Path(tmp) / "dataset", out_dir)
        else:
            (Path(tmp) / "dataset").rename(out_dir)
    return count
