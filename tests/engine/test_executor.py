"""The executor's one-task path (global stages run through it): results come back, and an
mmcurate error raised on the worker comes back as itself, so the command line can name the key."""

from __future__ import annotations

import os

import pytest

from mmcurate.engine import executor
from mmcurate.schemas.errors import ConfigError, ModelError


def where_am_i(x: int) -> tuple[int, int]:
    return x * 2, os.getpid()


def bad_setting() -> None:
    raise ConfigError("quality.image_based.reference_path: no such file")


def bad_model() -> None:
    raise ModelError("clip.model", "/models/nope is not an open_clip folder")


def broken() -> None:
    raise ZeroDivisionError("boom")


def test_run_remote_runs_on_a_worker_and_passes_errors_back():
    started = executor.start()
    try:
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
    finally:
        if started:
            executor.stop()
