"""Faults a user meets on resume: each checkpoint file's size and sha256 are recorded at save;
a damaged newest checkpoint is skipped with one warning line and the next older one resumes
exactly; with none left, ``ov3 train`` ends with one line naming the file and the choices."""

import json
import logging
from dataclasses import replace

import pytest
import torch

from openvision3.cli import main
from openvision3.errors import CheckpointError
from openvision3.train.checkpoint import list_checkpoints, read_meta, verify_checkpoint
from openvision3.train.trainer import Trainer
from tests.train.test_task import stage, toy


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_manifest_records_every_file_and_catches_a_changed_byte(tmp_path):
    Trainer(toy(tmp_path, stage(2), ema_decay=0.9)).fit()
    (ckpt,) = list_checkpoints(tmp_path)
    files = read_meta(ckpt)["files"]
    on_disk = {p.name for p in ckpt.iterdir()} - {"state.json"}
    assert set(files) == on_disk and "model.safetensors" in files
    assert all(files[n]["bytes"] == (ckpt / n).stat().st_size for n in files)
    verify_checkpoint(ckpt)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors differs"):
        verify_checkpoint(ckpt)


def test_truncated_newest_checkpoint_resumes_from_the_previous_one_exactly(tmp_path, caplog):
    stages = [stage(8, warmup_steps=2)]
    full = Trainer(toy(tmp_path / "full", *stages, dropout=0.2, ema_decay=0.9))
    full.fit()
    first = Trainer(toy(tmp_path / "split", *stages, dropout=0.2, ema_decay=0.9, stop_at=6))
    assert first.fit() == {"stopped_at": 6}
    newest = list_checkpoints(tmp_path / "split")[-1]
    assert newest.name == "step_00000006"
    truncate(newest / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        second = Trainer(toy(tmp_path / "split", *stages, dropout=0.2, ema_decay=0.9))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "step_00000006/model.safetensors" in warnings[0] and "step_00000004" in warnings[0]
    assert second.step == 4 and second.samples == 32
    second.fit()
    a, b = full.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full.ema.params[k], second.ema.params[k]) for k in full.ema.params)


def test_with_every_checkpoint_damaged_the_error_names_the_newest_and_the_choices(tmp_path):
    Trainer(toy(tmp_path, stage(2), ckpt_every=1)).fit()
    older, newest = list_checkpoints(tmp_path)
    truncate(newest / "model.safetensors")
    (older / "state.json").write_text("{")  # a half-written copy
    with pytest.raises(CheckpointError) as err:
        Trainer(toy(tmp_path, stage(2), ckpt_every=1))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(newest / "model.safetensors"))
    assert "the 1 older checkpoint(s) of this run fail too" in message
    assert message.endswith("choose --train.resume auto | none | <checkpoint directory>")
    explicit = toy(tmp_path, stage(2), ckpt_every=1, resume=str(older))
    with pytest.raises(CheckpointError, match="state.json cannot be read"):
        Trainer(explicit)


def test_a_corrupted_only_checkpoint_ends_ov3_train_with_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    flags = ["--run-dir", str(run), "--train.stages.0.steps", "2", "--train.stages.1.steps", "2"]
    flags += ["--train.stages.0.batch-size", "2", "--train.stages.1.batch-size", "2"]
    flags += ["--train.stop-at", "1", "--train.ckpt-every", "1", "--eval.num-images", "2"]
    assert main(["train", "demo_smoke", *flags]) == 0
    (only,) = list_checkpoints(run)
    truncate(only / "model.safetensors", keep=0.1)
    capsys.readouterr()
    assert main(["train", "demo_smoke", *flags]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("ov3 train: error: ")
    assert str(only / "model.safetensors") in lines[0]
    assert "--train.resume auto | none | <checkpoint directory>" in lines[0]
    # The same run afresh, as the line says.
    assert main(["train", "demo_smoke", *flags, "--train.resume", "none"]) == 0
    assert json.loads((only / "state.json").read_text())["step"] == 1
    verify_checkpoint(only)
    # OV3_DEBUG=1 shows the traceback of the known error.
    truncate(only / "model.safetensors", keep=0.1)
    monkeypatch.setenv("OV3_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["train", "demo_smoke", *flags])


def test_known_user_errors_end_with_one_line_and_unexpected_ones_keep_the_traceback(
    tmp_path, capsys, monkeypatch
):
    missing = tmp_path / "no-such-folder"
    flags = ["--run-dir", str(tmp_path / "run"), "--data.source", "folder"]
    assert main(["train", "demo_smoke", *flags, "--data.path", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [
        f"ov3 train: error: --data.path: image folder '{missing}' does not exist"
    ]
    from openvision3 import cli
    from openvision3.errors import USER_ERRORS, TrainingDivergedError

    def diverge(argv):
        raise TrainingDivergedError("non-finite loss at step 3: loss=nan")

    monkeypatch.setitem(cli.COMMANDS, "train", replace(cli.COMMANDS["train"], run=diverge))
    assert main(["train"]) == 1
    assert capsys.readouterr().err == "ov3 train: error: non-finite loss at step 3: loss=nan\n"
    assert TrainingDivergedError in USER_ERRORS

    def bug(argv):
        raise KeyError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "train", replace(cli.COMMANDS["train"], run=bug))
    with pytest.raises(KeyError):
        main(["train"])
