"""The run-level checks of the teacher's records (`jobs/instructions.finish`), on records written
straight into a run dir: a generic question with answers of each image's own is kept, the same
question with the same answer is not, a question past the cap is not, and the decisions are those
of one pass in row order whatever the partitions."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate.algos.parallel import SerialTasks
from mmcurate.engine.rundir import RunDir
from mmcurate.jobs import instructions
from mmcurate.schemas import columns as C
from mmcurate.stages.synthesis.records import question_keys

GENERIC = "What colours dominate the picture?"


def record(row: int, turns: list[tuple[str, str]], task: str = "conversation", status: str = "ok") -> dict:
    convs = []
    for i, (q, a) in enumerate(turns):
        convs += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return {"id": f"{row:06d}-{task}", C.UID: f"u{row}", C.ROW: row, "task": task, C.STATUS: status,
            C.REASON: None if status == "ok" else "refusal", "problems": [], "flags": [], "conversations": convs,
            "answer": turns[0][1] if turns else "", "cached": True}


def stage(share: float | None = 0.01):
    return SimpleNamespace(name="synthesis", templates={"conversation": SimpleNamespace(shape="turns"),
                                                        "detail": SimpleNamespace(shape="text")},
                           config=SimpleNamespace(synthesis=SimpleNamespace(max_question_share=share)))


def decide(root, shards: list[list[dict]], rows_per_partition: int = 1_000, share: float | None = 0.01):
    """`finish` over these shards' records: (the final records in row order, the summary)."""
    run_dir = RunDir(root)
    run_dir.ingest_done().parent.mkdir(parents=True, exist_ok=True)
    run_dir.ingest_done().write_text(json.dumps({"shards": len(shards)}))
    for s, rows in enumerate(shards):
        if rows:
            run_dir.synthesis_records(s).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=C.INSTRUCTION_SCHEMA), run_dir.synthesis_records(s))
    n = sum(len(r) for r in shards)
    summary = instructions.finish(run_dir, [stage(share)], SerialTasks(), n, rows_per_partition)
    out = [r for s in range(len(shards)) if run_dir.instruction_file(s).exists()
           for r in pq.read_table(run_dir.instruction_file(s)).to_pylist()]
    return out, summary


def one_pass(rows: list[dict], fixed: set[str], cap: int | None) -> dict[str, str | None]:
    """The rule as one process over the run in row order would apply it: id -> reason (None: kept)."""
    asked, answered, out = Counter(), set(), {}
    for r in rows:
        questions, pairs = question_keys(r, fixed)
        why = [*(["duplicate_answer_across_run"] if answered & set(pairs) else []),
               *(["question_over_cap"] if cap is not None and any(asked[q] >= cap for q in set(questions)) else [])]
        out[r["id"]] = why[0] if why else r[C.REASON]
        if not why:
            asked.update(set(questions))
            answered.update(pairs)
    return out


def test_a_generic_question_with_answers_of_each_image_s_own_is_kept(tmp_path):
    shards = [[record(10 * s + i, [(GENERIC, f"Mostly shade {10 * s + i} of blue."), (f"What is item {10 * s + i}?", "A cup.")])
               for i in range(10)] for s in range(6)]
    out, summary = decide(tmp_path, shards, rows_per_partition=7)
    assert len(out) == 60 and {r[C.STATUS] for r in out} == {"ok"}
    assert summary["question_cap"] == instructions.QUESTION_CAP_FLOOR and summary["rejected_by_reason"] == {}


def test_the_same_question_with_the_same_answer_is_rejected_and_the_first_kept(tmp_path):
    same = "Mostly blue, with a little red."
    shards = [[record(0, [("What is this?", "A bird."), (GENERIC, same)]),
               record(1, [(GENERIC, "mostly BLUE with a little red")]),  # the same, normalised
               record(2, [(GENERIC, "Mostly green.")])],
              [record(3, [("what colours dominate the picture", same), ("Where?", "Here.")]),
               record(4, [(GENERIC, same)], status="rejected"),  # rejected already: claims nothing
               record(5, [("The picture's colours?", same)]),  # another question: kept
               record(6, [], task="detail") | {"conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                                 {"from": "gpt", "value": same}]},
               record(7, [], task="detail") | {"conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                                 {"from": "gpt", "value": same}]}]]
    out, summary = decide(tmp_path, shards, rows_per_partition=2)
    got = {r["id"].split("-")[0]: (r[C.STATUS], r[C.REASON]) for r in out}
    dup = ("rejected", "duplicate_answer_across_run")
    assert got == {"000000": ("ok", None), "000001": dup, "000002": ("ok", None), "000003": dup,
                   "000004": ("rejected", "refusal"), "000005": ("ok", None),
                   "000006": ("ok", None), "000007": ("ok", None)}  # the template's own words: not checked
    assert summary["rejected_by_reason"] == {"duplicate_answer_across_run": 2, "refusal": 1}


def test_a_question_past_the_cap_is_rejected_in_row_order(tmp_path, monkeypatch):
    monkeypatch.setattr(instructions, "QUESTION_CAP_FLOOR", 3)
    rows = [record(0, [(GENERIC, "Blue.")]),
            record(1, [(GENERIC, "Blue.")]),  # a duplicate answer takes no place under the cap
            record(2, [(GENERIC, "Red."), ("What is it?", "A kite.")]),
            record(3, [(GENERIC, "Green.")]),
            record(4, [(GENERIC, "Grey."), ("Where is it?", "On a hill.")]),  # the fourth: past the cap
            record(5, [("Where is it?", "On a hill.")]),  # kept: the refused record claimed nothing
            record(6, [(GENERIC, "Blue.")])]  # both: the first reason is the repeated answer
    out, summary = decide(tmp_path, [rows[:3], rows[3:]], rows_per_partition=1)
    assert [(r[C.STATUS], r["problems"]) for r in out] == [
        ("ok", []), ("rejected", ["duplicate_answer_across_run"]), ("ok", []), ("ok", []),
        ("rejected", ["question_over_cap"]), ("ok", []),
        ("rejected", ["duplicate_answer_across_run", "question_over_cap"])]
    assert summary["question_cap"] == 3
    assert summary["rejected_by_reason"] == {"duplicate_answer_across_run": 2, "question_over_cap": 1}
    out, summary = decide(tmp_path / "uncapped", [rows[:3], rows[3:]], share=None)
    # no cap: the fourth is kept, and the record asking its second question the same way is not
    assert summary["question_cap"] is None and summary["rejected_by_reason"] == {"duplicate_answer_across_run": 3}


def test_question_cap_is_a_share_of_the_input_with_a_floor():
    assert instructions.question_cap(0.01, 60) == instructions.QUESTION_CAP_FLOOR == 100
    assert instructions.question_cap(0.01, 10**9) == 10**7 and instructions.question_cap(None, 10**9) is None


@pytest.mark.parametrize("seed", range(3))
def test_the_decisions_are_one_pass_in_row_order_whatever_the_partitions(tmp_path, monkeypatch, seed):
    """Random records over a few questions and answers (repeats, caps reached, chains through
    refused records) in several shards: every partitioning decides as one pass in row order."""
    rng = np.random.default_rng(seed)
    cap = int(rng.integers(2, 5))
    monkeypatch.setattr(instructions, "QUESTION_CAP_FLOOR", cap)
    shards, row = [], 0
    for _ in range(int(rng.integers(2, 6))):
        shard = []
        for _ in range(int(rng.integers(3, 15))):
            turns = [(f"Question {q}?", f"Answer {a}.") for q, a in zip(rng.integers(0, 4, 2), rng.integers(0, 12, 2))]
            shard.append(record(row, turns, status="ok" if rng.random() > 0.1 else "rejected"))
            row += 1
        shards.append(shard)
    want = one_pass([r for s in shards for r in s], {"detail"}, cap)
    assert Counter(want.values())["question_over_cap"] and Counter(want.values())["duplicate_answer_across_run"]
    for per_partition in (1, 3, 1_000):
        out, _ = decide(tmp_path / str(per_partition), shards, rows_per_partition=per_partition)
        assert {r["id"]: r[C.REASON] for r in out} == want, per_partition
