"""Ingest: input files read into shards of numbered rows (`readers.py`), each row checked (`rows.py`).

Rows are numbered across all files in sorted order (`row`); `uid` is a hash of (url, caption).
"""

from mmcurate.ingest.readers import fingerprint, format_of, read_rows, resolve_inputs
from mmcurate.ingest.rows import RawRow, ShardBuffer, check_row, uid_of

__all__ = ["RawRow", "ShardBuffer", "check_row", "fingerprint", "format_of", "read_rows", "resolve_inputs", "uid_of"]
