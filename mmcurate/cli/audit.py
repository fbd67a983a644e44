"""`mmcurate audit`: the ledger's rows, one sample's whole story (--explain) and the images behind
it (--dump), as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

from mmcurate.schemas.errors import ConfigError


def check_flags(args) -> None:
    """Flags that make no sense together or out of range exit 2 before anything is read."""
    if args.sample is not None and args.sample < 1:
        raise ConfigError(f"--sample {args.sample}: the number of rows to sample, 1 or more")
    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit}: the number of rows to show, or 0 for all")
    if args.dump is not None and not args.explain:
        raise ConfigError("--dump: writes the images behind one decision; give --explain UID with it")
    if args.show_nsfw and args.dump is None:
        raise ConfigError("--show-nsfw: only with --dump DIR (the images it writes)")
    if args.dump is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", args.dump):
        raise ConfigError(f"--dump {args.dump}: a local folder; copy it to the bucket afterwards")


def audit(args, run_dir) -> int:
    """Answer one `mmcurate audit` (flags checked by `check_flags`) on an open run dir."""
    if args.dump is not None:
        from mmcurate.jobs.audit import dump
        from mmcurate.jobs.document_audit import explain_document

        if explain_document(run_dir, args.explain) is not None:
            raise ConfigError(f"--dump: writes the images behind one image's decision; {args.explain} is a document "
                              "(--explain it without --dump for its images' uids)")
        found, written = dump(run_dir, args.explain, Path(args.dump), show_nsfw=args.show_nsfw)
        for path in written:
            print(f"wrote {path}")
        for row in found:
            if row.get("images_withheld"):
                print(f"note:  row {row['row']}: {row['images_withheld']}")
        return 0
    if args.explain:
        from mmcurate.jobs.audit import explain
        from mmcurate.jobs.document_audit import documents_of_images, explain_document

        if (documents := explain_document(run_dir, args.explain)) is not None:
            return _print_documents(documents, args.format)
        found = explain(run_dir, args.explain)
        documents_of_images(run_dir, found)
        if args.format == "json":
            print(json.dumps(found, indent=2, default=str))
        elif args.format == "csv":
            sys.stdout.write(explain_csv(found))
        else:
            for row in found:
                print_explained(row)
        return 0
    return _query(args, run_dir)


def _query(args, run_dir) -> int:
    import polars as pl

    from mmcurate.jobs.audit import query_ledger, sample_ledger, shown
    from mmcurate.jobs.document_audit import wants_documents

    if args.uid is None and wants_documents(run_dir, args.stage, args.reason):
        return _query_documents(args, run_dir)
    filters, limit = {"stage": args.stage, "reason": args.reason, "uid": args.uid, "status": args.status}, args.limit or None
    frame = (sample_ledger(run_dir, args.sample, args.seed, **filters) if args.sample is not None
             else query_ledger(run_dir, **filters, limit=limit))
    if args.format == "json":
        print(json.dumps(frame.to_dicts(), indent=2, default=str))
    elif args.format == "csv":
        sys.stdout.write(ledger_csv(frame))
    else:
        columns = [c for c in ("uid", "row", "status", "stage", "reason", "detail", "url") if c in frame.columns]
        with pl.Config(tbl_rows=-1, fmt_str_lengths=60, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
            print(frame.select(columns) if frame.height else "no ledger rows match")
    if args.sample is None and (cut := shown(run_dir, frame.height, limit, **filters)):
        print(cut, file=sys.stdout if args.format == "table" else sys.stderr)  # JSON and CSV stay data
    return 0


DOCUMENT_COLUMNS = ("document", "document_id", "status", "stage", "reason", "detail", "url")  # the detail has the counts


def _query_documents(args, run_dir) -> int:
    """`--stage/--reason` of a document rule: the documents of documents.parquet it removed."""
    import polars as pl

    from mmcurate.jobs.document_audit import documents_shown, query_documents, sample_documents

    filters, limit = {"stage": args.stage, "reason": args.reason, "status": args.status}, args.limit or None
    frame = (sample_documents(run_dir, args.sample, args.seed, **filters) if args.sample is not None
             else query_documents(run_dir, **filters, limit=limit))
    if args.format == "json":
        print(json.dumps(frame.to_dicts(), indent=2, default=str))
    elif args.format == "csv":
        sys.stdout.write(ledger_csv(frame))
    else:
        columns = [c for c in DOCUMENT_COLUMNS if c in frame.columns]
        with pl.Config(tbl_rows=-1, fmt_str_lengths=60, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
            print(frame.select(columns) if frame.height else "no documents match")
    if args.sample is None and (cut := documents_shown(run_dir, frame.height, limit, **filters)):
        print(cut, file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def _print_documents(found: list[dict], fmt: str) -> int:
    """`--explain` of a document: each document's row, then its images' ledger rows."""
    if fmt == "json":
        print(json.dumps(found, indent=2, default=str))
    elif fmt == "csv":
        sys.stdout.write(document_csv(found))
    else:
        for doc in found:
            print_document(doc)
    return 0


def print_document(doc: dict) -> None:
    """One explained document as text: its verdict, where it came from, its counts, then each image."""
    print(f"document {doc['document']}  id {doc['document_id']}  {doc['status'].upper()}"
          + (f" by {doc['stage']}: {doc['reason']}" if doc.get("reason") else ""))
    if doc.get("detail"):
        print(f"  detail:   {doc['detail']}")
    print(f"  url:      {doc.get('url')}\n  source:   {doc.get('source')}:{doc.get('source_line')}")
    shown = {"document", "document_id", "status", "stage", "reason", "detail", "url", "source", "source_line", "images"}
    for k, v in doc.items():  # images_in, images_kept, words and whatever else the run's documents.parquet holds
        if k not in shown and v is not None:
            print(f"  {k + ':':<13} {_text(v)}")
    for im in doc["images"]:
        why = f" by {im['stage']}: {im['reason']}" + (f" ({im['detail']})" if im.get("detail") else "") if im["reason"] else ""
        print(f"  image at position {im['position']}: uid {im['uid']}  row {im['row']}  {im['status']}{why}")
        print(f"    {im['url']}")
    if not doc["images"]:
        print("  no image rows")


def document_csv(found: list[dict]) -> str:
    """Explained documents as CSV: a line per document (`what` document), then one per image (`what`
    image: its position, uid, row, verdict and url); the document's own counts under `values` as JSON."""
    buf = io.StringIO()
    out = csv.DictWriter(buf, ("document", "document_id", "what", "position", "uid", "row", "status", "stage",
                               "reason", "detail", "url", "values"), lineterminator="\n")
    out.writeheader()
    for doc in found:
        ids = {"document": doc["document"], "document_id": doc["document_id"]}
        rest = {k: v for k, v in doc.items() if k not in (*ids, "status", "stage", "reason", "detail", "url", "images")}
        out.writerow({**ids, "what": "document", **{k: doc.get(k) for k in ("status", "stage", "reason", "detail", "url")},
                      "values": json.dumps(rest, default=str)})
        for im in doc["images"]:
            out.writerow({**ids, "what": "image", **im})
    return buf.getvalue()


def ledger_csv(frame) -> str:
    """Ledger rows as CSV, which holds no lists or structs: each such value (pii_types, face_boxes)
    as its JSON text, a null as an empty field."""
    import polars as pl

    nested = [c for c, t in frame.schema.items() if t.is_nested()]
    return frame.with_columns(pl.Series(c, [None if v is None else json.dumps(v, default=str)
                                            for v in frame[c].to_list()], pl.String) for c in nested).write_csv()


def _text(value) -> str:
    """A value as the table shows it; a float32 score as its shortest decimal (0.7, not 0.699999988079071)."""
    from mmcurate.jobs.report import shortest

    return value if isinstance(value, str) else json.dumps(shortest(value), default=str)


def _flat(data: dict, prefix: str = "") -> dict:
    """A model record's values by dotted key (`faces.detector`)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def print_explained(row: dict) -> None:
    """One explained row as text: the same fields as its JSON, hashes shortened."""
    print(f"uid {row['uid']}  row {row['row']}  {row['status'].upper()}"
          + (f" by {row['stage']}: {row['reason']}" if row["stage"] else f" ({row['decided_by']})"))
    if row["detail"]:
        print(f"  detail:   {row['detail']}")
    if row.get("document"):
        doc = row["document"]
        print(f"  document: {doc['document']} (id {doc['document_id']}), image at position {doc['position']}: "
              f"{doc['status']}" + (f" by {doc['stage']}: {doc['reason']} ({doc['detail']})" if doc["reason"] else ""))
    exported = row["exported_caption"]
    print(f"  url:      {row['url']}\n  caption:  {row['caption']}")
    print(f"  exported: {exported if exported is not None else '(none: the sample is not exported)'}")
    pad = " " * 18
    for step in row["steps"]:
        print(f"  {step['stage']:<15} {step['status']}" + (f" ({step['reason']}: {step['detail']})" if step["reason"]
                                                          else f" ({step['detail']})" if step["detail"] else ""))
        for k, v in step["values"].items():
            print(f"{pad}{k} = {_text(v)}")
        for k, v in _flat(step.get("model") or {}).items():
            short = v[:12] if k.split(".")[-1] == "sha256" and isinstance(v, str) else v
            print(f"{pad}ran {k} = {_text(short)}")
        configured = step.get("configured", {})
        for k, v in step["settings"].items():
            print(f"{pad}setting {k} = {json.dumps(v)}" + (f" (configured {json.dumps(configured[k])})"
                                                         if k in configured else ""))
    for rec in row.get("instructions", []):
        print(f"  instruction {rec['task']}: {rec['status']}" + (f" ({rec['reason']})" if rec["reason"] else ""))
        for k, v in rec.items():
            if k not in ("task", "status", "reason", "turns"):
                print(f"{pad}{k} = {_text(v)}")
        for turn in rec["turns"]:
            print(f"{pad}Q: {turn['question']}\n{pad}A: {turn['answer']}")


EXPLAIN_COLUMNS = ("uid", "row", "step", "task", "status", "reason", "detail", "values", "settings", "model")


def explain_csv(found: list[dict]) -> str:
    """Explained rows as CSV, one line per step: first the sample (its decision; url, captions and
    deciding stage under `values`), then each stage, then each instruction record; nested values
    as JSON text."""
    buf = io.StringIO()
    out = csv.DictWriter(buf, EXPLAIN_COLUMNS, lineterminator="\n")
    out.writeheader()
    for row in found:
        ids = {"uid": row["uid"], "row": row["row"]}
        sample = {k: row[k] for k in ("url", "caption", "exported_caption", "decided_by")}
        lines = [{"step": "sample", "status": row["status"], "reason": row["reason"], "detail": row["detail"],
                  "values": sample}]
        lines += [{"step": s["stage"], "status": s["status"], "reason": s["reason"], "detail": s["detail"],
                   "values": s["values"], "settings": {**s["settings"], **{f"{k} (configured)": v for k, v in
                                                                          s.get("configured", {}).items()}},
                   "model": s.get("model")} for s in row["steps"]]
        if row.get("document"):  # the document it stands in, and what became of it
            doc = row["document"]
            lines.append({"step": "document", "status": doc["status"], "reason": doc["reason"], "detail": doc["detail"],
                          "values": {k: doc[k] for k in ("document", "document_id", "position")}})
        lines += [{"step": "instruction", "task": r["task"], "status": r["status"], "reason": r["reason"],
                   "values": {k: v for k, v in r.items() if k not in ("task", "status", "reason")}}
                  for r in row.get("instructions", [])]
        for line in lines:
            out.writerow({**ids, **{k: (None if v is None else v if isinstance(v, str | int) else json.dumps(v, default=str))
                                    for k, v in line.items()}})
    return buf.getvalue()
