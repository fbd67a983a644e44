"""Validation of teacher answers before anything is kept: the failures seen in released datasets.

`parse(shape, text)` turns an answer into question/answer turns (a ```json fence is accepted);
`problems(...)` lists what is wrong with them, as reason codes, in the order checked:

- `truncated` (finish_reason "length"), `empty_answer`, `unparseable`, `bad_structure`;
- `llava_format`: LLaVA's trainer needs strict human/gpt alternation starting with human,
  `<image>` exactly once and in the first human turn, no empty turn (it silently drops samples
  that break its template, LLaVA#661);
- `refusal` ("I'm sorry, but I can't ..."; LLaVA-NeXT#158 shipped them);
- `prompt_echo`: the teacher repeats the instructions back (ALLaVA#11);
- `mentions_caption`: "the caption", "the description" instead of the image;
- `too_short`, `too_long`, `repetition` (degenerate loops, ShareGPT4V#12);
- `duplicate_question`, `similar_question` (ROUGE-L >= 0.7 against the same image's other
  questions, as Self-Instruct did).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SHAPES = ("turns", "text", "qa")
IMAGE_TOKEN = "<image>"
MAX_TURNS = 6
SIMILAR_ROUGE_L = 0.7

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|as an ai\b|i cannot|i can'?t|i am unable|i'm unable|"
    r"unable to (?:see|view|help|assist|provide)|i do not have the ability|i don'?t have the ability|"
    r"cannot (?:assist|help) with|can'?t (?:assist|help) with)",
    re.IGNORECASE,
)
_MENTIONS = re.compile(
    r"\b(?:the|this|that|given|provided|above|your)\s+(?:image\s+)?(?:caption|description|note|text prompt)\b"
    r"|\baccording to the (?:caption|description|note|text)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Turn:
    question: str
    answer: str


def _json_object(text: str):
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    candidate = candidate.strip()
    if not candidate.startswith("{"):
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("no JSON object in the answer")
        candidate = candidate[start:end + 1]
    return json.loads(candidate)


def parse(shape: str, text: str, instruction: str | None = None) -> list[Turn]:
    """The answer as turns; ValueError("unparseable: ...") or ValueError("bad_structure: ...")."""
    if shape == "text":
        return [Turn(instruction or "", text.strip())]
    try:
        data = _json_object(text)
    except ValueError as err:
        raise ValueError(f"unparseable: {err}") from None
    if shape == "qa":
        items = [data] if isinstance(data, dict) else None
    else:
        items = data.get("turns") if isinstance(data, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_TURNS:
            raise ValueError(f"bad_structure: expected 'turns' with 1-{MAX_TURNS} items")
    turns = []
    for item in items or []:
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not isinstance(item.get("answer"), str):
            raise ValueError("bad_structure: every turn needs a string 'question' and 'answer'")
        turns.append(Turn(item["question"].strip(), item["answer"].strip()))
    if not turns:
        raise ValueError("bad_structure: no question and answer")
    return turns


def conversations(turns: list[Turn]) -> list[dict]:
    """LLaVA's `conversations`: <image> once, at the start of the first human turn."""
    out = []
    for i, turn in enumerate(turns):
        question = f"{IMAGE_TOKEN}\n{turn.question}" if i == 0 else turn.question
        out += [{"from": "human", "value": question}, {"from": "gpt", "value": turn.answer}]
    return out


def llava_format_ok(convs: list[dict]) -> str | None:
    """What breaks LLaVA's training template, or None."""
    if not convs or len(convs) % 2:
        return "the conversation must be human/gpt pairs"
    for i, turn in enumerate(convs):
        if turn.get("from") != ("human" if i % 2 == 0 else "gpt"):
            return f"turn {i} should be from {'human' if i % 2 == 0 else 'gpt'}"
        if not str(turn.get("value", "")).replace(IMAGE_TOKEN, "").strip():
            return f"turn {i} is empty"
    count = sum(str(t["value"]).count(IMAGE_TOKEN) for t in convs)
    if count != 1 or not convs[0]["value"].startswith(IMAGE_TOKEN):
        return f"{IMAGE_TOKEN} must appear exactly once, at the start of the first human turn (found {count})"
    return None


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text or ""))


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over words (longest common subsequence), as Self-Instruct used it."""
    x, y = normalise(a).split(), normalise(b).split()
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


def repetitive(text: str) -> bool:
    """A degenerate loop: one 4-gram making up much of a long answer, or a sentence said 3+ times."""
    words = normalise(text).split()
    if len(words) >= 24:
        grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
        top = max(grams.count(g) for g in set(grams))
        if top * 4 >= 0.3 * len(words) and top >= 4:
            return True
    sentences = [normalise(s) for s in re.split(r"[.!?\n]+", text) if len(normalise(s).split()) >= 3]
    return any(sentences.count(s) >= 3 for s in set(sentences))


def echoes_prompt(text: str, prompt: str, system: str) -> bool:
    """The answer repeats a long stretch of the instructions (12+ words in a row)."""
    answer = f" {normalise(text)} "
    for source in (prompt, system):
        words = normalise(source).split()
        for i in range(max(0, len(words) - 11)):
            if f" {' '.join(words[i:i + 12])} " in answer:
                return True
    return False


def problems(turns: list[Turn], *, shape: str, prompt: str, system: str, min_chars: int, max_chars: int,
             other_questions: list[str]) -> list[str]:
    """Reason codes for what is wrong with parsed turns (empty: keep)."""
    found: list[str] = []
    convs = conversations(turns)
    if llava_format_ok(convs):
        found.append("llava_format")
    answers = [t.answer for t in turns]
    everything = "\n".join(answers + ([] if shape == "text" else [t.question for t in turns]))
    if any(_REFUSAL.search(a) for a in answers):
        found.append("refusal")
    if echoes_prompt(everything, prompt, system):
        found.append("prompt_echo")
    if _MENTIONS.search(everything):
        found.append("mentions_caption")
    if any(len(a) < min_chars for a in answers):
        found.append("too_short")
    if any(len(a) > max_chars for a in answers):
        found.append("too_long")
    if any(repetitive(a) for a in answers):
        found.append("repetition")
    if shape != "text":
        questions = [t.question for t in turns]
        norms = [normalise(q) for q in questions]
        if len(set(norms)) < len(norms) or any(n in {normalise(o) for o in other_questions} for n in norms):
            found.append("duplicate_question")
        else:
            pool = list(other_questions)
            for q in questions:
                if any(rouge_l(q, o) >= SIMILAR_ROUGE_L for o in pool):
                    found.append("similar_question")
                    break
                pool.append(q)
    return found
