"""The features stage: sha256, pHash, dHash and colour signals of every stored image, one decode each."""

from __future__ import annotations

import pyarrow as pa

from mmcurate.filters.image_hash import signals
from mmcurate.pipelines.stage import Stage, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config


class FeaturesStage(Stage):
    """Per-shard image features for deduplication; an image that cannot be decoded fails here."""

    name = "features"
    version = "1"
    output_schema = C.FEATURES_SCHEMA
    score_columns = (C.SHA256, C.PHASH, C.DHASH, C.LUMA_STD)
    data_columns = (C.SHA256, C.PHASH, C.DHASH, C.LUMA_STD, C.COLOUR)
    input_columns = (C.IMAGE,)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.dedup.active

    def config_sections(self) -> dict:
        return {"exact": self.config.dedup.phash.exact}

    def process(self, rows: pa.Table) -> pa.Table:
        exact = self.config.dedup.phash.exact
        out: dict[str, list] = {k: [] for k in self.data_columns}
        status, reason, detail = [], [], []
        for data in rows.column(C.IMAGE).to_pylist():
            try:
                sig = signals(data, exact=exact)
            except Exception as err:  # stored bytes that no longer decode: a ledger reason, not a crash
                status.append(C.FAILED)
                reason.append("undecodable_image")
                detail.append(f"{type(err).__name__}: {err}")
                for values in out.values():
                    values.append(None)
                continue
            status.append(C.KEPT)
            reason.append(None)
            detail.append(None)
            for name in self.data_columns:
                out[name].append(getattr(sig, name))
        cols = decisions(rows, status, reason, detail)
        for name in self.data_columns:
            cols[name] = pa.array(out[name], self.output_schema.field(name).type)
        return pa.table(cols, schema=self.output_schema)
