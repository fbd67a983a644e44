"""Synthesis: instruction-tuning data from a teacher MLLM behind an OpenAI-compatible endpoint.

For each kept sample and each task in `synthesis.tasks`, one chat-completions request: the image
as a base64 `data:` URL content part, the caption (as the privacy stage left it) as context, the
prompt from a versioned template file (`templates.py`). Every response is cached under its
request hash in the run dir before it is validated (`cache.py`), so a rerun never pays twice;
every answer is validated and every (sample, task) ends as a record (`records.py`): ok, rejected
(with its problems) or failed (with its reason). Samples are never dropped here: the stage adds
data, and hands its records to the engine to store beside its shard.

The stage runs as one actor whose event loop holds at most `max_concurrency` requests in flight:
that is the bound for the whole run, whatever the cluster's size.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os

import pyarrow as pa

from mmcurate.filters import instructions as V
from mmcurate.filters.base import Verdicts
from mmcurate.filters.clip_score import resolve_weights
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.base import Cluster, Resources, Stage
from mmcurate.stages.synthesis import records
from mmcurate.stages.synthesis.cache import ResponseCache
from mmcurate.stages.synthesis.templates import (
    JSON_SCHEMAS,
    JUDGE_PROMPT,
    MIME,
    Template,
    load_templates,
    request_hash,
)


class SynthesisStage(Stage):
    name = "synthesis"
    version = "1"
    output_schema = C.SYNTHESIS_SCHEMA
    decides_samples = False  # it adds instruction records; every sample it sees leaves it kept
    may_be_incomplete = True  # failed teacher requests: asked again by the next run
    score_columns = (C.SYNTH_ANSWERED, C.SYNTH_FAILED)
    input_columns = (C.CAPTION, C.IMAGE, C.IMAGE_FORMAT, C.CLIP_SCORE)
    settings = ("synthesis.model", "synthesis.tasks", "synthesis.temperature", "synthesis.judge.enabled")

    def __init__(self, config: Config):
        super().__init__(config)
        self.templates: dict[str, Template] | None = None
        self.clip_weights = None
        self._client = None
        self._judge_client = None
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
            self.clip_weights = resolve_weights(self.config.clip.model, self.config.clip.pretrained)
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
        from mmcurate.clients.teacher import TeacherClient

        if self.templates is None:
            self.prepare()
        s = self.config.synthesis
        key = os.environ.get(s.api_key_env) if s.api_key_env else None
        common = {"timeout_s": s.timeout_s, "max_retries": s.max_retries, "max_concurrency": s.max_concurrency,
                  "requests_per_s": s.requests_per_s}
        if self._client is None:
            self._client = TeacherClient(s.endpoint, key, **common)
        if s.judge.enabled and self._judge_client is None:
            self._judge_client = TeacherClient(self._judge_target()["endpoint"], key, **common)
        if self.clip_weights is not None and self._clip is None:
            from mmcurate.filters.clip_score import ClipScorer

            self._clip = ClipScorer(self.clip_weights, self.config.clip.device, self.config.clip.batch_size)
            self._clip.load()

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
        cached = self._cache.get(digest)
        if cached is not None:
            return {**cached, "cached": True}
        reply = await client.achat(http, payload, self._slots)
        entry = {"ok": reply.ok, "body": reply.body, "reason": reply.reason, "error": reply.error,
                 "status": reply.status, "attempts": reply.attempts, "retries": reply.retries,
                 "latency_s": round(reply.latency_s, 4), "retry_after": reply.retry_after}
        if reply.ok:
            self._cache.put(digest, entry)
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

    async def _judge_request(self, http, image: bytes, fmt: str | None, convs: list[dict]) -> dict | None:
        exchange = "\n".join(f"{t['from']}: {t['value'].replace(V.IMAGE_TOKEN, '').strip()}" for t in convs)
        target = self._judge_target()
        mime = MIME.get((fmt or "jpg").lower(), "image/jpeg")
        payload = {"model": target["model"], "temperature": 0.0, "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "text", "text": JUDGE_PROMPT.format(exchange=exchange)},
            {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(image).decode()}"}}]}]}
        judge_template = Template("judge", "1", "qa", "", JUDGE_PROMPT)
        digest = request_hash(payload, hashlib.sha256(image).hexdigest(), judge_template)
        reply = await self._ask(self._judge_client, http, payload, digest)
        if not reply["ok"]:
            return None
        try:
            verdict = V._json_object(reply["body"]["choices"][0]["message"]["content"] or "")
            return {"accurate": bool(verdict.get("accurate")), "complete": bool(verdict.get("complete"))}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None

    def judge(self, rows: pa.Table) -> Verdicts:
        self.setup()
        tasks = list(self.templates)
        uids, row_ids = rows[C.UID].to_pylist(), rows[C.ROW].to_pylist()
        captions, images = rows[C.CAPTION].to_pylist(), rows[C.IMAGE].to_pylist()
        formats = rows[C.IMAGE_FORMAT].to_pylist()
        clip_scores = rows[C.CLIP_SCORE].to_pylist() if C.CLIP_SCORE in rows.column_names else [None] * rows.num_rows
        items = [(r, c, i, f, t) for r, c, i, f in zip(row_ids, captions, images, formats) for t in tasks]
        sampling = self._sampling()
        with ResponseCache(self.context.cache_file) as self._cache:
            replies = self._gather(self._client, self._one, items)
            found, per_row = [], []
            for n, (row, uid, fmt) in enumerate(zip(row_ids, uids, formats)):
                others: list[str] = []  # questions already asked about this image (ROUGE-L against them)
                mine = [records.build(self.config.synthesis, self.templates[reply["task"]], sampling, row, uid, fmt,
                                      reply, others)
                        for reply in replies[n * len(tasks):(n + 1) * len(tasks)]]
                found += mine
                per_row.append(mine)
            self._ground(found, images, clip_scores, row_ids)
            if self._judge_client is not None:
                self._ask_judge(found, dict(zip(row_ids, zip(images, formats))))
        notes = []
        for mine in per_row:
            failed = [r for r in mine if r[C.STATUS] == "failed"]
            why = sorted({r[C.REASON] for r in failed})
            notes.append(f"synthesis: {len(failed)} of {len(mine)} teacher requests failed ({', '.join(why)})"
                         if failed else None)
        self.context.side_tables["records"] = pa.Table.from_pylist(found, schema=C.INSTRUCTION_SCHEMA)
        # failures are not cached: the next run asks them again (the answers it has come from the cache)
        self.context.stats["incomplete"] = sum(r[C.STATUS] == "failed" for r in found)
        return Verdicts(scores={C.SYNTH_ANSWERED: [sum(r[C.STATUS] != "failed" for r in mine) for mine in per_row],
                                C.SYNTH_FAILED: [sum(r[C.STATUS] == "failed" for r in mine) for mine in per_row]},
                        notes=notes)

    def _gather(self, client, fn, items: list) -> list:
        """`fn(http, item)` for every item on one event loop, at most max_concurrency requests in flight."""
        async def run() -> list:
            self._slots = asyncio.Semaphore(self.config.synthesis.max_concurrency)
            self._work = asyncio.Semaphore(2 * self.config.synthesis.max_concurrency)
            async with client.session() as http:
                return await asyncio.gather(*(fn(http, item) for item in items))

        return asyncio.run(run())

    def _ground(self, found: list[dict], images: list, clip_scores: list, row_ids: list) -> None:
        """Where CLIP ran: flag answers whose text-image score falls far below the caption's."""
        if self._clip is None:
            return
        by_row = {r: (img, score) for r, img, score in zip(row_ids, images, clip_scores)}
        todo = [r for r in found if r[C.STATUS] == "ok"]
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

    def _ask_judge(self, found: list[dict], images: dict) -> None:
        """A second call per ok record: is the answer accurate? Inaccurate ones are rejected."""
        todo = [r for r in found if r[C.STATUS] == "ok"]
        verdicts = self._gather(self._judge_client,
                                lambda http, r: self._judge_request(http, *images[r[C.ROW]], r["conversations"]), todo)
        for record, verdict in zip(todo, verdicts):
            if verdict is None:
                record["flags"] = [*record["flags"], "judge_unavailable"]
                continue
            record["judge"] = json.dumps(verdict, sort_keys=True)
            if not verdict["accurate"]:
                record.update({C.STATUS: "rejected", C.REASON: "judge_inaccurate", "problems": ["judge_inaccurate"]})
