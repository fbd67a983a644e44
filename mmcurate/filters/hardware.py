"""Where a worker's models run: its CPU threads, its GPU, onnxruntime sessions sized to both.

A worker's share of the machine is read from its environment, so that no filter needs Ray:
- threads: Ray sets `OMP_NUM_THREADS` in every worker to the CPUs its actor was given (after
  the engine's split, floored, at least 1); outside Ray (tests, benches) the CPUs this process
  may run on. onnxruntime sessions get that many intra-op threads (torch already follows
  `OMP_NUM_THREADS`);
- GPU: Ray shows a worker that was given GPUs only those, but a CPU worker every GPU of its node
  (Ray >= 2.50 no longer hides them), so "torch sees a GPU" does not say the worker has one. A
  stage knows: its `resources` decide whether its actors get a GPU, and before its filters'
  `setup` it `place`s them: `device = "auto"` on a GPU worker, else "cpu". With `auto`, an
  onnxruntime session puts CUDA's execution provider first where the installed onnxruntime has
  it (the `gpu` extra: onnxruntime-gpu) and torch sees the GPU, and a torch model goes to `cuda`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def worker_threads() -> int:
    """The CPUs this worker was given: Ray's OMP_NUM_THREADS, else the process's CPU affinity."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.strip().isdigit() and int(given) > 0:
        return int(given)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def cuda_visible() -> bool:
    """Whether this process sees a CUDA device (a CPU worker on a GPU node does too: ask only on a
    worker its stage gave a GPU, `device` "auto")."""
    import torch

    return bool(torch.cuda.is_available())


def torch_device(setting: str = "auto") -> str:
    """`cuda` or `cpu` for a torch model: `auto` (a worker given a GPU) is cuda where it sees one."""
    if setting == "auto":
        return "cuda" if cuda_visible() else "cpu"
    return setting


def onnx_providers(available: list[str], gpu: bool) -> list[str]:
    """The execution providers to ask for: CUDA first on a worker with a GPU (where onnxruntime
    has it), then the CPU; a worker without a GPU runs on the CPU alone."""
    return [CUDA, CPU] if gpu and CUDA in available else [CPU]


def onnx_session(model: str | bytes, threads: int | None = None, device: str = "cpu") -> Any:
    """An onnxruntime session for `model` (a file or its bytes) with `threads` intra-op threads
    (default: the worker's CPUs), on CUDA where `device` allows it and the worker has a GPU."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or worker_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # no busy-waiting between ops: the worker's threads leave idle cores to the actors beside it
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = onnxruntime.get_available_providers()
    # torch is asked only when onnxruntime could use a GPU at all (the onnxruntime-gpu build)
    gpu = device != "cpu" and CUDA in available and cuda_visible()
    return onnxruntime.InferenceSession(model, options, providers=onnx_providers(available, gpu))


def place(filters: Iterable[Any], gpu: bool) -> None:
    """Tell the filters that run a model (those with a `device`) where: `auto` (the GPU it sees) on
    a worker its stage gave a GPU, else the CPU; before their `setup`."""
    for f in filters:
        if hasattr(f, "device"):
            f.device = "auto" if gpu else "cpu"
