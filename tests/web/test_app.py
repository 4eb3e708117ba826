"""The Gradio app over HTTP (no browser): tabs answer through the API, bad uploads come back
as one message, missing parts say how to get them, and no file outside the app's folders
can be read through the server."""

import json
import os
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow  # imports Gradio and starts a server: ~15 s on 2 idle cores
pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")

from gradio_client import Client, handle_file  # noqa: E402

from openvision3.web.app import QUEUE_SIZE, AppConfig, build_app, launch  # noqa: E402
from openvision3.web.handlers import Handlers  # noqa: E402
from openvision3.web.uploads import UploadLimits  # noqa: E402

LIMITS = UploadLimits(max_file_mb=1.0, max_megapixels=1.0)


@pytest.fixture(scope="module")
def server(pipeline, gallery, tiny_model):
    handlers = Handlers(pipeline, gallery)  # no generator, no VLM
    app = build_app(handlers, AppConfig(limits=LIMITS))
    _, url, _ = launch(app, handlers, LIMITS, port=None, blocking=False, blocked=[tiny_model])
    yield url, app
    app.close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_page_loads_only_local_assets(server):
    url, _ = server
    status, html = _get(url)
    assert status == 200
    page = html.decode()
    for attr in ('src="http', "src='http", 'href="http', "href='http"):
        assert attr + "://127.0.0.1" in page or attr not in page, attr


def test_only_the_app_folders_are_served(server, gallery, tiny_model):
    url, _ = server
    assert _get(f"{url}gradio_api/file={gallery.paths[0]}")[0] == 200
    readme = os.path.abspath("README.md")  # tests run from the repository root
    for path in ("/etc/passwd", os.path.join(tiny_model, "config.json"), readme):
        status, body = _get(f"{url}gradio_api/file={path}")
        assert status in (403, 404), (path, status)


def test_a_request_cannot_name_a_server_file(server):
    url, _ = server
    body = json.dumps({"data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]})
    req = urllib.request.Request(
        f"{url}gradio_api/call/reconstruct",
        body.encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        event = json.loads(resp.read())["event_id"]
    status, stream = _get(f"{url}gradio_api/call/reconstruct/{event}")
    assert b"event: error" in stream and b"root:" not in stream


def test_tabs_answer_and_bad_uploads_give_one_message(server, gallery, uploads):
    url, _ = server
    client = Client(url, verbose=False)
    seen, recon, metrics, noisy = client.predict(
        handle_file(str(gallery.paths[0])), api_name="/reconstruct"
    )
    assert "PSNR" in metrics and len(noisy) == 4
    caption, probs, near = client.predict(
        handle_file(str(uploads["cmyk.jpg"])), "red circle, cat", 1, api_name="/understand"
    )
    assert isinstance(caption, str)
    assert sum(c["confidence"] for c in probs["confidences"]) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(Exception, match=r"'notes.png' is not an image this app can read"):
        client.predict(handle_file(str(uploads["notes.png"])), api_name="/reconstruct")
    with pytest.raises(Exception, match=r"1200x1000 = 1.2 megapixels; the limit is 1"):
        client.predict(handle_file(str(uploads["huge.png"])), api_name="/reconstruct")
    assert len(client.predict(handle_file(str(uploads["anim.gif"])), api_name="/reconstruct")) == 4


def test_missing_parts_are_explained_in_the_page_and_the_queue_is_bounded(server):
    url, app = server
    config = json.loads(_get(f"{url}config")[1])
    texts = json.dumps(config["components"])
    assert "No generator was given" in texts and "--generator DIR" in texts
    assert "No VLM was given" in texts and "ov3 demo --understanding" in texts
    assert app._queue.max_size == QUEUE_SIZE
