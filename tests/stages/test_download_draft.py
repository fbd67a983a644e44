"""A JPEG twice the target size or more is decoded at reduced DCT scale: the geometry img2dataset's
full decode gives, pixels within JPEG noise; every other image is stored byte for byte as before."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pyarrow as pa
import pytest
from img2dataset.resizer import Resizer
from PIL import Image

from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.download import DownloadStage, ImageCheck, drafted, scaled_size

MAX_MEAN_DIFFERENCE = 3.0  # of 255; the bench measures about 1.4 on 1024-px photos


def photo(width: int, height: int, fmt: str = "JPEG", gray: bool = False, **save) -> bytes:
    """A smooth picture with edges and a little grain, as photos have."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 3) % 256], axis=-1).astype(np.float64)
    cv2.circle(img, (width // 3, height // 2), min(width, height) // 4, (250, 40, 90), -1)
    cv2.rectangle(img, (width // 2, height // 5), (width * 4 // 5, height * 3 // 5), (20, 200, 60), -1)
    img += np.random.default_rng(0).normal(0, 3, img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    (pil.convert("L") if gray else pil).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}), **save)
    return buf.getvalue()


def checks(mode: str, size: int) -> tuple[ImageCheck, Resizer]:
    d = config_from_dict({"input": {"path": "x"}, "download": {"image_size": size, "resize_mode": mode}}).download
    full = Resizer(image_size=size, resize_mode=mode, resize_only_if_bigger=False, encode_format=d.encode_format,
                   encode_quality=d.encode_quality, max_image_area=d.max_image_pixels)
    return ImageCheck(d), full


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
@pytest.mark.parametrize(("width", "height", "size", "gray"), [
    (640, 480, 96, False),   # 1/4 scale
    (480, 640, 100, False),  # portrait, 1/4 scale then an area resize
    (600, 417, 64, True),    # grayscale, odd sides, 1/4 or 1/8 scale
    (1040, 700, 128, False),  # 1/4 (keep_ratio) or 1/8 (border: the long side counts)
])
def test_reduced_decode_gives_the_full_decodes_geometry_within_jpeg_noise(mode, width, height, size, gray):
    body = photo(width, height, gray=gray)
    target = scaled_size(width, height, size, mode)
    assert drafted(body, (width, height), target) is not None  # this source takes the reduced path
    check, full = checks(mode, size)
    ours = check(body)
    image, w, h, ow, oh, err = full(io.BytesIO(body))
    assert err is None and ours.reason is None
    assert (ours.width, ours.height, ours.original_width, ours.original_height) == (w, h, ow, oh) == (
        w, h, width, height)
    a, b = (cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_UNCHANGED) for x in (ours.image, image))
    assert a.shape == b.shape
    assert np.abs(a.astype(np.int16) - b).mean() < MAX_MEAN_DIFFERENCE


@pytest.mark.parametrize(("body", "mode", "size"), [
    (photo(384, 288), "keep_ratio", 256),                    # less than twice the target: full decode
    (photo(640, 480), "no", 64),                             # not resized: full decode
    (photo(640, 480, "PNG"), "keep_ratio", 64),              # not a JPEG
    (photo(640, 480, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00"
           b"\x06\x00\x00\x00\x00\x00\x00"), "keep_ratio", 64),  # tagged to turn: made upright first, as ever
])
def test_every_other_image_is_stored_as_before_byte_for_byte(body, mode, size):
    from mmcurate.stages.download import eight_bit, upright

    check, full = checks(mode, size)
    before = full(io.BytesIO(eight_bit(upright(body))))
    ours = check(body)
    assert (ours.image, ours.width, ours.height, ours.original_width, ours.original_height) == before[:5]


def test_the_stage_records_the_sources_size(tripwire):
    from mmcurate.demo.server import ImageServer, Route

    cfg = config_from_dict({"input": {"path": "x"}, "download": {
        "allow_networks": ["127.0.0.1/32"], "retries": 0, "timeout_s": 2, "image_size": 64}})
    stage = DownloadStage(cfg)
    stage.setup()
    with ImageServer({"/big.jpg": Route(photo(512, 384))}) as server:
        out = stage.process(pa.table({C.UID: ["a"], C.ROW: [0], C.URL: [server.url("/big.jpg")], C.CAPTION: ["c"]}))
    (row,) = out.to_pylist()
    assert row[C.STATUS] == C.KEPT
    assert (row[C.WIDTH], row[C.HEIGHT], row[C.ORIGINAL_WIDTH], row[C.ORIGINAL_HEIGHT]) == (85, 64, 512, 384)


def test_reduced_decode_off_is_img2datasets_full_decode_and_counts_in_the_fingerprint():
    body = photo(640, 480)
    d = config_from_dict({"input": {"path": "x"}, "download": {"image_size": 96, "reduced_decode": False}}).download
    check, full = ImageCheck(d), checks("keep_ratio", 96)[1]
    assert check(body).image == full(io.BytesIO(body))[0]

    def fingerprint(download: dict) -> str:
        return DownloadStage(config_from_dict({"input": {"path": "x"}, "download": download})).fingerprint("0" * 16)

    assert fingerprint({"reduced_decode": True}) == fingerprint({})  # the default: run dirs keep theirs
    assert fingerprint({"reduced_decode": False}) != fingerprint({})
