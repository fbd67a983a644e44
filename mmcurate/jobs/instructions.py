"""After the synthesis stage: run-level checks, `instructions/` (parquet, llava.json, images), a summary.

The stage validates each answer on its own and against the same image's other questions; only
here, over the whole run in row order, can a question be compared with every earlier one. Teachers
reuse generic questions ("What colours dominate the picture?") with answers of each image's own,
as LLaVA-style data does, so a repeated question alone is no fault. A record is rejected when one
of its teacher-written questions, with the same answer (normalised text), was already in a record
kept before it (`duplicate_answer_across_run`: it says nothing of its image), or was already asked
by as many kept records as the cap allows (`question_over_cap`: `synthesis.max_question_share` of
the run's input rows, at least `QUESTION_CAP_FLOOR`). Both are `algos/claims.py`'s first claims
(capacity 1 for a question with its answer, the cap for a question) in partitions of their hashes,
so no task holds every question: the decisions of one pass in row order, whatever the partitions.
Everything is rebuilt from the stage's records on every run (outside the stage's fingerprint), so
it is resumable and cheap, and a new cap applies to the next run without asking the teacher again.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcurate.algos import partition
from mmcurate.algos.claims import first_claims
from mmcurate.algos.parallel import Tasks
from mmcurate.engine import atomic
from mmcurate.engine.rundir import RunDir
from mmcurate.filters import instructions as V
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages import last_writer
from mmcurate.stages.base import Stage
from mmcurate.stages.synthesis.records import question_keys, reject_repeated
from mmcurate.storage import paths

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "llava.schema.json"
LENGTH_BINS = (0, 50, 100, 200, 400, 800, 1600, 3200, 6400)
# the fewest records that may ask one question, however small the run: a share of a few hundred
# rows would cap generic questions at one or two
QUESTION_CAP_FLOOR = 100


def synthesis_stage(stages: Sequence[Stage]) -> Stage | None:
    return next((s for s in stages if s.name == "synthesis"), None)


def records(run_dir: RunDir, shard: int) -> pa.Table | None:
    path = run_dir.synthesis_records(shard)
    return paths.read_table(path) if path.exists() else None


def question_cap(share: float | None, rows: int) -> int | None:
    """How many records across the run may ask one teacher-written question (None: any number)."""
    return None if share is None else max(QUESTION_CAP_FLOOR, math.ceil(share * rows))


def _questions(run_dir: RunDir, fixed: set[str], cap: int | None, shard: int) -> dict:
    """A shard's records as items of `algos.claims` (gid of the record's index): a key per question
    (capacity: the cap) and per question with its answer (capacity 1)."""
    table = records(run_dir, shard)
    items, keys, caps = [], [], []
    for i, r in enumerate(table.to_pylist() if table is not None else []):
        questions, answered = question_keys(r, fixed)
        mine = {**({h: cap for h in questions} if cap is not None else {}), **{h: 1 for h in answered}}
        items += [(shard << partition.SHIFT) | i] * len(mine)
        keys += mine
        caps += mine.values()
    return {"item": np.array(items, np.int64), "key": np.array(keys, "S12"), "cap": np.array(caps, np.int64)}


def _reasons(record: dict, fixed: set[str], full: np.ndarray) -> list[str]:
    """Why the run-level checks refused a record, from the keys (`full`, S12) that were full."""
    questions, answered = question_keys(record, fixed)
    return ([*(["duplicate_answer_across_run"] if np.isin(np.array(answered, "S12"), full).any() else []),
             *(["question_over_cap"] if np.isin(np.array(questions, "S12"), full).any() else [])])


def _write_shard(run_dir: RunDir, fixed: set[str], shard: int, *refused: dict) -> dict:
    """The shard's records with their final statuses, as instructions/NNNNNN.parquet; its counts."""
    summary = _empty_summary()
    table = records(run_dir, shard)
    if table is None:
        return summary
    rows = table.to_pylist()
    mine = partition.merge(refused)
    mine = partition.of_shard(mine, shard) if mine else {"gid": np.empty(0, np.int64)}
    local = partition.local(mine["gid"])
    for i in np.unique(local).tolist():
        reject_repeated(rows[i], _reasons(rows[i], fixed, mine["key"][local == i]))
    for r in rows:
        _count(summary, r)
    atomic.write_parquet(run_dir.instruction_file(shard), pa.Table.from_pylist(rows, schema=C.INSTRUCTION_SCHEMA))
    return summary


def finish(run_dir: RunDir, stages: Sequence[Stage], tasks: Tasks, rows: int, rows_per_partition: int) -> dict:
    """Write instructions/NNNNNN.parquet (all records, final statuses) and summary.json; return it.

    The across-run checks are `algos.claims` over question hashes in partitions of about
    `rows_per_partition` input rows: no task holds every question, and the decisions are those
    of one pass in row order."""
    run_dir.instructions.mkdir(parents=True, exist_ok=True)
    stage = synthesis_stage(stages)
    # tasks whose human turn is the template's fixed instruction, not a teacher-written question
    fixed = {t for t, x in ((stage.templates or {}) if stage else {}).items() if x.shape == "text"}
    shards = run_dir.shard_count()
    parts = max(1, -(-rows // rows_per_partition))
    cap = question_cap(stage.config.synthesis.max_question_share, rows) if stage else None
    keyed = [tasks.submit(_questions, run_dir, fixed, cap, s) for s in range(shards)]
    refused = first_claims(tasks, keyed, parts)
    written = [tasks.submit(_write_shard, run_dir, fixed, s, *(r[s % parts] for r in refused))
               for s in range(shards)]
    summary = _empty_summary()
    for ref in written:  # in shard order: tasks and reasons are listed as one pass meets them
        _add(summary, tasks.get(ref))
    answered = summary["by_status"]["ok"] + summary["by_status"]["rejected"]
    result = {
        "records": summary["records"],
        "by_status": dict(summary["by_status"]),
        "by_task": summary["by_task"],
        "rejected_by_reason": dict(summary["rejected"].most_common()),
        "failed_by_reason": dict(summary["failed"].most_common()),
        "requests": summary["requests"],
        "retries": summary["retries"],
        "cached": summary["cached"],
        "refusal_rate": round(summary["rejected"]["refusal"] / answered, 4) if answered else None,
        "question_cap": cap,
        "tokens_in": summary["prompt_tokens"],
        "tokens_out": summary["completion_tokens"],
        "answer_length_bins": list(LENGTH_BINS),
        "answer_length_by_task": summary["answer_chars"],
    }
    atomic.write_json(run_dir.instructions_summary, result)
    return result


def _empty_summary() -> dict:
    return {"records": 0, "by_status": Counter(), "by_task": {}, "rejected": Counter(), "failed": Counter(),
            "requests": 0, "retries": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "answer_chars": {}}


def _add(total: dict, part: dict) -> None:
    for name, value in part.items():
        if isinstance(value, int):
            total[name] += value
        elif isinstance(value, Counter):
            total[name].update(value)
        elif name == "by_task":
            for task, counts in value.items():
                mine = total[name].setdefault(task, {"ok": 0, "rejected": 0, "failed": 0})
                for status, n in counts.items():
                    mine[status] += n
        else:  # answer_chars: per task, counts per length bin
            for task, bins in value.items():
                mine = total[name].setdefault(task, [0] * len(LENGTH_BINS))
                total[name][task] = [a + b for a, b in zip(mine, bins)]
def _count(summary: dict, r: dict) -> None:
    summary["records"] += 1
    summary["by_status"][r[C.STATUS]] += 1
    task = summary["by_task"].setdefault(r["task"], {"ok": 0, "rejected": 0, "failed": 0})
    task[r[C.STATUS]] += 1
    if r[C.STATUS] == "rejected":
        summary["rejected"][r[C.REASON]] += 1
    elif r[C.STATUS] == "failed":
        summary["failed"][r[C.REASON]] += 1
    if not r["cached"]:
        summary["requests"] += r["attempts"] or 0
        summary["retries"] += r["retries"] or 0
    else:
        summary["cached"] += 1
    summary["prompt_tokens"] += r["prompt_tokens"] or 0
    summary["completion_tokens"] += r["completion_tokens"] or 0
    if r["answer"] is not None:
        bins = summary["answer_chars"].setdefault(r["task"], [0] * len(LENGTH_BINS))
        n = len(r["answer"])
        bins[max(i for i, edge in enumerate(LENGTH_BINS) if n >= edge)] += 1


def require_instructions(run_dir: RunDir, stages: Sequence[Stage]) -> None:
    """Exit 2 (naming --format) when the run wrote no instruction data."""
    if synthesis_stage(stages) is None or not run_dir.instructions.exists():
        raise ConfigError("--format llava: this run has no instruction data (synthesis.enabled is false)")


def export_llava(run_dir: RunDir, stages: Sequence[Stage], out_dir: Path) -> int:
    """`llava.json` (the ok records, LLaVA's format, validated) with the images it references
    beside it (`images/<key>.<ext>`, from the last stage that writes images: faces blurred)."""
    import jsonschema

    require_instructions(run_dir, stages)
    schema = json.loads(SCHEMA_PATH.read_text())
    item_validator = jsonschema.Draft202012Validator(schema["items"])
    source = last_writer(stages, C.IMAGE)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for shard in range(run_dir.shard_count()):
                path = run_dir.instruction_file(shard)
                if not path.exists():
                    continue
                ok = [r for r in paths.read_table(path).to_pylist() if r[C.STATUS] == "ok"]
                if not ok:
                    continue
                images = run_dir.read_shard(source.name, shard, columns=[C.ROW, C.STATUS, C.IMAGE])
                by_row = {r: img for r, s, img in zip(images[C.ROW].to_pylist(), images[C.STATUS].to_pylist(),
                                                      images[C.IMAGE].to_pylist()) if s == C.KEPT}
                for r in ok:
                    item = {"id": r["id"], "image": r["image"], "conversations": r["conversations"]}
                    item_validator.validate(item)
                    problem = V.llava_format_ok(item["conversations"])
                    if problem:
                        raise ValueError(f"record {r['id']}: {problem}")  # validated upstream: a bug if reached
                    target = out_dir / r["image"]
                    if not target.exists():
                        atomic.write_with(target, lambda t, data=by_row[r[C.ROW]]: Path(t).write_bytes(data))
                    f.write(("," if count else "") + "\n" + json.dumps(item, ensure_ascii=False))
                    count += 1
            f.write("\n]\n")

    atomic.write_with(out_dir / "llava.json", write)
    return count
