"""Ingest: input files read into shards of numbered rows (`readers.py`), each row checked (`rows.py`).

Rows are numbered across all files in sorted order (`row`); `uid` is a hash of (url, caption).
"""

from mmcurate.ingest.files import (
    Unit,
    combined_fingerprint,
    file_record,
    fingerprint,
    format_of,
    resolve_inputs,
    stat_of,
    units,
)
from mmcurate.ingest.documents import Document, read_documents
from mmcurate.ingest.readers import read_rows
from mmcurate.ingest.rows import RawRow, ShardBuffer, check_row, uid_of

__all__ = ["Document", "RawRow", "ShardBuffer", "Unit", "check_row", "combined_fingerprint", "file_record", "fingerprint", "format_of",
           "read_documents", "read_rows", "resolve_inputs", "stat_of", "uid_of", "units"]
