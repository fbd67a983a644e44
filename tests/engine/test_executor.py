"""The executor: its one-task path (global stages run through it) brings results back, and an
mmcurate error raised on a worker comes back as itself, so the command line can name the key; its
streaming path carries a shard that failed past the later steps, and every other shard through."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmcurate.engine import executor
from mmcurate.schemas.errors import ConfigError, ModelError
from mmcurate.stages.base import Resources


@pytest.fixture(scope="module")
def ray_started():
    started = executor.start()
    yield
    if started:
        executor.stop()


@dataclass
class Mark:
    """A shard task that leaves a file per shard it did (and fails where told to)."""

    folder: str
    name: str
    fail_on: int = -1
    broken: bool = False

    def setup(self) -> None:
        if self.broken:
            raise ModelError("clip.model", "no weights in this folder")

    def __call__(self, shard: int) -> dict:
        if shard == self.fail_on:
            raise ZeroDivisionError(f"shard {shard}")
        Path(self.folder, f"{self.name}-{shard}").touch()
        return {"stage": self.name, "shard": shard, "rows_in": 1}


def where_am_i(x: int) -> tuple[int, int]:
    return x * 2, os.getpid()


def bad_setting() -> None:
    raise ConfigError("quality.image_based.reference_path: no such file")


def bad_model() -> None:
    raise ModelError("clip.model", "/models/nope is not an open_clip folder")


def broken() -> None:
    raise ZeroDivisionError("boom")


def test_run_remote_runs_on_a_worker_and_passes_errors_back(ray_started):
    value, pid = executor.run_remote(where_am_i, 21)
    assert value == 42 and pid != os.getpid()  # a worker process, not the driver
    with pytest.raises(ConfigError) as err:
        executor.run_remote(bad_setting)
    assert type(err.value) is ConfigError and str(err.value) == "quality.image_based.reference_path: no such file"
    with pytest.raises(ModelError) as err:
        executor.run_remote(bad_model)
    assert err.value.key == "clip.model" and str(err.value) == "clip.model: /models/nope is not an open_clip folder"
    with pytest.raises(ZeroDivisionError):
        executor.run_remote(broken)


def test_a_failed_shard_stops_neither_its_neighbours_nor_later_steps(ray_started, tmp_path):
    done = []
    steps = [(Mark(str(tmp_path), "a", fail_on=2), Resources()), (Mark(str(tmp_path), "b"), Resources(actors=1))]
    failures = executor.stream(steps, range(6), done.append)
    assert [(f.step, f.shard, type(f.error), str(f.error)) for f in failures] == [(0, 2, ZeroDivisionError, "shard 2")]
    assert "ZeroDivisionError" in failures[0].trace
    healthy = [0, 1, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"a-{s}" for s in healthy] + [f"b-{s}" for s in healthy])
    assert sorted(s["shard"] for s in done) == healthy and {s["stage"] for s in done} == {"b"}


def test_a_model_that_cannot_load_fails_every_shard_with_its_key(ray_started, tmp_path):
    failures = executor.stream([(Mark(str(tmp_path), "c", broken=True), Resources(actors=1))], range(3))
    assert [f.shard for f in failures] == [0, 1, 2]
    assert all(type(f.error) is ModelError and f.error.key == "clip.model" for f in failures)
    with pytest.raises(ModelError):
        executor.map_shards(Mark(str(tmp_path), "c", broken=True), [0], Resources(), lambda stats: None)
