"""Synthesis: instruction-tuning data from a teacher MLLM behind an OpenAI-compatible endpoint.

For each kept sample and each task in `synthesis.tasks`, one chat-completions request: the image
as a base64 `data:` URL content part, the caption (as the privacy stage left it) as context, the
prompt from a versioned template file. Every response is cached under its request hash in the
run dir before it is validated, so a rerun never pays twice; every answer is validated
(`filters/instructions.py`) and every (sample, task) ends as a record: ok, rejected (with its
problems) or failed (with its reason). Samples are never dropped here: the stage adds data.

The stage runs as one actor whose thread pool holds at most `max_concurrency` requests in flight:
that is the bound for the whole run, whatever the cluster's size.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import yaml

from mmcurate import atomic
from mmcurate.errors import ConfigError
from mmcurate.filters import instructions as V
from mmcurate.pipelines.stage import Cluster, Resources, Stage, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

BUILTIN_TEMPLATES = Path(__file__).parent / "templates"
MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
JSON_SCHEMAS = {
    "turns": {"type": "object", "required": ["turns"], "properties": {"turns": {
        "type": "array", "minItems": 1, "maxItems": V.MAX_TURNS, "items": {
            "type": "object", "required": ["question", "answer"],
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}}}},
    "qa": {"type": "object", "required": ["question", "answer"],
           "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}},
}
JUDGE_PROMPT = (
    "Here is an image and a question-and-answer exchange about it.\n\n{exchange}\n\n"
    'Is the answer accurate and grounded in the image, and complete? Respond with a JSON object '
    '{{"accurate": true or false, "complete": true or false}}.'
)


@dataclass(frozen=True)
class Template:
    id: str
    version: str
    shape: str
    system: str
    prompt: str
    instruction: str | None = None


def load_templates(folder: str | None, tasks: list[str]) -> dict[str, Template]:
    """The template of each task: `<task>.yaml` in `folder` (users' own), else the built-in one."""
    out = {}
    for task in tasks:
        path = None
        for base in ([Path(folder).expanduser()] if folder else []) + [BUILTIN_TEMPLATES]:
            if (base / f"{task}.yaml").is_file():
                path = base / f"{task}.yaml"
                break
        if path is None:
            where = f"{folder} or the built-in templates" if folder else "the built-in templates"
            raise ConfigError(f"synthesis.tasks: no template {task}.yaml in {where}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            template = Template(
                id=str(data.get("id") or task), version=str(data["version"]), shape=data["shape"],
                system=str(data.get("system") or ""), prompt=str(data["prompt"]), instruction=data.get("instruction"),
            )
            template.prompt.format(caption="x")
        except (KeyError, TypeError, ValueError, IndexError, yaml.YAMLError) as err:
            raise ConfigError(f"synthesis.templates: {path}: needs version, shape ({', '.join(V.SHAPES)}), "
                              f"prompt with a {{caption}} field ({type(err).__name__}: {err})") from None
        if template.shape not in V.SHAPES:
            raise ConfigError(f"synthesis.templates: {path}: shape {template.shape!r} (choose from {', '.join(V.SHAPES)})")
        if template.shape == "text" and not template.instruction:
            raise ConfigError(f"synthesis.templates: {path}: a text task needs an 'instruction' (its human turn)")
        out[task] = template
    return out


def request_hash(payload: dict, image_sha: str, template: Template) -> str:
    """What determines an answer: model, messages (the image by its hash), sampling, template."""
    def strip(obj):
        if isinstance(obj, dict):
            if obj.get("type") == "image_url":
                return {"type": "image_url", "image_sha256": image_sha}
            return {k: strip(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    key = {"payload": strip(payload), "template": [template.id, template.version]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class SynthesisStage(Stage):
    name = "synthesis"
    version = "1"
    output_schema = C.SYNTHESIS_SCHEMA
    score_columns = (C.SYNTH_ANSWERED, C.SYNTH_FAILED)
    input_columns = (C.CAPTION, C.IMAGE, C.IMAGE_FORMAT, C.CLIP_SCORE)

    def __init__(self, config: Config):
        super().__init__(config)
        self.templates: dict[str, Template] | None = None
        self.clip_weights = None
        self._client = None
        self._judge = None
        self._clip = None

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.synthesis.enabled

    # ------------------------------------------------------------------ driver side
    def prepare(self) -> dict:
        s = self.config.synthesis
        self.templates = load_templates(s.templates, s.tasks)
        if s.api_key_env and not os.environ.get(s.api_key_env):
            raise ConfigError(f"synthesis.api_key_env: the environment variable {s.api_key_env} is not set")
        if self.config.clip.enabled:
            from mmcurate.filters.clip_score import WeightsError, resolve_weights

            try:
                self.clip_weights = resolve_weights(self.config.clip.model, self.config.clip.pretrained)
            except WeightsError as err:
                raise ConfigError(f"{err.key}: {err}") from None
        return {"teacher": {"model": s.model, "endpoint": s.endpoint,
                            "templates": {t: f"{x.id}@{x.version}" for t, x in self.templates.items()},
                            "judge": self._judge_target() if s.judge.enabled else None}}

    def _judge_target(self) -> dict:
        s = self.config.synthesis
        return {"model": s.judge.model or s.model, "endpoint": s.judge.endpoint or s.endpoint}

    def config_sections(self) -> dict:
        s = self.config.synthesis
        return {
            # what the answers depend on; concurrency, retries and timeouts change only speed
            **s.model_dump(include={"model", "tasks", "temperature", "top_p", "max_tokens", "seed",
                                    "structured_output", "min_answer_chars", "max_answer_chars",
                                    "grounding_min_ratio", "judge"}),
            "templates": {t: [x.id, x.version, x.shape, x.system, x.prompt, x.instruction]
                          for t, x in (self.templates or {}).items()},
        }

    def resources(self, cluster: Cluster) -> Resources:
        return Resources(num_cpus=1, actors=1)

    # ------------------------------------------------------------------ worker side
    def setup(self) -> None:
        from mmcurate.pipelines.teacher import TeacherClient

        if self.templates is None:
            self.prepare()
        s = self.config.synthesis
        key = os.environ.get(s.api_key_env) if s.api_key_env else None
        common = {"timeout_s": s.timeout_s, "max_retries": s.max_retries, "max_concurrency": s.max_concurrency,
                  "requests_per_s": s.requests_per_s}
        if self._client is None:
            self._client = TeacherClient(s.endpoint, key, **common)
        if s.judge.enabled and self._judge is None:
            self._judge = TeacherClient(self._judge_target()["endpoint"], key, **common)
        if self.clip_weights is not None and self._clip is None:
            from mmcurate.filters.clip_score import ClipScorer

            self._clip = ClipScorer(self.clip_weights, self.config.clip.device, self.config.clip.batch_size)
            self._clip.load()

    def cache_file(self) -> Path:
        return Path(self.run_root) / "instructions" / "cache" / f"{self.shard:06d}.jsonl"

    def _open_cache(self) -> None:
        """Load this shard's answers (hash -> response) and open the file for appending.

        One JSON line per answer, appended and flushed as it arrives, before it is validated. A
        line cut short by a crash is dropped (and cut off the file) on the next load: that answer
        is asked again. Not fsynced: a power cut costs repeated requests, never a wrong answer."""
        path = self.cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, dict] = {}
        good = 0
        if path.exists():
            data = path.read_bytes()
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                try:
                    item = json.loads(line)
                    self._cache[item["hash"]] = item["entry"]
                except (ValueError, KeyError, TypeError):
                    break
                good += len(line)
            if good < len(data):
                with open(path, "r+b") as f:
                    f.truncate(good)
        self._cache_out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in process()

    def _sampling(self) -> dict:
        s = self.config.synthesis
        out = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.seed is not None:
            out["seed"] = s.seed
        return out

    def _payload(self, template: Template, caption: str, data_url: str) -> dict:
        s = self.config.synthesis
        messages = []
        if template.system:
            messages.append({"role": "system", "content": template.system})
        messages.append({"role": "user", "content": [
            {"type": "text", "text": template.prompt.format(caption=caption)},
            {"type": "image_url", "image_url": {"url": data_url}},
        ]})
        payload = {"model": s.model, "messages": messages, **self._sampling()}
        if s.structured_output and template.shape in JSON_SCHEMAS:
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": template.id, "schema": JSON_SCHEMAS[template.shape], "strict": True}}
        return payload

    async def _ask(self, client, http, payload: dict, digest: str) -> dict:
        """The cached answer for `digest`, or a fresh call (cached before anyone looks at it)."""
        if digest in self._cache:
            return {**self._cache[digest], "cached": True}
        reply = await client.achat(http, payload, self._slots)
        entry = {"ok": reply.ok, "body": reply.body, "reason": reply.reason, "error": reply.error,
                 "status": reply.status, "attempts": reply.attempts, "retries": reply.retries,
                 "latency_s": round(reply.latency_s, 4), "retry_after": reply.retry_after}
        if reply.ok:
            self._cache[digest] = entry
            self._cache_out.write(json.dumps({"hash": digest, "entry": entry}) + "\n")
            self._cache_out.flush()
        return {**entry, "cached": False}

    async def _one(self, http, item: tuple) -> dict:
        async with self._work:  # payloads (base64 images) are built for this many requests at most
            return await self._one_request(http, item)

    async def _one_request(self, http, item: tuple) -> dict:
        row, caption, image, fmt, task = item
        template = self.templates[task]
        mime = MIME.get((fmt or "jpg").lower(), "image/jpeg")
        data_url = f"data:{mime};base64,{base64.b64encode(image).decode()}"
        payload = self._payload(template, caption, data_url)
        digest = request_hash(payload, hashlib.sha256(image).hexdigest(), template)
        return {"task": task, "digest": digest, **await self._ask(self._client, http, payload, digest)}

    async def _judge_one(self, http, image: bytes, fmt: str | None, convs: list[dict]) -> dict | None:
        exchange = "\n".join(f"{t['from']}: {t['value'].replace(V.IMAGE_TOKEN, '').strip()}" for t in convs)
        target = self._judge_target()
        mime = MIME.get((fmt or "jpg").lower(), "image/jpeg")
        payload = {"model": target["model"], "temperature": 0.0, "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "text", "text": JUDGE_PROMPT.format(exchange=exchange)},
            {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(image).decode()}"}}]}]}
        judge_template = Template("judge", "1", "qa", "", JUDGE_PROMPT)
        digest = request_hash(payload, hashlib.sha256(image).hexdigest(), judge_template)
        reply = await self._ask(self._judge, http, payload, digest)
        if not reply["ok"]:
            return None
        try:
            verdict = V._json_object(reply["body"]["choices"][0]["message"]["content"] or "")
            return {"accurate": bool(verdict.get("accurate")), "complete": bool(verdict.get("complete"))}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None

    def _record(self, row: int, uid: str, fmt: str | None, reply: dict, other_questions: list[str]) -> dict:
        s = self.config.synthesis
        task = reply["task"]
        template = self.templates[task]
        from mmcurate.jobs.export import sample_key

        key = sample_key(row)
        record = {
            "id": f"{key}-{task}", C.UID: uid, C.ROW: row, "image": f"images/{key}.{fmt or 'jpg'}", "task": task,
            C.STATUS: "ok", C.REASON: None, "problems": [], "flags": [], "conversations": None, "answer": None,
            "finish_reason": None, "teacher_model": s.model, "endpoint": s.endpoint, "template_id": template.id,
            "template_version": template.version, "sampling": json.dumps(self._sampling(), sort_keys=True),
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

    def process(self, rows: pa.Table) -> pa.Table:
        self.setup()
        tasks = list(self.templates)
        uids, row_ids = rows[C.UID].to_pylist(), rows[C.ROW].to_pylist()
        captions, images = rows[C.CAPTION].to_pylist(), rows[C.IMAGE].to_pylist()
        formats = rows[C.IMAGE_FORMAT].to_pylist()
        clip_scores = rows[C.CLIP_SCORE].to_pylist() if C.CLIP_SCORE in rows.column_names else [None] * rows.num_rows
        items = [(r, c, i, f, t) for r, c, i, f in zip(row_ids, captions, images, formats) for t in tasks]
        self._open_cache()
        try:
            replies = self._gather(self._client, self._one, items)
            records, per_row = [], []
            for n, (row, uid, fmt) in enumerate(zip(row_ids, uids, formats)):
                others: list[str] = []  # questions already asked about this image (ROUGE-L against them)
                mine = [self._record(row, uid, fmt, reply, others)
                        for reply in replies[n * len(tasks):(n + 1) * len(tasks)]]
                records += mine
                per_row.append(mine)
            self._ground(records, images, clip_scores, row_ids)
            if self._judge is not None:
                self._judge_all(records, dict(zip(row_ids, zip(images, formats))))
        finally:
            self._cache_out.close()
        status = [C.KEPT] * rows.num_rows
        details = []
        for mine in per_row:
            failed = [r for r in mine if r[C.STATUS] == "failed"]
            why = sorted({r[C.REASON] for r in failed})
            details.append(f"synthesis: {len(failed)} of {len(mine)} teacher requests failed ({', '.join(why)})"
                           if failed else None)
        atomic.write_parquet(self.records_file(rows), pa.Table.from_pylist(records, schema=C.INSTRUCTION_SCHEMA))
        cols = decisions(rows, status, [None] * rows.num_rows, details)
        cols[C.SYNTH_ANSWERED] = pa.array([sum(r[C.STATUS] != "failed" for r in mine) for mine in per_row], pa.int16())
        cols[C.SYNTH_FAILED] = pa.array([sum(r[C.STATUS] == "failed" for r in mine) for mine in per_row], pa.int16())
        return pa.table(cols, schema=self.output_schema)

    def _gather(self, client, fn, items: list) -> list:
        """`fn(http, item)` for every item on one event loop, at most max_concurrency requests in flight."""
        async def run() -> list:
            self._slots = asyncio.Semaphore(self.config.synthesis.max_concurrency)
            self._work = asyncio.Semaphore(2 * self.config.synthesis.max_concurrency)
            async with client.session() as http:
                return await asyncio.gather(*(fn(http, item) for item in items))

        return asyncio.run(run())

    def _ground(self, records: list[dict], images: list, clip_scores: list, row_ids: list) -> None:
        """Where CLIP ran: flag answers whose text-image score falls far below the caption's."""
        if self._clip is None:
            return
        by_row = {r: (img, score) for r, img, score in zip(row_ids, images, clip_scores)}
        todo = [r for r in records if r[C.STATUS] == "ok"]
        if not todo:
            return
        texts = [" ".join(t["value"] for t in r["conversations"] if t["from"] == "gpt") for r in todo]
        scores, _, _ = self._clip.score([by_row[r[C.ROW]][0] for r in todo], texts)
        ratio = self.config.synthesis.grounding_min_ratio
        for record, score in zip(todo, scores.tolist()):
            caption_score = by_row[record[C.ROW]][1]
            record["answer_clip_score"], record["caption_clip_score"] = score, caption_score
            if caption_score is not None and caption_score > 0 and score < ratio * caption_score:
                record["flags"] = [*record["flags"], "possibly_ungrounded"]

    def _judge_all(self, records: list[dict], images: dict) -> None:
        todo = [r for r in records if r[C.STATUS] == "ok"]
        verdicts = self._gather(self._judge, lambda http, r: self._judge_one(http, *images[r[C.ROW]], r["conversations"]),
                                todo)
        for record, verdict in zip(todo, verdicts):
            if verdict is None:
                record["flags"] = [*record["flags"], "judge_unavailable"]
                continue
            record["judge"] = json.dumps(verdict, sort_keys=True)
            if not verdict["accurate"]:
                record.update({C.STATUS: "rejected", C.REASON: "judge_inaccurate", "problems": ["judge_inaccurate"]})

    def records_file(self, rows: pa.Table) -> Path:
        return Path(self.run_root) / "stages" / self.name / f"records-{self.shard:06d}.parquet"
