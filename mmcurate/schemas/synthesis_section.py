"""The synthesis section of the run configuration (teacher, templates, judge), beside the others
in `sections.py`, which would be over 400 lines with it."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from mmcurate.schemas.sections import _Section


def _teacher_endpoint(value: str) -> str:
    """An OpenAI-compatible base URL that holds no secret (it is written to the manifest and records)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL of an OpenAI-compatible API (ending in /v1)")
    if "@" in value.split("//", 1)[1].split("/", 1)[0]:
        raise ValueError("must not carry credentials: put the key in the variable named by api_key_env")
    if "?" in value or "#" in value:
        raise ValueError("must not carry a query or fragment (a key there would be written to the manifest): "
                         "put the key in the variable named by api_key_env")
    return value


TeacherEndpoint = Annotated[str, AfterValidator(_teacher_endpoint)]


class JudgeConfig(_Section):
    enabled: bool = False  # a second call asks whether each answer is accurate and grounded in the image
    endpoint: TeacherEndpoint | None = None  # default: synthesis.endpoint
    model: str | None = None  # default: synthesis.model


class SynthesisConfig(_Section):
    enabled: bool = False
    endpoint: TeacherEndpoint = "http://127.0.0.1:8000/v1"
    model: str = "teacher-model-name"
    api_key_env: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["conversation", "detail", "reasoning"], min_length=1)
    max_concurrency: int = Field(16, ge=1)  # requests in flight for the whole run
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(60, gt=0)
    # extensions
    templates: str | None = None  # a folder of <task>.yaml templates (default: the built-in ones)
    requests_per_s: float | None = Field(None, gt=0)
    temperature: float = Field(0.2, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    seed: int | None = 0
    structured_output: bool = False  # ask for response_format json_schema (vLLM, hosted APIs)
    min_answer_chars: int = Field(2, ge=0)
    max_answer_chars: int = Field(6000, ge=1)
    grounding_min_ratio: float = Field(0.5, ge=0)  # flag answers scoring below this x the caption's CLIP score
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    # a run whose failed teacher requests exceed this share of all of them exits 1 once it is
    # through (everything written; a rerun asks the failed ones again); 1.0: never
    max_failed_fraction: float = Field(0.5, ge=0, le=1)
    # the most records, across the run, that may ask one teacher-written question, as a share of the run's
    # input rows (at least 100): later ones, in row order, are rejected `question_over_cap`; null: no cap
    max_question_share: float | None = Field(0.01, gt=0, le=1)

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: list[str]) -> list[str]:
        # a task names a template file and every record id: a plain word, never a path
        bad = [t for t in value if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", t)]
        if bad:
            raise ValueError(f"task names are letters, digits, '_' and '-' (they name <task>.yaml): {bad}")
        return value
