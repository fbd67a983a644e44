"""Writes docs/reference.md: the contract the README relies on, from the code that defines it.

The command line from the argument parser, the config keys (type, default, and the comment beside
the key in `mmcurate/schemas/sections.py`, `synthesis_section.py` and `documents_section.py`) from the config models, the ledger's columns from its
Arrow schema and the stages' score fields. `tests/test_reference.py` fails when the file and the
code disagree; run `.venv/bin/python docs/reference.py` to write it again.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel

from mmcurate.cli import build_parser
from mmcurate.schemas import columns as C
from mmcurate.schemas import documents_section, sections, synthesis_section
from mmcurate.schemas.config import Config, config_from_dict
from mmcurate.schemas.reasons import REASONS  # the reasons table: also what audit --reason accepts
from mmcurate.stages import build_stages

OUT = Path(__file__).with_name("reference.md")

RUN_DIR = """\
```
RUN_DIR/
  manifest.json        resolved config (no secrets), package versions, model hashes, input
                       fingerprint, per-stage status and timings, the runs and retries made in it
  lock                 held while a run writes here (a second run on the same dir exits 2)
  stages/<stage>/      per-shard outputs NNNNNN.parquet and stats NNNNNN.stats.json (the resume
                       marker), each written atomically (temp file + rename; on a bucket one PUT)
  stages/ingest/       the input cut into shards; _SUCCESS.json holds its fingerprint
  stages/ingest/documents/  input.format mmc4, obelics: the documents as read (id, URL, texts and
                       their positions, image positions), UUUUUU-CCCCCC.parquet in document order
  stages/synthesis/    per-row teacher outcome + records-NNNNNN.parquet (synthesis on)
  ledger.parquet       one row per input row (below): a file, or at scale a directory of parts
  ledger_index/        at scale: a uid index beside the parts (audit --uid reads a row group)
  documents.parquet    input.format mmc4, obelics: one row per input document (below)
  shards/<format>/     the kept samples: webdataset/NNNNNN.tar, parquet/NNNNNN.parquet, hf/
  instructions/        llava.json, NNNNNN.parquet (records with provenance), summary.json,
                       cache/NNNNNN.jsonl (teacher answers by request hash), images/
  report/              report.json, index.html (self-contained), plots
  retry.json           while a --retry-failed is carried through the stages
```
"""

CORE_COLUMNS = {
    C.UID: "stable id: hash of (url, caption); identical input gives an identical uid",
    C.ROW: "the input row's number (0-based, in input order): unique, even for repeated rows",
    C.SOURCE: "the input file the row came from",
    C.SOURCE_LINE: "its line (or row) in that file",
    C.SOURCE_KEY: "a pool's rows: the sample's key in the pool (webdataset key, file name)",
    C.SOURCE_UID: "a pool's rows: the pool's own uid of the sample, where it has one",
    C.URL: "as given", C.CAPTION: "as given",
    C.STATUS: "`kept`, `dropped` or `failed`",
    C.STAGE: "the stage that decided; null when kept",
    C.REASON: "machine-readable reason (table below); null when kept",
    C.DETAIL: "human-readable detail: score and threshold, duplicate-of uid, error text; a kept row's "
              "changes (faces blurred, PII redacted)",
    C.SCORES: "a struct of every score the run computed for the row (fields below)",
    C.DOCUMENT: "mmc4, obelics: the image's document, by number (0-based, in input order; documents.parquet's)",
    C.DOCUMENT_ID: "mmc4, obelics: the document's id (input.id_col, else a hash of its URL and content)",
    C.POSITION: "mmc4, obelics: the image's place in its document (obelics: in the aligned lists; mmc4: in image_info)",
}
DOCUMENT_COLUMNS = {
    C.DOCUMENT: "the document's number (0-based, in input order): unique, even for repeated documents",
    C.DOCUMENT_ID: "input.id_col's value, else a hash of the document's URL and content",
    C.SOURCE: "the input file it came from", C.SOURCE_LINE: "its line (or row) in that file",
    C.URL: "the document's URL (mmc4: `url`; obelics: `general_metadata.url`)",
    C.STATUS: "`kept`, `dropped` or `failed`",
    C.STAGE: "`ingest` (a document that could not be read) or `documents` (a document rule); null when kept",
    C.REASON: "machine-readable reason (the documents reasons below); null when kept",
    C.DETAIL: "human-readable detail; a kept document's removed images and why",
    C.IMAGES_IN: "its image rows in the ledger", C.IMAGES_KEPT: "of those, kept by every image stage",
    C.WORDS: "whitespace-separated words of its texts",
    C.TEXTS_IN: "its texts (paragraphs; mmc4: sentences)",
    C.TEXTS_KEPT: "of those, left by the paragraph rules (`documents.paragraphs`)",
    C.WORDS_KEPT: "words of the texts left: what `documents.min_words` and `max_words` cut on",
    C.DUP_OF: "`near_duplicate_document`: the `document_id` of the kept document with the same images",
    C.DUP_SIMILARITY: "`near_duplicate_document`: the Jaccard similarity of the two texts' word 3-grams",
}


def _comments(module) -> dict[tuple[str, str], str]:
    """(class, field) -> the comment beside the field, or the comment lines just above it."""
    lines = inspect.getsource(module).splitlines()
    found = {}
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                text = lines[item.end_lineno - 1]
                note = text.split("  # ", 1)[1].strip() if "  # " in text else ""
                above, i = [], item.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    text = lines[i].strip().lstrip("#").strip()
                    if not text.startswith("extensions"):  # a heading of the fields after it, not a note
                        above.insert(0, text)
                    i -= 1
                found[(node.name, item.target.id)] = note or " ".join(above)
    return found


def _type(annotation) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"Annotated\[(\w+), AfterValidator\(func=<function \w+ at 0x[0-9a-f]+>\)\]", r"\1",
                  text.replace("typing.", "").replace("NoneType", "None"))  # a checked string is a string
    return re.sub(r"^Optional\[(.*)\]$", r"\1 | None", text)


def _keys(model: type[BaseModel], defaults: dict, notes: dict, prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _keys(annotation, defaults.get(name, {}), notes, f"{prefix}{name}.")
            continue
        default = "(required)" if field.is_required() else f"`{_json(defaults.get(name))}`"
        kind = _type(annotation).replace("|", "\\|")
        note = notes.get((model.__name__, name), "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {kind} | {default} | {note} |")
    return rows


def _json(value) -> str:
    import json

    return json.dumps(value).replace("|", "\\|")


def _scores() -> list[str]:
    config = config_from_dict({"input": {"path": "x.csv"}, "quality": {"basic": {"enabled": True}, "text": {"enabled": True}},
                               "dedup": {"semantic": {"enabled": True}}, "synthesis": {"enabled": True}})
    seen, rows = set(), []
    for stage in build_stages(config):
        for f in stage.score_fields():
            if f.name not in seen:
                seen.add(f.name)
                rows.append(f"| `{f.name}` | {f.type} | {stage.name} |")
    return rows


def render() -> str:
    import os

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: the same text on every machine
    try:
        usage = {name: sub.format_help().replace("usage: __main__.py", "usage: mmcurate").rstrip()
                 for name, sub in commands.items()}
    finally:
        os.environ.pop("COLUMNS") if columns is None else os.environ.update(COLUMNS=columns)
    out = ["# mmcurate reference", "",
           "The contract the README relies on, written by `docs/reference.py` from the code that defines it "
           "(a test fails when they disagree). Extended, never renamed.", "",
           "## Command line", "",
           "Exit codes: 0 success; 2 a bad config, input or argument (the message names the key, file, line or "
           "flag); 1 anything else, and a run whose failed teacher requests exceed `synthesis.max_failed_fraction` "
           "(everything else written); 3 an `export --where` cut that takes back rows the run cannot export as "
           "it is (nothing written; the message gives the rerun's command, `--partial` exports the rest); "
           "130 interrupted (run the same command again to resume).", ""]
    for name, text in usage.items():
        out += [f"### `mmcurate {name}`", "", "```", text, "```", ""]
    defaults = Config.model_validate({"input": {"path": "-"}}).resolved()
    out += ["## Configuration", "",
            "YAML, validated; an unknown key is an error naming it. `--set KEY=VALUE` overrides any key by its "
            "dotted path. The `engine` section changes how fast, never what: a run resumes under other engine "
            "settings.", "", "| key | type | default | note |", "|---|---|---|---|"]
    out += _keys(Config, defaults, _comments(sections) | _comments(synthesis_section) | _comments(documents_section)) + [""]
    out += ["## Run directory", "", RUN_DIR, "## Ledger", "",
            "`ledger.parquet`: one row per input row, never more, never fewer. Checked at the end of every run: "
            "rows in = kept + dropped + failed.", "", "| column | type | meaning |", "|---|---|---|"]
    origins = [*C.ORIGIN_FIELDS, *(pa.field(n, C.ORIGIN_TYPES[n]) for n in C.DOCUMENT_COLUMNS)]
    for f in C.LEDGER_BASE_FIELDS[:6] + origins + C.LEDGER_BASE_FIELDS[6:] + [C.ledger_schema([]).field(C.SCORES)]:
        kind = "struct" if f.name == C.SCORES else str(f.type)
        out.append(f"| `{f.name}` | {kind} | {CORE_COLUMNS[f.name]} |")
    out += ["", "`documents.parquet` (input.format mmc4, obelics): one row per input document, decided after the image "
            "stages by the `documents` section. Checked at the end of every such run: documents in = kept + dropped + "
            "failed.", "", "| column | type | meaning |", "|---|---|---|"]
    out += [f"| `{f.name}` | {f.type} | {DOCUMENT_COLUMNS[f.name]} |" for f in C.DOCUMENT_LEDGER_SCHEMA]
    out += ["", "Score fields (the stages a config runs add theirs; aesthetic and watermark heads add "
            "`aesthetic_score`, `watermark_score`):", "", "| score | type | stage |", "|---|---|---|"] + _scores()
    out += ["", "## Reasons", "", "| stage | reason | meaning |", "|---|---|---|"]
    for stage, reasons in REASONS.items():
        out += [f"| {stage} | `{r}` | {why} |" for r, why in reasons.items()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
