"""Decode once: download (and load) hands the features stage the signals of the pixels it has just
resized, so the features stage decodes nothing; shards written before still get their features."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

from mmcurate.filters.image_hash import hex_to_uint64, pixel_signals, signals
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.download import DownloadStage, ImageCheck, pixel_features
from mmcurate.stages.features import FeaturesStage
from tests.stages.test_download_draft import photo


def config(**download):
    return config_from_dict({"input": {"path": "x"}, "download": {"image_size": 96, **download}})


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border", "no"])
@pytest.mark.parametrize("source", [(640, 480, False), (300, 200, True), (72, 120, False)])
def test_the_pixels_handed_on_are_those_stored_and_their_signals_a_decodes(mode, source):
    width, height, gray = source
    body = photo(width, height, gray=gray)
    check = ImageCheck(config(resize_mode=mode, encode_format="png").download, features=True)
    out = check(body)
    assert out.reason is None and out.signals is not None
    stored = cv2.imdecode(np.frombuffer(out.image, np.uint8), cv2.IMREAD_UNCHANGED)
    assert stored.shape[:2] == (out.height, out.width)
    # a lossless store: the pixels handed on are exactly those stored
    assert out.signals == pixel_signals(stored, out.image)
    assert out.signals.sha256 == signals(out.image).sha256


def test_from_jpeg_pixels_hashes_are_within_the_fast_paths_noise():
    distances = []
    check = ImageCheck(config(image_size=128).download, features=True)
    for i, (w, h) in enumerate([(640, 480), (480, 640), (300, 300), (1000, 700), (200, 150)]):
        out = check(photo(w + i, h))
        decoded = signals(out.image)
        assert out.signals.sha256 == decoded.sha256
        a, b = hex_to_uint64([out.signals.phash, decoded.phash])
        distances.append(bin(int(a) ^ int(b)).count("1"))
    assert max(distances) <= 4, distances


def test_the_features_stage_hands_them_on_and_decodes_only_what_lacks_them():
    cfg = config()
    assert pixel_features(cfg) and not pixel_features(config_from_dict(
        {"input": {"path": "x"}, "dedup": {"phash": {"exact": True}}}))
    download, features = DownloadStage(cfg), FeaturesStage(cfg)
    assert set(features.optional_inputs) <= set(download.data_columns)
    check = ImageCheck(cfg.download, features=True)
    outs = [check(photo(320 + 40 * i, 240)) for i in range(3)]
    given = outs[0].signals
    rows = pa.table({C.UID: ["a", "b", "c"], C.ROW: [0, 1, 2], C.IMAGE: [o.image for o in outs],
                     C.SHA256: [given.sha256, None, None], C.PHASH: [given.phash, None, None],
                     C.DHASH: [given.dhash, None, None], C.LUMA_STD: [given.luma_std, None, None],
                     C.COLOUR: [given.colour, None, None]})
    got = features.process(rows).to_pylist()
    assert got[0][C.PHASH] == given.phash and got[0][C.SHA256] == given.sha256
    assert [r[C.PHASH] for r in got[1:]] == [signals(o.image).phash for o in outs[1:]]
    old = features.process(rows.select([C.UID, C.ROW, C.IMAGE])).to_pylist()  # a shard from before: decoded
    assert [r[C.PHASH] for r in old] == [signals(o.image).phash for o in outs]


def test_stored_bytes_are_the_same_with_or_without_the_features_handed_on():
    body = photo(640, 480)
    for mode in ("keep_ratio", "center_crop", "border"):
        d = config(resize_mode=mode).download
        assert ImageCheck(d, features=True)(body).image == ImageCheck(d)(body).image


def test_io_of_a_stage_that_hands_them_on():
    cfg = config()
    stage = DownloadStage(cfg)
    assert [f.name for f in stage.output_schema][-5:] == [C.SHA256, C.PHASH, C.DHASH, C.LUMA_STD, C.COLOUR]
    off = DownloadStage(config_from_dict({"input": {"path": "x"}, "dedup": {"exact": False, "phash": {"enabled": False}}}))
    assert C.SHA256 not in off.output_schema.names and C.SHA256 not in off.data_columns


def test_a_download_shard_from_before_gives_the_features_stage_images_to_decode(tmp_path):
    """Resuming a run dir whose download shards were written before download handed features on."""
    import pyarrow.parquet as pq

    from mmcurate.engine.rundir import RunDir
    from mmcurate.engine.shards import alive_rows

    cfg = config()
    download, features = DownloadStage(cfg), FeaturesStage(cfg)
    images = [ImageCheck(cfg.download)(photo(320 + 40 * i, 240)).image for i in range(2)]
    run_dir = RunDir.at(tmp_path)
    for name in ("ingest", "download"):
        run_dir.stage_dir(name).mkdir(parents=True)
    base = {C.UID: ["a", "b"], C.ROW: [0, 1], C.STATUS: ["kept", "kept"]}
    pq.write_table(pa.table({**base, C.URL: ["u", "v"], C.CAPTION: ["c", "d"]}), run_dir.shard_file("ingest", 0))
    pq.write_table(pa.table({**base, C.IMAGE: images}), run_dir.shard_file("download", 0))
    rows = alive_rows(run_dir, 0, [download], features.input_columns, optional=features.optional_inputs)
    assert C.IMAGE in rows.column_names and C.SHA256 not in rows.column_names
    assert features.process(rows)[C.PHASH].to_pylist() == [signals(x).phash for x in images]
    with pytest.raises(pa.ArrowInvalid):  # a column that is not optional is still required
        alive_rows(run_dir, 0, [download], features.input_columns)
    # dedup, after features, reads the signals from features alone: never from the older download shard
    run_dir.stage_dir("features").mkdir(parents=True)
    pq.write_table(features.process(rows), run_dir.shard_file("features", 0))
    after = alive_rows(run_dir, 0, [download, features], [C.SHA256, C.PHASH])
    assert after[C.PHASH].to_pylist() == [signals(x).phash for x in images]
