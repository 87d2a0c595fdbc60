"""Read back what an offline wandb run recorded, with no network and no account.

wandb (0.31) writes an offline run as one ``run-<id>.wandb`` file: a 7-byte header
(``:W&B``, magic 0xBEE1, version 0) followed by a LevelDB-style log of protobuf ``Record``s in
32 KiB blocks, each chunk with a 7-byte header (crc32, length, type: 1 full, 2 first,
3 middle, 4 last). This reader decodes the history, config and summary records, which is
what the tests check and what a user without a server can inspect.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from metaplastic.errors import DataError

BLOCK = 32768
HEADER = 7


def _records(data: bytes) -> list[bytes]:
    if data[:4] != b":W&B":
        raise DataError("not a wandb run file (bad header)")
    out, parts, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            parts = [chunk]
        elif kind == 3:
            parts.append(chunk)
        elif kind == 4:
            out.append(b"".join([*parts, chunk]))
            parts = []
    return out


def _items(items: Any) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """{"history": [row dicts], "config": {...}, "summary": {...}, "files": [...], "artifacts": [names]}
    from an offline run folder (``.../wandb/offline-run-*``) or its ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    files = sorted(path.glob("*.wandb")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no .wandb file in {path}")
    result: dict[str, Any] = {"history": [], "config": {}, "summary": {}, "files": [], "artifacts": []}
    for raw in _records(files[0].read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            result["history"].append(_items(rec.history.item))
        elif kind == "config":
            result["config"].update(_items(rec.config.update))
        elif kind == "summary":
            result["summary"].update(_items(rec.summary.update))
        elif kind == "files":
            result["files"] += [f.path for f in rec.files.files]
        elif kind == "artifact":
            result["artifacts"].append(rec.artifact.name)
        elif kind == "run":
            result["config"].update(_items(rec.run.config.update))
    return result
