"""Weights & Biases is a metrics sink beside ``metrics.jsonl`` for every task on the engine:
an offline run (no network) writes its files under ``run_dir/wandb`` and holds the same
scalars, at the same steps, as the JSONL. Read back from the run's ``.wandb`` file with
wandb's own record type (``wandb_internal_pb2.Record``)."""

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from openvision3.errors import MissingExtraError
from openvision3.train.config import TrainConfig
from openvision3.train.metrics import MetricsLogger, read_metrics, wandb_settings
from openvision3.train.trainer import Trainer
from tests.train.test_task import stage, toy

BLOCK, HEADER = 32768, 7  # the .wandb file is a LevelDB log: 32 KiB blocks, 7-byte headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: LevelDB's log format (leveldb's doc/log_format.md)
    after a 7-byte file header ":W&B", magic, version. wandb 0.25 has a Python reader
    (``wandb.sdk.internal.datastore``), later versions none, so the framing is read here."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, parts = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if kind == 0 and length == 0:  # zero fill: the writer has not reached here
            break
        parts = chunk if kind in (FULL, FIRST) else parts + chunk
        if kind in (FULL, LAST):
            records.append(parts)
    return records


def wandb_history(run_dir: Path, timeout_s: float = 30.0) -> list[dict]:
    """The history rows of the offline run in ``run_dir/wandb``, read from its ``.wandb`` file
    once the run's exit record is in it."""
    from wandb.proto import wandb_internal_pb2

    (path,) = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    deadline = time.monotonic() + timeout_s
    while True:
        rows, done = [], False
        for data in wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            done |= kind == "exit"
            if kind == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def by_step(records: list[dict]) -> dict[int, dict]:
    """JSONL records merged per step (training and evaluation log at the same step), without
    the wall-clock time."""
    merged: dict[int, dict] = {}
    for r in records:
        merged.setdefault(r["step"], {}).update(
            {k: v for k, v in r.items() if k not in ("step", "time")}
        )
    return merged


def test_offline_run_holds_the_jsonl_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    cfg = toy(tmp_path / "run", stage(4, warmup_steps=2), wandb=True, wandb_mode="offline")
    Trainer(cfg).fit()

    jsonl = by_step(read_metrics(tmp_path / "run"))
    history = wandb_history(tmp_path / "run")
    wandb = {
        row["_step"]: {k: v for k, v in row.items() if not k.startswith("_")} for row in history
    }
    assert jsonl and sorted(wandb) == sorted(jsonl)
    for step, scalars in jsonl.items():
        assert wandb[step] == scalars, step
    assert (tmp_path / "run" / "wandb" / "run_id").is_file()


def test_settings_come_from_flags_then_env_then_defaults(monkeypatch):
    for var in ("WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(var, raising=False)
    assert wandb_settings(TrainConfig(), "demo") is None
    on = TrainConfig(wandb=True)
    assert wandb_settings(on, "demo") == {"config": None, "project": "openvision3", "name": "demo"}
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_NAME", "env-name")
    assert wandb_settings(on, "demo") == {"config": None}  # wandb reads the variables itself
    flags = TrainConfig(wandb=True, wandb_project="p", wandb_name="n", wandb_mode="offline")
    assert wandb_settings(flags, "demo", {"a": 1}) == {
        "config": {"a": 1},
        "project": "p",
        "name": "n",
        "mode": "offline",
    }
    with pytest.raises(ValueError, match="wandb_mode"):
        TrainConfig(wandb_mode="cloud")


def test_without_the_package_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ModuleNotFoundError
    with pytest.raises(MissingExtraError, match=r"openvision3\[wandb\]"):
        MetricsLogger(tmp_path, wandb={"mode": "offline"})
