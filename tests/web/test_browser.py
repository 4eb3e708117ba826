"""``ov3 serve``'s page driven by a real headless Chromium (Debian's, through Playwright).

Starts the app on the tiny model (with stand-ins for the generator and the VLM, and a second
app without them), uploads an image on each tab and checks what the page shows: image sizes,
a caption, probabilities summing to 1, the error messages for a text file named ``.png`` and
for images over the byte and pixel limits, the missing-part messages. Every request the page
makes must go to the local server (no CDN). Screenshots go to the test's tmp dir.
"""

import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from tests.web._web_helpers import RESOLUTION, header_only_png

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium installed (Debian: apt-get install chromium)", allow_module_level=True)
pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from openvision3.web.app import TOAST_SECONDS, AppConfig, build_app, launch  # noqa: E402
from openvision3.web.handlers import Handlers  # noqa: E402
from openvision3.web.uploads import UploadLimits  # noqa: E402

LIMITS = UploadLimits(max_file_mb=1.0, max_megapixels=1.0)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000


def _start(handlers) -> tuple[str, object]:
    app = build_app(handlers, AppConfig(limits=LIMITS))
    _, url, _ = launch(app, handlers, LIMITS, port=None, blocking=False)
    return url, app


@pytest.fixture(scope="module")
def urls(pipeline, gallery, tiny_model):
    from openvision3.web.parts import Part
    from tests.web._web_helpers import FakeGenerator, FakeVLM

    full = Handlers(
        pipeline,
        gallery,
        generator=Part("generator", model=FakeGenerator()),
        vlm=Part("vlm", model=FakeVLM()),
    )
    (url, app), (bare_url, bare_app) = _start(full), _start(Handlers(pipeline, gallery))
    yield url, bare_url
    app.close()
    bare_app.close()


@pytest.fixture()
def page(tmp_path):
    """A fresh headless Chromium page; records every URL it requests."""
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.requested = []
        page.on("request", lambda req: page.requested.append(req.url))
        yield page
        context.close()


def _shot(page, tmp_path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)


def _upload(page, elem_id: str, path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def _wait_images(page, selector: str, count: int) -> list[tuple[int, int]]:
    """Wait until ``count`` images under ``selector`` have loaded -> their natural sizes."""
    page.wait_for_function(
        """([sel, n]) => {
            const imgs = [...document.querySelectorAll(sel + ' img')];
            return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=[selector, count],
    )
    return page.eval_on_selector_all(
        f"{selector} img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])"
    )


def _covered_buttons(page) -> list[str]:
    """The visible buttons that a message (toast) covers, by their text."""
    return page.evaluate(
        """() => {
            const visible = e => { const r = e.getBoundingClientRect();
                                   return r.width > 0 && r.height > 0 ? r : null; };
            const toasts = [...document.querySelectorAll('.toast-body')].map(visible)
                .filter(Boolean);
            return [...document.querySelectorAll('button')].filter(b => {
                const r = visible(b);
                return r && !b.closest('.toast-body') && toasts.some(t =>
                    r.left < t.right && t.left < r.right && r.top < t.bottom && t.top < r.bottom);
            }).map(b => b.innerText.trim() || b.getAttribute('aria-label') || b.className);
        }"""
    )


def _toast(page, text: str) -> str:
    """Wait for the message holding ``text``; it covers no button and closes by itself."""
    toast = page.locator(".toast-body", has_text=text).first
    toast.wait_for()
    message = toast.inner_text()
    assert _covered_buttons(page) == []
    page.wait_for_function(  # in view, wherever the page was scrolled to
        """t => { const r = t.getBoundingClientRect();
                  return r.top >= 0 && r.bottom <= window.innerHeight; }""",
        arg=toast.element_handle(),
        timeout=5_000,
    )
    page.locator(".toast-body").first.wait_for(
        state="detached", timeout=(TOAST_SECONDS + 10) * 1000
    )
    return message


def _grid_image(tmp_path, name: str, seed: int) -> str:
    rng = np.random.RandomState(seed)
    path = tmp_path / name
    Image.fromarray(rng.randint(0, 256, (96, 120, 3), dtype=np.uint8)).save(path)
    return str(path)


def _local_only(page, url: str) -> None:
    outside = [u for u in page.requested if not u.startswith(url) and not u.startswith("data:")]
    assert not outside, outside


def test_every_tab_in_chromium(page, urls, gallery, uploads, tmp_path):
    url, _ = urls
    page.goto(url)
    page.locator("#rec-image").wait_for()
    timings = {}

    # 1. Reconstruct: input and reconstruction at the model's resolution, PSNR/SSIM, 4 levels.
    t = time.perf_counter()
    _upload(page, "rec-image", gallery.paths[0])
    assert _wait_images(page, "#rec-output", 1) == [[RESOLUTION, RESOLUTION]]
    assert _wait_images(page, "#rec-input", 1) == [[RESOLUTION, RESOLUTION]]
    noisy = _wait_images(page, "#rec-noisy", 4)
    assert noisy[:4] == [[RESOLUTION, RESOLUTION]] * 4
    page.locator("#rec-metrics", has_text="PSNR").wait_for()
    assert "SSIM" in page.locator("#rec-metrics").inner_text()
    timings["reconstruct"] = time.perf_counter() - t
    _shot(page, tmp_path, "1-reconstruct")

    # Bad uploads on the same tab: one message each, the old results are gone, and the
    # server keeps serving.
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # at the examples
    _upload(page, "rec-image", uploads["notes.png"])
    assert "is not an image this app can read" in _toast(page, "notes.png")
    assert page.locator("#rec-output img, #rec-input img, #rec-noisy img").count() == 0
    assert "PSNR" not in page.locator("#rec-metrics").inner_text()
    bomb = header_only_png(tmp_path / "bomb.png", 20_000, 20_000)  # over PIL's own limit
    _upload(page, "rec-image", bomb)
    assert "'bomb.png' is 400.0 megapixels; the limit is 1 megapixels" in _toast(page, "bomb")
    _upload(page, "rec-image", uploads["huge.png"])
    message = _toast(page, "megapixels")
    assert "'huge.png' is 1200x1000 = 1.2 megapixels; the limit is 1 megapixels" in message
    noise = np.random.RandomState(0).randint(0, 256, (800, 800, 3), dtype=np.uint8)
    too_big = tmp_path / "too_big.png"
    Image.fromarray(noise).save(too_big)
    assert os.path.getsize(too_big) > LIMITS.max_bytes
    _upload(page, "rec-image", too_big)
    assert "exceed the maximum allowed size" in _toast(page, "too_big.png")
    _shot(page, tmp_path, "1-bad-input")

    # 2. Caption and classify: a caption, probabilities over the typed labels summing to 1.
    page.get_by_role("tab", name="Caption and classify").click()
    page.locator("#cap-labels textarea").fill("red circle, blue square, cat")
    t = time.perf_counter()
    _upload(page, "cap-image", uploads["cmyk.jpg"])
    page.wait_for_function("document.querySelector('#cap-caption textarea').value.length > 0")
    assert page.locator("#cap-caption textarea").input_value().strip()
    page.locator("#cap-probs meter").nth(2).wait_for()
    probs = page.eval_on_selector_all(
        "#cap-probs meter", "ms => ms.map(m => [m.getAttribute('aria-label'), m.value])"
    )
    assert sorted(label for label, _ in probs) == ["blue square", "cat", "red circle"]
    assert sum(p for _, p in probs) == pytest.approx(1.0, abs=1e-5)
    assert len(_wait_images(page, "#cap-near", 4)) >= 4
    timings["understand"] = time.perf_counter() - t
    assert "CMYK converted to RGB" in _toast(page, "CMYK")
    caption = page.locator("#cap-caption textarea").input_value()
    assert caption.endswith("tokens]") or "[cut" not in caption  # ended, or says it was cut
    _shot(page, tmp_path, "2-caption")

    # 3. Interpolate: 7 decoded images at the model's resolution.
    page.get_by_role("tab", name="Interpolate").click()
    _upload(page, "int-a", _grid_image(tmp_path, "a.png", 1))
    _upload(page, "int-b", gallery.paths[1])
    page.locator("#int-a img").wait_for()
    page.locator("#int-b img").wait_for()
    t = time.perf_counter()
    page.locator("#int-run").click()
    assert _wait_images(page, "#int-path", 7)[:7] == [[RESOLUTION, RESOLUTION]] * 7
    timings["interpolate"] = time.perf_counter() - t
    _shot(page, tmp_path, "3-interpolate")

    # 4. Generate (the stand-in generator makes 32 x 32 samples).
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-run").click()
    assert _wait_images(page, "#gen-samples", 4)[:4] == [[32, 32]] * 4
    _shot(page, tmp_path, "4-generate")

    # 5. Ask (the stand-in VLM repeats the question and the image's size).
    page.get_by_role("tab", name="Ask").click()
    _upload(page, "ask-image", uploads["rgba.png"])
    page.locator("#ask-image img").wait_for()
    page.locator("#ask-question textarea").fill("What colour is it?")
    page.locator("#ask-run").click()
    page.wait_for_function("document.querySelector('#ask-answer textarea').value.length > 0")
    answer = page.locator("#ask-answer textarea").input_value()
    assert answer == "a 40x40 image; you asked: What colour is it?"
    _shot(page, tmp_path, "5-ask")

    _local_only(page, url)
    print("seconds per request in the browser:", timings)


def test_missing_parts_say_how_to_get_them_in_chromium(page, urls, tmp_path):
    _, url = urls
    page.goto(url)
    page.get_by_role("tab", name="Generate").click()
    text = page.locator("#gen-missing").inner_text()
    assert "No generator was given" in text and "ov3 serve MODEL --generator DIR" in text
    page.get_by_role("tab", name="Ask").click()
    text = page.locator("#ask-missing").inner_text()
    assert "No VLM was given" in text and "ov3 demo --understanding" in text
    _shot(page, tmp_path, "missing-parts")
    _local_only(page, url)


# ---------------------------------------------------------------------- examples
def _mark_outputs(page, selector: str) -> None:
    """Tag what ``selector`` shows now, so that ``_wait_new`` can tell a new result."""
    page.evaluate(
        """sel => document.querySelectorAll(sel).forEach(e => {
            e.dataset.old = '1';
            if (e.tagName === 'TEXTAREA') e.value = '(old)';
        })""",
        f"{selector} img, {selector} textarea",
    )


def _wait_new(page, selector: str, count: int = 1) -> None:
    """Wait for ``count`` new, loaded images (or a new non-empty text) under ``selector``;
    an error message instead fails with that message."""
    page.wait_for_function(
        """([sel, n]) => {
            if (document.querySelector('.toast-body.error')) return true;
            const imgs = [...document.querySelectorAll(sel + ' img')]
                .filter(i => !i.dataset.old && i.complete && i.naturalWidth > 0);
            const text = document.querySelector(sel + ' textarea');
            return imgs.length >= n || (text && text.value && text.value !== '(old)');
        }""",
        arg=[selector, count],
    )


def _click_every_example(page, tab: str, output: str, count: int, run: str | None) -> int:
    """Click each example of ``tab`` in turn (and ``run``'s button when the example only fills
    the inputs); each must give a new result in ``output`` and no error -> examples clicked."""
    items = page.locator(f"#{tab}-examples .gallery-item, #{tab}-examples tbody tr")
    n = items.count()
    assert n > 0, tab
    for i in range(n):
        _mark_outputs(page, output)
        items.nth(i).click()
        if run:
            page.locator(run).click()
        _wait_new(page, output, count)
        _no_error(page, f"example {i + 1} of {tab}")
    return n


def _no_error(page, what: str) -> None:
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, f"{what}: {errors.first.inner_text()}"


EXAMPLE_TABS = [  # tab, prefix, upload input, output that shows a result, images in it
    ("Reconstruct", "rec", "rec-image", "#rec-output", 1),
    ("Caption and classify", "cap", "cap-image", "#cap-caption", 1),
    ("Interpolate", "int", "int-a", "#int-path", 7),
    ("Ask", "ask", "ask-image", "#ask-answer", 1),
]


def test_every_example_in_every_tab_before_and_after_an_upload(page, urls, uploads, tmp_path):
    url, _ = urls
    page.goto(url)
    page.locator("#rec-image").wait_for()
    clicked = {}
    for tab, prefix, upload, output, count in EXAMPLE_TABS:
        page.get_by_role("tab", name=tab).click()
        run = f"#{prefix}-run" if prefix in ("int", "ask") else None  # not run on upload
        clicked[tab] = _click_every_example(page, prefix, output, count, None)
        # An upload after the examples works (it failed once an example had been clicked),
        # and the examples still work after it.
        _mark_outputs(page, output)
        _upload(page, upload, uploads["good.png"])
        if run:
            if prefix == "int":
                _upload(page, "int-b", uploads["rgba.png"])
                page.locator("#int-b img").wait_for()
            page.locator(f"#{upload} img").wait_for()
            page.locator(run).click()
        _wait_new(page, output, count)
        _no_error(page, f"an upload after the examples of {tab}")
        _click_every_example(page, prefix, output, count, None)
        _shot(page, tmp_path, f"examples-{prefix}")
    assert clicked == {"Reconstruct": 6, "Caption and classify": 6, "Interpolate": 3, "Ask": 6}
    _local_only(page, url)
