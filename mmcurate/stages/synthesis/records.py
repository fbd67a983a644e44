"""Instruction records: one per (sample, task), built from the teacher's reply and validated.

A record is ok, rejected (with its problems, `filters/instructions.py`) or failed (with the
reason the request failed); its provenance (teacher, endpoint, template, sampling, request hash,
tokens, latency) goes with it. `question_keys` feeds the run-level checks that only the whole
run, in row order, can make.
"""

from __future__ import annotations

import hashlib
import json

from mmcurate.filters import instructions as V
from mmcurate.schemas import columns as C
from mmcurate.schemas.synthesis_section import SynthesisConfig
from mmcurate.stages.synthesis.templates import Template


def build(s: SynthesisConfig, template: Template, sampling: dict, row: int, uid: str, fmt: str | None,
          reply: dict, other_questions: list[str]) -> dict:
    """The record of one reply; `other_questions` (this image's questions so far) grows with its turns."""
    task = reply["task"]
    key = C.sample_key(row)
    record = {
        "id": f"{key}-{task}", C.UID: uid, C.ROW: row, "image": f"images/{key}.{fmt or 'jpg'}", "task": task,
        C.STATUS: "ok", C.REASON: None, "problems": [], "flags": [], "conversations": None, "answer": None,
        "finish_reason": None, "teacher_model": s.model, "endpoint": s.endpoint, "template_id": template.id,
        "template_version": template.version, "sampling": json.dumps(sampling, sort_keys=True),
        "request_hash": reply["digest"], "cached": reply["cached"], "prompt_tokens": None,
        "completion_tokens": None, "latency_s": reply.get("latency_s"), "attempts": reply.get("attempts"),
        "retries": reply.get("retries"), "answer_clip_score": None, "caption_clip_score": None,
        "judge": None, "error": None,
    }
    if not reply["ok"]:
        record.update({C.STATUS: "failed", C.REASON: reply["reason"], "error": reply.get("error")})
        return record
    body = reply["body"]
    usage = body.get("usage") or {}
    record["prompt_tokens"], record["completion_tokens"] = usage.get("prompt_tokens"), usage.get("completion_tokens")
    try:
        choice = body["choices"][0]
        text = (choice.get("message") or {}).get("content")
        record["finish_reason"] = choice.get("finish_reason")
    except (IndexError, KeyError, TypeError, AttributeError):
        record.update({C.STATUS: "rejected", C.REASON: "malformed_response", "problems": ["malformed_response"]})
        return record
    record["answer"] = text if isinstance(text, str) else None
    problems = []
    if record["finish_reason"] == "length":
        problems.append("truncated")
    if not isinstance(text, str) or not text.strip():
        problems.append("empty_answer")
    else:
        try:
            turns = V.parse(template.shape, text, template.instruction)
        except ValueError as err:
            # a refusal is rarely the JSON that was asked for: name it for what it is
            problems.append("refusal" if V.is_refusal(text) else str(err).split(":", 1)[0])
        else:
            record["conversations"] = V.conversations(turns)
            problems += V.problems(turns, shape=template.shape, prompt=template.prompt, system=template.system,
                                   min_chars=s.min_answer_chars, max_chars=s.max_answer_chars,
                                   other_questions=other_questions)
            if template.shape != "text":
                other_questions += [t.question for t in turns]
    if problems:
        record.update({C.STATUS: "rejected", C.REASON: problems[0], "problems": problems})
    return record


def question_keys(record: dict, fixed_tasks: set[str]) -> tuple[list[bytes], list[bytes]]:
    """The hashes of an ok record's teacher-written questions and of each with its answer (normalised
    text), for the run-level checks (`jobs/instructions.py`): a question with the same answer as one
    about another image (`duplicate_answer_across_run`), and one asked more often than
    `synthesis.max_question_share` allows (`question_over_cap`), the earlier rows keeping it; none
    for a record that is not ok or whose task asks the template's own words (`fixed_tasks`)."""
    if record[C.STATUS] != "ok" or not record["conversations"] or record["task"] in fixed_tasks:
        return [], []
    turns = record["conversations"]
    asked = [(V.normalise(t["value"].replace(V.IMAGE_TOKEN, "")),
              V.normalise(turns[i + 1]["value"]) if i + 1 < len(turns) and turns[i + 1]["from"] == "gpt" else "")
             for i, t in enumerate(turns) if t["from"] == "human"]
    # normalised text is words joined by single spaces: a newline cannot occur in it
    return [_hash(q) for q, _ in asked], [_hash(f"{q}\n{a}") for q, a in asked]


def _hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


def reject_repeated(record: dict, reasons: list[str]) -> None:
    """Reject an ok record for what the run-level checks found (`question_keys`)."""
    record.update({C.STATUS: "rejected", C.REASON: reasons[0], "problems": reasons})
