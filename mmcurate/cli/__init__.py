"""The command line (DESIGN A.1): parses, prints, exits. Exit 0 ok, 2 bad config or input, 1 other,
3 a `--where` cut the run cannot honour in full (nothing written)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from mmcurate import __version__
from mmcurate.cli.console import progress_of, without_ray_noise
from mmcurate.schemas.errors import ConfigError, MmcurateError

log = logging.getLogger("mmcurate")


def _config(args):
    """The validated config of `mmcurate run` (file plus --set overrides); a run dir in the config's
    place gives the config its manifest recorded (and is the run dir, unless --run-dir says)."""
    from mmcurate.schemas.config import config_from_dict, load_config

    if not Path(args.config).is_dir():
        return load_config(args.config, args.set or [])
    manifest = _run_dir(args.config).read_manifest()
    return config_from_dict(manifest.get("config") or {}, args.set or [], f"{args.config}/manifest.json")


def cmd_run(args) -> int:
    from mmcurate.jobs.run import run

    config = _config(args)
    run_dir = args.run_dir or (args.config if Path(args.config).is_dir() else Path("runs") / Path(args.config).stem)
    with progress_of(args) as progress, without_ray_noise(args.verbose):
        result = run(config, run_dir, address=args.address, force=args.force, progress=progress,
                     retry_failed=args.retry_failed)
    led = result.ledger
    print(f"run dir: {result.run_dir}")
    print(f"ledger:  {led['rows']:,} rows = {led['kept']:,} kept + {led['dropped']:,} dropped + {led['failed']:,} failed")
    if result.documents is not None:
        docs = result.documents
        print(f"documents: {docs['documents']:,} = {docs['kept']:,} kept + {docs['dropped']:,} dropped + "
              f"{docs['failed']:,} failed")
    print(f"report:  {result.report}")
    _notes(result)
    return 0


def _notes(result) -> None:
    for note in result.notes:
        print(f"note:    {note}")


def cmd_demo(args) -> int:
    from mmcurate.demo import run_demo, shapes

    if not (shapes.cache_dir() / "mmcurate_card.json").exists() and not args.quiet:
        print(f"training the demo's offline stand-in CLIP once (about a minute) into {shapes.cache_dir()}", flush=True)
    with progress_of(args) as progress, without_ray_noise(args.verbose):
        result, interleaved = run_demo(args.run_dir, progress=progress, force=args.force)
    led, docs = result.ledger, interleaved.documents
    print(f"run dir: {result.run_dir}")
    print(f"ledger:  {led['rows']:,} rows = {led['kept']:,} kept + {led['dropped']:,} dropped + {led['failed']:,} failed")
    print(f"report:  {result.report}")
    print(f"llava:   {result.run_dir / 'instructions' / 'llava.json'} (written by the demo's stand-in teacher, not a model)")
    print(f"documents: {docs['documents']:,} = {docs['kept']:,} kept + {docs['dropped']:,} dropped + {docs['failed']:,} "
          f"failed (MMC4 documents, run in {interleaved.run_dir}; exported to its shards/mmc4, obelics, webdataset)")
    print(f"try:     mmcurate audit {result.run_dir} --status failed --limit 10")
    _notes(result)
    _notes(interleaved)
    return 0


def _run_dir(path: str):
    """The run dir a command reads; a folder that is none (no manifest.json) exits 2 saying so."""
    from mmcurate.engine.rundir import RunDir

    run_dir = RunDir.at(path)
    run_dir.read_manifest()
    return run_dir


def cmd_status(args) -> int:
    from mmcurate.jobs.status import run_status

    status = run_status(_run_dir(args.run_dir))
    if args.format == "json":
        print(json.dumps(status, indent=2))
        return 0
    print(f"{status['run_dir']}: {status['status']}")
    print(f"{'stage':<18} {'shards':>13} {'rows in':>10} {'kept':>10} {'dropped':>10} {'failed':>10}  status")
    for s in status["stages"]:
        if s.get("status") == "unavailable":
            print(f"{s['stage']:<18} {'':>13} {'':>10} {'':>10} {'':>10} {'':>10}  not in this version")
            continue
        shards = f"{s['shards_done']}/{s['shards_total']}"
        print(f"{s['stage']:<18} {shards:>13} {s['rows_in']:>10,} {s['kept']:>10,} {s['dropped']:>10,} {s['failed']:>10,}  {s['status']}")
    if status.get("ledger"):
        led = status["ledger"]
        print(f"ledger: {led['rows']:,} rows = {led['kept']:,} kept + {led['dropped']:,} dropped + {led['failed']:,} failed")
    if status.get("documents"):
        docs = status["documents"]
        print(f"documents: {docs['documents']:,} = {docs['kept']:,} kept + {docs['dropped']:,} dropped + "
              f"{docs['failed']:,} failed")
    return 0


def cmd_report(args) -> int:
    from mmcurate.jobs.report import write_report

    print(write_report(_run_dir(args.run_dir), show_nsfw=args.show_nsfw))
    return 0


def cmd_audit(args) -> int:
    from mmcurate.cli.audit import audit, check_flags

    check_flags(args)
    return audit(args, _run_dir(args.run_dir))


def cmd_export(args) -> int:
    from mmcurate.engine.rundir import RunDir
    from mmcurate.jobs.export import export_all
    from mmcurate.jobs.manifest import stages_of

    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", args.out):  # checked before anything is read
        raise ConfigError(f"--out {args.out}: export writes to a local folder; copy it to the bucket afterwards "
                          "(a run's own exports, under an s3:// --run-dir, are written there)")
    run_dir = RunDir.at(args.run_dir)
    manifest = run_dir.read_manifest()
    if manifest.get("status") != "finished":
        raise ConfigError(f"{run_dir.root}: the run has not finished (status {manifest.get('status')}); run it again to resume")
    out = Path(args.out)
    stages = stages_of(manifest, str(run_dir.manifest))
    count, summary = export_all(run_dir, stages, args.format, out, where=args.where,
                                samples_per_shard=args.samples_per_shard, partial=args.partial)
    if summary is not None:
        print("\n".join(summary.lines(run_dir.root, stages, manifest.get("config", {}))), file=sys.stderr)
    cut = f" where {args.where}" + (" (partial: see above)" if summary and not summary.complete else "") if args.where else ""
    from mmcurate.jobs.document_export import FORMATS, is_documents_run

    documents = args.format in FORMATS and is_documents_run(stages)
    what = "documents" if documents else {"llava": "instruction records", "ids": "ids"}.get(args.format, "samples")
    print(f"exported {count:,} {what}{cut} as {args.format} to {out}")
    if not count:
        print(f"note:    nothing {'matched' if args.where else 'to export'}: {out} holds an empty dataset "
              "(its files have the columns and no rows)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcurate", description="Curated, audited multimodal training data.")
    parser.add_argument("--version", action="version", version=f"mmcurate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline (re-running the same run dir resumes)")
    p.add_argument("config", help="a config file, or a run dir: the config its manifest recorded")
    p.add_argument("--run-dir", help="default: runs/<config name>, or the run dir given as config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key by dotted path")
    p.add_argument("--address", help="attach to a Ray cluster: auto or ray://host:port (default: embedded Ray)")
    p.add_argument("--force", action="store_true", help="accept a changed config: redo what the change affects")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--retry-failed", action="store_true",
                   help="fetch again the rows whose download failed for a transient reason (download.retry_reasons), "
                        "then redo only the work downstream of the shards that changed")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the embedded sample end to end from a loopback server")
    p.add_argument("--run-dir", default="demo-run")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="stage-by-stage progress of a run dir")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="(re)build report/ from the ledger")
    p.add_argument("run_dir")
    p.add_argument("--show-nsfw", action="store_true", help="show the images of NSFW drops (by default they are "
                   "listed by uid only)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("audit", help="query the ledger: why was a sample dropped")
    p.add_argument("run_dir")
    p.add_argument("--stage")
    p.add_argument("--reason")
    p.add_argument("--uid", help="a uid, or any unambiguous start of one (the report shows 12 characters)")
    p.add_argument("--status", choices=["kept", "dropped", "failed"])
    p.add_argument("--limit", type=int, default=20, help="0 for all")
    p.add_argument("--explain", metavar="UID", help="every stage's decision, scores, settings and model for this "
                   "sample (a uid or its start), its exported caption and instruction records")
    p.add_argument("--dump", metavar="DIR", help="with --explain: write decision.json and the images behind it (downloaded, "
                   "exported, a duplicate's keeper) into DIR, a new or empty folder")
    p.add_argument("--show-nsfw", action="store_true", help="with --dump: write the images of a row flagged NSFW too")
    p.add_argument("--sample", type=int, metavar="N", help="a reproducible random sample of N matching rows")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (same run + seed = same rows)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("export", help="write the kept samples in a format")
    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=["webdataset", "parquet", "hf", "llava", "ids", "mmc4", "obelics"],
                   help="ids: the kept rows' ids only (ids.parquet; ids.npy of a pool's 128-bit uids, as DataComp reads); "
                        "mmc4, obelics: a documents run's kept documents (webdataset too: one sample per document)")
    p.add_argument("--out", required=True)
    p.add_argument("--samples-per-shard", type=int, metavar="N",
                   help="webdataset, parquet: repack into files of N samples each (the last smaller), keys.parquet beside; "
                        "mmc4, webdataset, obelics of a documents run: N documents a file")
    p.add_argument("--where", help="another cut of the same run: a polars SQL expression over ledger columns, "
                   "e.g. \"clip_score > 0.3 and caption_words >= 5\"; it says how many rows match and can be "
                   "exported, and exits 3 writing nothing when some it takes back need a rerun")
    p.add_argument("--partial", action="store_true", help="with --where: export the rows that can be, when others "
                   "need a rerun (the summary and the manifest say so)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mmcurate` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("huggingface_hub").propagate = False  # it prints its own lines: not each twice
    if not args.verbose:
        warnings.filterwarnings("ignore", category=UserWarning, module=r"ray(\.|$)")  # notes for Ray's developers
    try:
        return args.func(args)
    except MmcurateError as err:
        print(f"mmcurate: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("mmcurate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mmcurate audit ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as err:
        log.debug("unhandled error", exc_info=True)
        print(f"mmcurate: error: {type(err).__name__}: {err} (run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
