"""The download stage: fetch each URL through the guard, resize with img2dataset's resizer."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from mmcurate.clients.fetch import Fetcher, FetchError
from mmcurate.clients.netguard import NetworkPolicy, guarded_opener
from mmcurate.filters.base import Verdicts
from mmcurate.filters.image_hash import ImageSignals, pixel_signals
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages.base import Cluster, Resources, Stage

# img2dataset's resizer reports failures as text; these are the ones with a ledger reason of their own
_RESIZER_REASONS = {
    "Image decoding error": "not_an_image",
    "image area too large": "image_too_large",
}


@dataclass
class Outcome:
    reason: str | None = None
    detail: str | None = None
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    nbytes: int | None = None
    signals: ImageSignals | None = None  # for the features stage, from the pixels just encoded


# the features stage's columns, handed on by download (or load) where it computes them
FEATURE_FIELDS = list(C.FEATURES_SCHEMA)[len(C.IDENTITY_FIELDS) + len(C.DECISION_FIELDS):]


def pixel_features(config: Config) -> bool:
    """Whether download (or load) computes the features stage's signals from the pixels it has
    just resized, so that the features stage decodes nothing: while dedup is on, and not in
    `dedup.phash.exact` mode (whose pHash is imagehash's of the stored image, decoded)."""
    return config.dedup.active and not config.dedup.phash.exact


class HandsOnFeatures:
    """A stage that stores images (download, load) and, under `pixel_features`, their signals."""

    def __init__(self, config: Config):
        super().__init__(config)
        if pixel_features(config):
            self.output_schema = pa.schema([*type(self).output_schema, *FEATURE_FIELDS])
            self.data_columns = (*type(self).data_columns, *(f.name for f in FEATURE_FIELDS))


class DownloadStage(HandsOnFeatures, Stage):
    """Downloads, checks and resizes every image of a shard; failures become ledger reasons."""

    name = "download"
    version = "1"
    output_schema = C.DOWNLOAD_SCHEMA
    score_columns = (C.WIDTH, C.HEIGHT, C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT, C.DOWNLOAD_BYTES, C.DOWNLOAD_ATTEMPTS)
    data_columns = (C.IMAGE, C.IMAGE_FORMAT, C.WIDTH, C.HEIGHT, C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT)
    input_columns = ()
    settings = ("download.image_size", "download.max_image_bytes", "download.timeout_s", "download.retries")

    def __init__(self, config: Config):
        super().__init__(config)
        if config.input.documents:  # each image row names its document and position, in the ledger and exports
            self.origin_columns = C.DOCUMENT_COLUMNS

    @classmethod
    def enabled(cls, config) -> bool:
        return not config.input.pool  # a pool already downloaded is read by `load`

    def config_sections(self) -> dict:
        d = self.config.download
        # timeouts, the deadline, retries and thread counts change how, not what: resuming with new
        # ones is fine. connect_to (where a host's requests go) counts only when set, so run dirs
        # made before the key existed keep their fingerprints; reduced_decode counts only when off
        # (its default changes bytes within JPEG noise, as a new libjpeg would: README)
        return d.model_dump(mode="json", exclude={"timeout_s", "deadline_s", "retries", "threads", "retry_reasons",
                                                  *(() if d.connect_to else ("connect_to",)),
                                                  *(("reduced_decode",) if d.reduced_decode else ())})

    def resources(self, cluster: Cluster) -> Resources:
        return Resources(num_cpus=1)

    def setup(self) -> None:
        d = self.config.download
        self._check = ImageCheck(d, pixel_features(self.config))
        policy = NetworkPolicy.from_config(d.allow_private_networks, d.allow_networks, d.connect_to)
        self._fetcher = Fetcher(
            opener=guarded_opener(policy),
            timeout_s=d.timeout_s,
            retries=d.retries,
            max_bytes=d.max_image_bytes,
            user_agent_token=d.user_agent_token,
            respect_robots_header=d.respect_robots_header,
            deadline_s=d.deadline_s,
        )

    def judge(self, rows: pa.Table) -> Verdicts:
        outcomes = self.fetch([url.strip() for url in rows.column(C.URL).to_pylist()])
        verdicts = outcome_scores(outcomes, self.config.download.encode_format)
        verdicts.scores[C.DOWNLOAD_ATTEMPTS] = [1] * len(outcomes)
        return verdicts

    def fetch(self, urls: list[str]) -> list[Outcome]:
        """Each URL fetched and checked, in parallel threads (download.threads)."""
        with ThreadPoolExecutor(max_workers=min(self.config.download.threads, max(1, len(urls)))) as pool:
            return list(pool.map(self._one, urls))

    def _one(self, url: str) -> Outcome:
        try:
            body = self._fetcher.fetch(url)
        except FetchError as err:
            return Outcome(err.reason, str(err))
        return self._check(body)


def outcome_scores(outcomes: list[Outcome], fmt: str) -> Verdicts:
    """The verdicts of images fetched or read: their sizes as scores, the stored bytes as data."""
    return Verdicts(
        scores={name: [getattr(o, attr) for o in outcomes] for name, attr in (
            (C.WIDTH, "width"), (C.HEIGHT, "height"), (C.ORIGINAL_WIDTH, "original_width"),
            (C.ORIGINAL_HEIGHT, "original_height"), (C.DOWNLOAD_BYTES, "nbytes"))},
        data={C.IMAGE: [o.image for o in outcomes],
              C.IMAGE_FORMAT: [fmt if o.image is not None else None for o in outcomes],
              **({f.name: [getattr(o.signals, f.name, None) for o in outcomes] for f in FEATURE_FIELDS}
                 if any(o.signals for o in outcomes) else {})},
        reasons=[o.reason for o in outcomes], details=[o.detail for o in outcomes], failed=True,
    )


class ImageCheck:
    """An image's bytes checked and re-encoded as every stored image is: the header read for
    non-images and decompression bombs before any decode, turned upright, 16-bit made 8-bit, a
    JPEG twice the target size or more decoded at reduced scale (`drafted`), then img2dataset's
    resizer (`download.image_size`, `resize_mode`, `encode_format`). With `features`, each image's
    signals for the features stage too, from the pixels the resizer encoded (`stored_pixels`)."""

    def __init__(self, d, features: bool = False) -> None:
        from img2dataset.resizer import Resizer
        from PIL import Image

        # Pixel counts are checked explicitly against max_image_pixels before any decode.
        Image.MAX_IMAGE_PIXELS = None
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        self.max_image_pixels = d.max_image_pixels
        self._resizer = Resizer(
            image_size=d.image_size,
            resize_mode=d.resize_mode,
            resize_only_if_bigger=False,
            encode_format=d.encode_format,
            encode_quality=d.encode_quality if d.encode_format != "png" else 9,
            max_image_area=d.max_image_pixels,
            blurrer=_keep_pixels if features else None,
        )
        self._features, self._finish = features, finishing(d.resize_mode, d.image_size) if features else None
        self._image_size, self._resize_mode, self._reduced = d.image_size, d.resize_mode, d.reduced_decode

    def __call__(self, body: bytes) -> Outcome:
        size = len(body)
        problem, kind, full = self._check_header(body)
        if problem is not None:
            return Outcome(*problem, nbytes=size)
        turned = eight_bit(upright(body))
        small = None
        if self._reduced and turned is body and kind == "JPEG":  # untagged JPEG: maybe a reduced decode
            target = scaled_size(*full, self._image_size, self._resize_mode)
            small = drafted(body, full, target) if target else None
        tap = _Pixels() if self._features else None
        image, width, height, ow, oh, err = self._resizer(io.BytesIO(small or turned), blurring_bbox_list=tap)
        if err is not None:
            reason = _RESIZER_REASONS.get(err, "resize_error")
            return Outcome(reason, f"img2dataset resizer: {err}", nbytes=size)
        if small is not None:
            ow, oh = full  # the resizer saw the drafted pixels; the source's size is the header's
        pixels = stored_pixels(tap.pixels, self._finish, (height, width)) if tap is not None else None
        found = pixel_signals(pixels, image) if pixels is not None else None
        return Outcome(None, None, image, width, height, ow, oh, size, found)

    def _check_header(self, body: bytes) -> tuple[tuple[str, str] | None, str | None, tuple[int, int]]:
        """Refuse non-images and decompression bombs from the header alone, before decoding; else
        (None, the format, the size)."""
        from PIL import Image, UnidentifiedImageError

        if not body:
            return ("not_an_image", "empty body"), None, (0, 0)
        try:
            with Image.open(io.BytesIO(body)) as im:
                width, height = im.size
                kind = im.format
        except UnidentifiedImageError:
            head = body[:40].decode("latin-1").strip()
            return ("not_an_image", f"not a known image format; body starts {head[:32]!r}"), None, (0, 0)
        except Exception as err:  # a header PIL cannot parse is no image we can use
            return ("not_an_image", f"unreadable image header: {type(err).__name__}: {err}"), None, (0, 0)
        limit = self.max_image_pixels
        if width * height > limit:
            detail = f"{kind} {width}x{height} = {width * height} pixels > max_image_pixels {limit}"
            return ("image_too_large", detail), kind, (width, height)
        return None, kind, (width, height)


class _Pixels(list):
    """An empty list of boxes to blur, handed to img2dataset's resizer with `_keep_pixels` as its
    blurrer: the resizer passes it the pixels it has resized (before it crops or pads)."""

    pixels = None


def _keep_pixels(img, bbox_list: _Pixels):
    bbox_list.pixels = img
    return img


def finishing(mode: str, size: int):
    """What img2dataset's resizer does to an image after its blurrer (the same albumentations
    transform: a centre crop, a white border), or None where it does nothing more."""
    if mode not in ("center_crop", "border"):
        return None
    import albumentations as A
    import cv2

    with warnings.catch_warnings():  # `value` as the resizer gives it (newer albumentations: `fill`)
        warnings.simplefilter("ignore", DeprecationWarning)
        if mode == "center_crop":
            return A.CenterCrop(height=size, width=size)
        return A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, value=[255, 255, 255],
                             p=1.0)


def stored_pixels(pixels, finish, shape: tuple[int, int]):
    """The pixels the resizer encoded, from those it handed its blurrer and its `finishing` step;
    None unless they come out at the stored (height, width) in 8 bits."""
    if pixels is None or pixels.dtype.name != "uint8" or not (pixels.ndim == 2 or pixels.shape[2] == 3):
        return None
    if finish is not None:
        pixels = finish(image=pixels)["image"]
    return pixels if pixels.shape[:2] == shape else None


def scaled_size(width: int, height: int, size: int, mode: str) -> tuple[int, int] | None:
    """The (width, height) img2dataset's resizer scales an image to before it crops or pads
    (albumentations' Smallest/LongestMaxSize rounding); None where it does not scale (`no`)."""
    if mode in ("keep_ratio", "center_crop"):
        scale = size / min(width, height)
    elif mode in ("border", "keep_ratio_largest"):
        scale = size / max(width, height)
    else:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def drafted(body: bytes, size: tuple[int, int], target: tuple[int, int]) -> bytes | None:
    """A JPEG of `size`, at least twice `target` on both sides, decoded at 1/2, 1/4 or 1/8 DCT scale
    (libjpeg-turbo's scaled decode, never below `target`), area-resized to exactly `target` and
    handed on losslessly (BMP); None otherwise.

    The resizer then finds the image at its scaled size already (its own resize is a no-op) and
    crops, pads and encodes it as ever, so the output's geometry is that of a full decode; its
    pixels differ within JPEG noise (README, "Tests and benchmarks"). img2dataset decodes every
    image at full size.
    """
    import cv2
    import numpy as np
    from PIL import Image

    scale = next((s for s in (8, 4, 2) if size[0] // s >= target[0] and size[1] // s >= target[1]), 1)
    if scale == 1:
        return None
    try:
        with Image.open(io.BytesIO(body)) as im:
            kind, mode = im.format, im.mode
    except Exception:  # noqa: BLE001 - the full path judges what Pillow cannot read
        return None
    if kind != "JPEG" or mode not in ("RGB", "L"):  # CMYK and the rest: the full path, as ever
        return None
    reduced = {2: (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
               4: (cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
               8: (cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8)}[scale][mode == "L"]
    flags = reduced | cv2.IMREAD_IGNORE_ORIENTATION  # as the resizer's IMREAD_UNCHANGED: tags are upright()'s
    pixels = cv2.imdecode(np.frombuffer(body, np.uint8), flags)
    if pixels is None:
        return None
    if (pixels.shape[1], pixels.shape[0]) != target:
        pixels = cv2.resize(pixels, target, interpolation=cv2.INTER_AREA)
    ok, out = cv2.imencode(".bmp", pixels)
    return out.tobytes() if ok else None


def upright(body: bytes) -> bytes:
    """The image turned as its EXIF orientation says (phones store photos sideways and tag them).

    img2dataset's resizer decodes with OpenCV, which ignores the tag; captions describe the
    picture as people see it. Only tagged images (orientation 2-8) are decoded here, and they
    go on losslessly (PNG) to the resizer; everything else passes untouched.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(body)) as im:
            if im.format not in ("JPEG", "WEBP", "TIFF", "PNG", "MPO") or im.getexif().get(0x0112, 1) in (0, 1):
                return body
            turned = ImageOps.exif_transpose(im)
            buf = io.BytesIO()
            turned.save(buf, "PNG")
            return buf.getvalue()
    except Exception:  # noqa: BLE001 - an unreadable tag leaves the image as sent; the resizer judges it
        return body


def eight_bit(body: bytes) -> bytes:
    """A 16-bit PNG scaled to 8 bits (OpenCV's JPEG encoder would saturate it to white)."""
    if not (body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) > 24 and body[24] == 16):
        return body
    import cv2
    import numpy as np

    array = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16:
        return body
    ok, out = cv2.imencode(".png", (array >> 8).astype(np.uint8))
    return out.tobytes() if ok else body
