"""The load stage, in download's place when the input is a pool already downloaded (webdataset
tars, img2dataset's parquet, an image folder): each image is read where it lies and checked and
re-encoded exactly as a downloaded one is (`download.ImageCheck`). Nothing touches the network."""

from __future__ import annotations

import os

import pyarrow as pa

from mmcurate.filters.base import Verdicts
from mmcurate.ingest import pools
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages.base import Cluster, Resources, Stage
from mmcurate.stages.download import DownloadStage, HandsOnFeatures, ImageCheck, Outcome, outcome_scores, pixel_features


class LoadStage(HandsOnFeatures, Stage):
    """Reads, checks and resizes every image of a shard from the pool; failures become ledger reasons."""

    name = "load"
    version = "1"
    output_schema = C.LOAD_SCHEMA
    score_columns = DownloadStage.score_columns[:-1]  # no attempts: a pool's image is read once
    data_columns = DownloadStage.data_columns
    input_columns = ()
    ingest_columns = (C.SOURCE, C.SOURCE_LINE, C.MEMBER, C.MEMBER_OFFSET, C.MEMBER_SIZE, C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT)
    origin_columns = (C.SOURCE_KEY, C.SOURCE_UID)
    settings = ("input.format", "download.image_size", "download.resize_mode", "download.max_image_bytes",
                "download.max_image_pixels")

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.input.pool

    def config_sections(self) -> dict:
        i, d = self.config.input, self.config.download
        return {"input": {"format": i.kind, "image_col": i.image_col},
                "download": d.model_dump(mode="json", include={"image_size", "resize_mode", "max_image_pixels", "max_image_bytes",
                                                               "encode_format", "encode_quality",
                                                               *(() if d.reduced_decode else ("reduced_decode",))})}

    def resources(self, cluster: Cluster) -> Resources:
        return Resources(num_cpus=1)

    def prepare(self) -> dict:
        self._base = os.getcwd()  # relative input paths are the driver's: workers may start elsewhere
        return {}

    def setup(self) -> None:
        self._check = ImageCheck(self.config.download, pixel_features(self.config))

    def judge(self, rows: pa.Table) -> Verdicts:
        limit = self.config.download.max_image_bytes
        bodies = pools.read_images(rows, self.config.input, getattr(self, "_base", os.getcwd()), limit)
        outcomes = [Outcome(*body) if isinstance(body, tuple) else self._check(body) for body in bodies]
        # what the pool recorded as the image's size before it resized it, where it did
        for o, w, h in zip(outcomes, rows.column(C.ORIGINAL_WIDTH).to_pylist(), rows.column(C.ORIGINAL_HEIGHT).to_pylist()):
            if o.image is not None and w and h:
                o.original_width, o.original_height = w, h
        return outcome_scores(outcomes, self.config.download.encode_format)
