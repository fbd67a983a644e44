"""Exports of an interleaved-documents run, one record per kept document (`mmcurate export --format
mmc4|obelics|webdataset` on an mmc4 or obelics input): MMC4 JSONL with the images beside it, an
OBELICS-style `datasets` folder, webdataset with one sample per document.

A document is exported when `documents.parquet` says `kept`, with every one of its texts and those
of its images that `jobs/export.kept_samples` exports (the kept ones, or those of a `--where` cut):
an image removed from it leaves its position out, its text stays. A cut leaving a document fewer
images than `documents.min_images` leaves the document out too.

A document's texts are those the documents step left (`stages/documents/`: the paragraph rules
applied, personal data redacted), its images paired as that step says (the input's pairing, or
the assignment's: an image paired with no text is left out). The step's files, `documents.parquet`
and the image samples are all in document order; they are read side by side (memory: one run shard's samples, one file of
documents, one output file's documents).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from mmcurate.engine import atomic
from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.documents import STEP
from mmcurate.jobs.hf_folder import save_dataset
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ConfigError, LedgerError
from mmcurate.stages.base import Stage
from mmcurate.storage import paths

KEY = C.KEY
Samples = Callable[[int, str | None], pa.Table]  # a shard's exported image samples under a cut
FORMATS = ("mmc4", "obelics", "webdataset")  # per document, for a run of input.format mmc4 or obelics
INPUT_FORMATS = ("mmc4", "obelics")
_TEXT_COLUMNS = [C.DOCUMENT, C.DOCUMENT_ID, C.URL, C.TEXTS, C.TEXT_POSITIONS, C.IMAGE_POSITIONS, C.IMAGE_TEXTS,
                 C.IMAGE_SIMILARITY]


def is_documents_run(stages: Sequence[Stage]) -> bool:
    """Whether the run read interleaved documents (input.format mmc4 or obelics)."""
    return bool(stages) and stages[0].config.input.format in INPUT_FORMATS


def _image_name(record: dict) -> str:
    return f"{record[KEY]}.{record[C.IMAGE_FORMAT] or 'jpg'}"


def _statuses(run_dir: RunDir) -> Iterator[tuple[int, str]]:
    for batch in paths.parquet_file(run_dir.documents_ledger).iter_batches(batch_size=65_536,
                                                                             columns=[C.DOCUMENT, C.STATUS]):
        yield from zip(batch.column(C.DOCUMENT).to_pylist(), batch.column(C.STATUS).to_pylist())


def _images(run_dir: RunDir, samples: Samples, where: str | None) -> Iterator[dict]:
    for shard in range(run_dir.shard_count()):
        yield from samples(shard, where).to_pylist()


def documents(run_dir: RunDir, stages: Sequence[Stage], samples: Samples, where: str | None = None
              ) -> Iterator[tuple[int, dict]]:
    """(documents file, document) for each document to export, in document order. A document is its
    documents-table row with `images`: {position: the image's exported sample (bytes, url, key)};
    `samples` gives a shard's image samples (`jobs/export.kept_samples`)."""
    if not run_dir.documents_ledger.exists():
        raise LedgerError(f"{run_dir.documents_ledger}: missing; run the pipeline again to write it")
    statuses, images = _statuses(run_dir), _images(run_dir, samples, where)
    pending = next(images, None)
    min_images = stages[0].config.documents.min_images if where is not None else 0
    fmt = stages[0].config.input.format
    for number in range(len(run_dir.documents_files())):
        for doc in run_dir.read_shard(STEP, number, columns=_TEXT_COLUMNS).to_pylist():
            listed, status = next(statuses, (None, None))
            if listed != doc[C.DOCUMENT]:
                raise LedgerError(f"{run_dir.documents_ledger}: document {listed} where {doc[C.DOCUMENT]} was expected")
            mine, paired = {}, dict(zip(doc[C.IMAGE_POSITIONS], doc[C.IMAGE_TEXTS]))
            while pending is not None and pending[C.DOCUMENT] <= doc[C.DOCUMENT]:
                # the images of documents not kept are passed over, and those paired with no text
                if pending[C.DOCUMENT] == doc[C.DOCUMENT] and paired.get(pending[C.POSITION]) is not None:
                    mine[pending[C.POSITION]] = pending
                pending = next(images, None)
            if status == C.KEPT and len(mine) >= min_images:
                yield number, {**doc, "images": mine, "format": fmt}


def _sequence(doc: dict) -> list[tuple[int, str, object]]:
    """The document's kept items in reading order, (position, "text", text) or (position, "image",
    sample). An OBELICS document's texts and images share positions; an MMC4 document's do not (a
    text's is its index in text_list, an image's in image_info), and each image goes just before the
    sentence it was matched to, as OpenFlamingo interleaves MMC4."""
    if doc["format"] == "mmc4":
        paired = dict(zip(doc[C.IMAGE_POSITIONS], doc[C.IMAGE_TEXTS]))
        order = {("text", p): (p, 1, 0) for p in doc[C.TEXT_POSITIONS]}
        order.update({("image", p): (paired[p], 0, p) for p in doc["images"]})
    else:
        order = {(kind, p): (p,) for kind in ("text", "image") for p in (*doc[C.TEXT_POSITIONS], *doc["images"])}
    items = [(p, "text", t) for p, t in zip(doc[C.TEXT_POSITIONS], doc[C.TEXTS])]
    items += [(p, "image", record) for p, record in doc["images"].items()]
    return sorted(items, key=lambda item: order[(item[1], item[0])])


# ----------------------------------------------------------------------------- mmc4

def mmc4_record(doc: dict) -> dict:
    """A document as an MMC4 line: `url`, `text_list` (every text), `image_info` (its kept images:
    `image_name` of the file under images/, `raw_url`, `matched_text_index`, `matched_sim`), and
    mmcurate's `document_id`."""
    index = {p: i for i, p in enumerate(doc[C.TEXT_POSITIONS])}
    paired = dict(zip(doc[C.IMAGE_POSITIONS], doc[C.IMAGE_TEXTS]))
    similarity = dict(zip(doc[C.IMAGE_POSITIONS], doc[C.IMAGE_SIMILARITY] or []))
    info = [{"image_name": _image_name(record), "raw_url": record[C.URL],
             "matched_text_index": index.get(paired.get(position)), "matched_sim": similarity.get(position)}
            for position, record in sorted(doc["images"].items())]
    return {"url": doc[C.URL], "text_list": list(doc[C.TEXTS]), "image_info": info, C.DOCUMENT_ID: doc[C.DOCUMENT_ID]}


def _write_mmc4(out_dir: Path, number: int, docs: list[dict]) -> None:
    images = out_dir / "images"
    images.mkdir(exist_ok=True)
    for doc in docs:
        for record in doc["images"].values():
            atomic.write_with(images / _image_name(record), lambda tmp, data=record[C.IMAGE]: Path(tmp).write_bytes(data))
    lines = "".join(json.dumps(mmc4_record(d), ensure_ascii=False) + "\n" for d in docs)
    atomic.write_with(out_dir / f"{number:06d}.jsonl", lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))


# ----------------------------------------------------------------------------- webdataset

def _write_tar(out_dir: Path, number: int, docs: list[dict]) -> None:
    """One sample per document, keyed by its number: `<key>.json` holds its structure, `texts` and
    `images` aligned as OBELICS's, an image named by its member's extension (`0002.jpg`: the member
    `<key>.0002.jpg` of the same sample, as webdataset reads several images of one sample)."""
    def write(tmp) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for doc in docs:
                key = C.sample_key(doc[C.DOCUMENT])
                texts, images, members = [], [], []
                for position, kind, value in _sequence(doc):
                    if kind == "text":
                        texts.append(value)
                        images.append(None)
                        continue
                    ext = f"{position:04d}.{value[C.IMAGE_FORMAT] or 'jpg'}"
                    texts.append(None)
                    images.append(ext)
                    members.append((f"{key}.{ext}", value[C.IMAGE]))
                meta = {"texts": texts, "images": images, "url": doc[C.URL], C.DOCUMENT_ID: doc[C.DOCUMENT_ID],
                        C.DOCUMENT: doc[C.DOCUMENT]}
                members.append((f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))

    atomic.write_with(out_dir / f"{number:06d}.tar", write)


def _in_files(docs: Iterator[tuple[int, dict]], per_file: int | None) -> Iterator[list[dict]]:
    """Documents grouped into output files: `per_file` each (the last smaller), else one file per
    file of the documents table."""
    held, current = [], None
    for number, doc in docs:
        if held and (len(held) == per_file if per_file else number != current):
            yield held
            held = []
        held.append(doc)
        current = number
    if held:
        yield held


def _export_files(docs: Iterator[tuple[int, dict]], write: Callable[[Path, int, list[dict]], None], out_dir: Path,
                  per_file: int | None) -> int:
    count = files = 0
    for files, group in enumerate(_in_files(docs, per_file)):
        write(out_dir, files, group)
        count += len(group)
    if not count:  # an empty dataset rather than no file at all
        write(out_dir, 0, [])
    return count


# ----------------------------------------------------------------------------- obelics

def _obelics_rows(docs: Iterator[tuple[int, dict]]) -> Iterator[dict]:
    for _, doc in docs:
        texts, images, metadata = [], [], []
        for position, kind, value in _sequence(doc):
            texts.append(value if kind == "text" else None)
            images.append({"bytes": value[C.IMAGE], "path": _image_name(value)} if kind == "image" else None)
            metadata.append({"src": value[C.URL], "position": position} if kind == "image" else None)
        yield {"images": images, "texts": texts, "metadata": json.dumps(metadata),
               "general_metadata": json.dumps({"url": doc[C.URL]}), C.DOCUMENT_ID: doc[C.DOCUMENT_ID],
               C.DOCUMENT: doc[C.DOCUMENT]}


def export_obelics(docs: Callable[[], Iterator[tuple[int, dict]]], out_dir: Path, per_file: int | None) -> int:
    """An OBELICS-style `datasets` folder (`load_from_disk`) of the documents `docs()` gives: `images`
    (a `datasets.Image` or None at each position) and `texts` (a text or None) aligned, `metadata` and
    `general_metadata` as JSON strings, `document_id`, `document`. With `per_file`, in
    ceil(documents / per_file) arrow files (`hf_folder.save_dataset`)."""
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({
        "images": datasets.Sequence(datasets.Image()), "texts": datasets.Sequence(datasets.Value("string")),
        "metadata": datasets.Value("string"), "general_metadata": datasets.Value("string"),
        C.DOCUMENT_ID: datasets.Value("string"), C.DOCUMENT: datasets.Value("int64")})
    first = next(docs(), None)

    def generate():
        yield from _obelics_rows(docs())

    return save_dataset(features, None if first is None else generate, out_dir, per_file)


def check(stages: Sequence[Stage], fmt: str, per_file: int | None) -> None:
    """Refuse (exit 2) a document export of a pairs run, or files of fewer than one document."""
    if not is_documents_run(stages):
        raise ConfigError(f"--format {fmt}: exports interleaved documents, and this run's input is image-text "
                          "pairs (input.format mmc4 or obelics makes a documents run)")
    if per_file is not None and per_file < 1:
        raise ConfigError(f"--samples-per-shard: {per_file}: files of N >= 1 documents")


def export_documents(run_dir: RunDir, stages: Sequence[Stage], samples: Samples, fmt: str, out_dir: Path,
                     where: str | None = None, per_file: int | None = None) -> int:
    """Export the kept documents of a documents run in `fmt` into `out_dir` (claimed by the caller,
    except for obelics, which replaces it whole); return how many documents."""
    check(stages, fmt, per_file)
    if fmt == "obelics":
        return export_obelics(lambda: documents(run_dir, stages, samples, where), out_dir, per_file)
    write = {"mmc4": _write_mmc4, "webdataset": _write_tar}[fmt]
    return _export_files(documents(run_dir, stages, samples, where), write, out_dir, per_file)
