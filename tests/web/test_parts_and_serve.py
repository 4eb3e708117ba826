"""Optional parts (generator, VLM) load through their packages' APIs or explain why not, and
``ov3 serve`` fails with one line on a bad MODEL and starts (``--check``) on a real export."""

import subprocess
import sys
import types

import pytest

from openvision3.web.parts import Part, load_part


def test_no_path_means_absent_with_instructions():
    part = load_part("generator", None)
    assert part.model is None and "ov3 serve MODEL --generator DIR" in part.why


def test_missing_folder_is_named(tmp_path):
    part = load_part("vlm", str(tmp_path / "nope"))
    assert part.model is None and "--vlm" in part.why and "does not exist" in part.why


def test_package_not_installed_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvision3.understanding", None)  # import fails
    part = load_part("vlm", str(tmp_path))
    assert part.model is None and "openvision3.understanding.load_vlm" in part.why


def test_loader_is_called_with_path_and_device(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("openvision3.generation")
    fake.load_generator = lambda path, device="cpu": calls.append((path, device)) or "gen"
    monkeypatch.setitem(sys.modules, "openvision3.generation", fake)
    assert load_part("generator", str(tmp_path), "cpu") == Part("generator", model="gen")
    assert calls == [(str(tmp_path), "cpu")]


def test_loader_failure_keeps_the_app_up(tmp_path, monkeypatch):
    fake = types.ModuleType("openvision3.generation")

    def broken(path, device="cpu"):
        raise FileNotFoundError("no generator.safetensors")

    fake.load_generator = broken
    monkeypatch.setitem(sys.modules, "openvision3.generation", fake)
    part = load_part("generator", str(tmp_path))
    assert part.model is None and "no generator.safetensors" in part.why


def _ov3(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "openvision3.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_model_is_one_line(tmp_path):
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    proc = _ov3(str(tmp_path / "missing"), "--check", "--port", "None")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ov3 serve: error: MODEL ")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_check_starts_and_stops_the_server_at_its_port(tiny_model, tmp_path):
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    port, missing = _free_port(), tmp_path / "no-generator"
    proc = _ov3(
        tiny_model,
        "--resolution",
        "64",
        "--port",
        str(port),
        "--generator",
        str(missing),
        "--check",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"127.0.0.1:{port}/ answered 200" in proc.stdout
    # the part that could not load is said in the terminal, not only in its tab
    assert f"ov3 serve: warning: --generator '{missing}' does not exist" in proc.stderr


@pytest.mark.slow
def test_uploads_are_removed_when_the_server_exits(tiny_model, tmp_path, uploads):
    import os
    import signal

    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    from gradio_client import Client, handle_file

    port, scratch = _free_port(), tmp_path / "tmp"
    scratch.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "openvision3.cli", "serve", tiny_model, "--resolution", "64"]
        + ["--port", str(port)],
        env={**os.environ, "TMPDIR": str(scratch)},  # where the run's folder goes
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert "up in" in server.stdout.readline()
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(handle_file(str(uploads["good.png"])), api_name="/reconstruct")
        (run,) = scratch.glob("ov3-serve-*")
        kept = [p.name for p in (run / "uploads").rglob("*") if p.is_file()]
        assert "good.png" in kept
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert server.returncode == 0
    assert list(scratch.glob("ov3-serve-*")) == []


def test_loading_handlers_wait_for_the_model_or_give_the_reason(gallery):
    import threading

    from openvision3.web.loading import LoadingHandlers, ModelNotReady

    release = threading.Event()

    class Loaded:
        def warm_up(self):
            pass

        def reconstruct(self, image):
            return f"reconstructed {image}"

    def load():
        release.wait(timeout=30)
        return Loaded()

    handlers = LoadingHandlers(gallery, Part.absent("generator"), Part.absent("vlm"), load)
    assert handlers.gallery is gallery  # known before the model loads
    handlers.start()
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(handlers.reconstruct("x")))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive() and not answers  # waits for the model
    release.set()
    waiter.join(timeout=30)
    assert answers == ["reconstructed x"]

    def broken():
        raise FileNotFoundError("model.safetensors is missing")

    failed = LoadingHandlers(gallery, Part.absent("generator"), Part.absent("vlm"), broken)
    with pytest.raises(ModelNotReady, match="FileNotFoundError: model.safetensors is missing"):
        failed.start().reconstruct("x")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_busy_port_is_one_line_naming_the_flag(tiny_model):
    import socket

    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _ov3(tiny_model, "--port", str(port), "--check", timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"ov3 serve: error: --port {port} is in use on 127.0.0.1 (another server runs there); "
        "pass another --port, or --port None for the first free one from 7860"
    ]


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_unknown_host_is_one_line_naming_the_flag(tiny_model, host):
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    proc = _ov3(tiny_model, "--host", host, "--check", timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ov3 serve: error: --host {host!r} is not")


def test_no_model_off_a_terminal_asks_for_one(tmp_path):
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "openvision3.cli", "serve", "--check", "--port", "None"],
        cwd=tmp_path,  # no runs/demo/final here
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no MODEL given" in lines[0] and "`ov3 demo`" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_demo_training_is_announced_first_with_its_estimate(tmp_path, monkeypatch, capsys):
    from openvision3.web import serve, startup

    calls = []

    def estimate(cfg):
        calls.append("estimate")
        return 754.0, sum(s.steps for s in cfg.train.stages)

    def run_demo(cfg):
        calls.append(("train", cfg.run_dir))
        assert "training the demo model first" in capsys.readouterr().out  # said before

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(startup, "demo_training_estimate", estimate)
    monkeypatch.setattr("openvision3.ov3.demo.run_demo", run_demo)
    assert serve.ensure_model(serve.DEFAULT_MODEL, interactive=True) == serve.DEFAULT_MODEL
    assert calls == ["estimate", ("train", "runs/demo")]


def test_demo_training_estimate_times_the_step_of_the_preset():
    import dataclasses

    from openvision3.configs import get_preset
    from openvision3.models.presets import model_config
    from openvision3.ov3.config import OV3StageConfig
    from openvision3.web.startup import demo_training_estimate

    cfg = get_preset("demo")
    stages = [
        OV3StageConfig(resolution=32, steps=10, batch_size=4),
        OV3StageConfig(resolution=64, steps=30, batch_size=4),
    ]
    cfg = dataclasses.replace(
        cfg,
        model=model_config("ov3-mu"),
        train=dataclasses.replace(cfg.train, stages=stages),
    )
    seconds, steps = demo_training_estimate(cfg)
    assert steps == 40 and 0 < seconds < 3600


def test_the_page_says_when_the_model_is_the_demos_and_what_it_knows():
    from openvision3.web.serve import _model_info
    from openvision3.web.uploads import UploadLimits

    demo = _model_info("runs/demo/final", {"data": "synthetic"}, {}, 128, UploadLimits())
    assert "**This is the demo model**" in demo and "hexagon" in demo
    assert "A photograph comes back as coloured blobs" in demo
    other = _model_info("my/model", {"data": "webdataset"}, {}, 256, UploadLimits())
    assert "demo" not in other
