"""Dedup decisions on known images: exact copies, near copies, blank images, decontamination."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from mmcurate.demo import _photo_dir
from mmcurate.filters.image_hash import signals
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.dedup.stage import DedupStage


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo(name: str) -> Image.Image:
    with Image.open(_photo_dir() / name) as im:
        return im.convert("RGB").resize((320, 240))


def rows_of(images: list[bytes], sizes: list[int] | None = None) -> pa.Table:
    sig = [signals(b) for b in images]
    n = len(images)
    sizes = sizes or [100] * n
    return pa.table({
        C.UID: [f"u{i:02d}" for i in range(n)], C.ROW: list(range(n)),
        C.URL: [f"http://x.test/{i}" for i in range(n)], C.CAPTION: ["c"] * n,
        C.SHA256: [s.sha256 for s in sig], C.PHASH: [s.phash for s in sig], C.DHASH: [s.dhash for s in sig],
        C.LUMA_STD: pa.array([s.luma_std for s in sig], pa.float32()), C.COLOUR: [s.colour for s in sig],
        C.ORIGINAL_WIDTH: pa.array(sizes, pa.int32()), C.ORIGINAL_HEIGHT: pa.array([10] * n, pa.int32()),
    })


def stage(**dedup) -> DedupStage:
    return DedupStage(config_from_dict({"input": {"path": "x"}, "dedup": dedup}))


def test_exact_and_near_duplicates_with_keep_policy():
    cat, coffee = photo("chelsea.png"), photo("coffee.png")
    images = [jpeg(cat), jpeg(cat), jpeg(cat, 40), jpeg(ImageEnhance.Brightness(cat).enhance(1.2)), jpeg(coffee)]
    out = stage().decide(rows_of(images, sizes=[100, 300, 50, 100, 100]), parallel=lambda f, items, s: [f(s, i) for i in items])
    got = out.to_pylist()
    # u01 has the most pixels: it is the keeper of everything that looks like it
    assert [r[C.REASON] for r in got] == ["exact_duplicate", None, "near_duplicate", "near_duplicate", None]
    assert got[0][C.DUP_OF] == "u01" and got[0][C.DETAIL] == "identical image bytes to u01"
    assert got[2][C.DUP_OF] == "u01" and "pHash distance" in got[2][C.DETAIL]
    assert got[4][C.DUP_OF] is None


def test_blank_images_of_different_colours_are_not_duplicates():
    blanks = [jpeg(Image.new("RGB", (200, 150), c)) for c in [(200, 20, 20), (20, 20, 200), (20, 200, 20), (201, 21, 21)]]
    out = stage().process(rows_of(blanks)).to_pylist()
    assert [r[C.REASON] for r in out] == [None, None, None, "near_duplicate"]  # only the two reds match


def test_decontamination_against_reference_folder_and_parquet(tmp_path):
    rocket, moon = photo("rocket.jpg"), photo("moon.png")
    ref_dir = tmp_path / "eval"
    ref_dir.mkdir()
    (ref_dir / "rocket_eval.jpg").write_bytes(jpeg(rocket, 70))
    (ref_dir / "README.txt").write_text("not an image")
    images = [jpeg(rocket), jpeg(moon)]
    out = stage(reference_path=str(ref_dir)).process(rows_of(images)).to_pylist()
    assert [r[C.REASON] for r in out] == ["near_reference", None]
    assert out[0][C.DUP_OF] == "rocket_eval.jpg"
    hashes = tmp_path / "hashes.parquet"
    pq.write_table(pa.table({"id": ["moon-test-42"], C.PHASH: [signals(jpeg(moon, 60)).phash]}), hashes)
    out = stage(reference_path=str(hashes)).process(rows_of(images)).to_pylist()
    assert [r[C.REASON] for r in out] == [None, "near_reference"] and out[1][C.DUP_OF] == "moon-test-42"


def test_disabled_parts_keep_everything():
    cat = photo("chelsea.png")
    out = stage(exact=False, phash={"enabled": False}).process(rows_of([jpeg(cat), jpeg(cat)])).to_pylist()
    assert [r[C.STATUS] for r in out] == [C.KEPT, C.KEPT]


def test_a_repeated_input_row_is_named_as_one():
    """The same url and caption twice share a uid: the second row's detail says it repeats an input row."""
    cat = jpeg(photo("chelsea.png"))
    rows = rows_of([cat, cat])
    rows = rows.set_column(rows.schema.get_field_index(C.UID), C.UID, pa.array(["same", "same"]))
    got = stage().decide(rows, parallel=lambda f, items, s: [f(s, i) for i in items]).to_pylist()
    assert got[0][C.REASON] is None and got[1][C.REASON] == "exact_duplicate"
    assert got[1][C.DETAIL].startswith("identical image bytes to same: a repeat of an earlier input row")


def test_flat_region_crops_need_agreeing_layouts_and_close_hashes():
    """Distinct crops of one flat-dominated photo sit within hash distance: a match also needs
    colour grids that correlate (brightness and contrast changes do) and, through dHash, a close
    pHash + dHash (tests/dedup_eval.hard_negatives measures both on real photos)."""
    import numpy as np

    from mmcurate.stages.dedup.signals import Signals

    rng = np.random.default_rng(0)
    grid = rng.integers(40, 200, (4, 4, 3))
    layouts = {
        "same": grid, "brighter": np.clip(grid * 1.2, 0, 255), "more_contrast": np.clip((grid - 120) * 1.25 + 120, 0, 255),
        "shifted": np.roll(grid, 1, axis=1),  # the same few details one cell over: a crop moved sideways
    }
    bits = lambda n: (1 << n) - 1  # noqa: E731 - a hash n bits away from 0
    cases = {  # name: (pHash distance, dHash distance, layout) -> near?
        "copy": (0, 0, "same", True), "brighter": (3, 2, "brighter", True), "contrast": (4, 3, "more_contrast", True),
        "border crop through dHash": (14, 2, "same", True),
        "shifted crop": (4, 3, "shifted", False),
        "far through dHash": (14, 7, "same", False),  # 14 + 7 > 2.5 x 8
    }
    names = list(cases)
    ph = ["0" * 16] + [f"{bits(cases[n][0]):016x}" for n in names]
    dh = ["0" * 16] + [f"{bits(cases[n][1]):016x}" for n in names]
    colour = [grid.astype(np.uint8).tobytes()] + [np.asarray(layouts[cases[n][2]], np.uint8).tobytes() for n in names]
    sig = Signals.from_columns(ph, dh, [30.0] * len(ph), colour)
    near, _ = sig.near(0, np.arange(1, len(ph)), 8, 8)
    assert dict(zip(names, near.tolist())) == {n: cases[n][3] for n in names}


def test_one_shape_in_two_colours_is_no_near_duplicate():
    """The demo's orange triangle was dropped as a near-duplicate of its green one (pHash 6): their
    colour grids do not correlate, and now they are kept apart."""
    import numpy as np

    from mmcurate.demo import shapes
    from mmcurate.stages.dedup.signals import Signals

    green, orange = (signals(shapes.png(shapes.draw(c, "triangle", np.random.default_rng(3)))) for c in ("green", "orange"))
    sig = Signals.from_columns([green.phash, orange.phash], [green.dhash, orange.dhash],
                               [green.luma_std, orange.luma_std], [green.colour, orange.colour])
    near, distance = sig.near(0, np.array([1]), 8, 8)
    assert distance[0] <= 8 and not near[0]
