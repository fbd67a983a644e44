"""The features stage: sha256, pHash, dHash and colour signals of every stored image.

Download (or load) computes them from the pixels it has just resized where it can
(`download.pixel_features`): this stage then only hands them on. It decodes the stored image
where they are missing (shards written before, `dedup.phash.exact`, an image the resizer did
not hand over), once.
"""

from __future__ import annotations

import pyarrow as pa

from mmcurate.filters.base import Verdicts
from mmcurate.filters.image_hash import ImageSignals, signals
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages.base import Stage
from mmcurate.stages.download import FEATURE_FIELDS, pixel_features

HANDED_ON = tuple(f.name for f in FEATURE_FIELDS)


class FeaturesStage(Stage):
    """Per-shard image features for deduplication; an image that cannot be decoded fails here."""

    name = "features"
    version = "1"
    output_schema = C.FEATURES_SCHEMA
    score_columns = (C.SHA256, C.PHASH, C.DHASH, C.LUMA_STD)
    data_columns = (C.SHA256, C.PHASH, C.DHASH, C.LUMA_STD, C.COLOUR)
    input_columns = (C.IMAGE,)

    def __init__(self, config: Config):
        super().__init__(config)
        if pixel_features(config):
            self.input_columns = (C.IMAGE, *HANDED_ON)
            self.optional_inputs = HANDED_ON

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.dedup.active

    def config_sections(self) -> dict:
        return {"exact": self.config.dedup.phash.exact}

    def judge(self, rows: pa.Table) -> Verdicts:
        exact = self.config.dedup.phash.exact
        out: dict[str, list] = {k: [] for k in self.data_columns}
        reasons, details = [], []
        handed = rows.select(HANDED_ON).to_pylist() if C.SHA256 in rows.column_names else [{}] * rows.num_rows
        for data, given in zip(rows.column(C.IMAGE).to_pylist(), handed):
            try:
                sig = ImageSignals(**given) if given.get(C.SHA256) is not None else signals(data, exact=exact)
            except Exception as err:  # stored bytes that no longer decode: a ledger reason, not a crash
                reasons.append("undecodable_image")
                details.append(f"{type(err).__name__}: {err}")
                sig = None
            else:
                reasons.append(None)
                details.append(None)
            for name, values in out.items():
                values.append(getattr(sig, name) if sig is not None else None)
        return Verdicts(data=out, reasons=reasons, details=details, failed=True)
