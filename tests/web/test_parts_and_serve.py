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
    proc = _ov3(str(tmp_path / "missing"), "--check")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ov3 serve: error: MODEL ")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_check_starts_and_stops_the_server(tiny_model):
    pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    proc = _ov3(tiny_model, "--resolution", "64", "--check")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "answered 200" in proc.stdout


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
