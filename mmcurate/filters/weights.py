"""Model files: the one hash every model's weights are recorded by (manifest, fingerprints, ledger)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hub_unreachable(repo_id: str, filenames: tuple[str, ...] | None = None) -> str | None:
    """Why the Hugging Face hub cannot give `repo_id`'s weights, found at once (None when it may):
    the hub's name does not resolve from this machine and none of `filenames` is in the local
    cache. Without this, huggingface_hub retries for about a minute before the same answer."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames or HUB_WEIGHTS):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443, 0, socket.SOCK_STREAM)
    except OSError as err:
        return f"the model hub's name {host} does not resolve from this machine ({err.strerror or err}), and {repo_id} is not cached"
    return None
