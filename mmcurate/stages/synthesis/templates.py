"""The teacher's prompts: versioned template files per task, the answer shapes, and request hashes.

Templates are data (`templates/<task>.yaml` here, or a folder of the user's own): `id`, `version`,
`shape` (turns, text or qa), an optional `system` message and a `prompt` with a {caption} field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmcurate.filters import instructions as V
from mmcurate.schemas.errors import ConfigError

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
