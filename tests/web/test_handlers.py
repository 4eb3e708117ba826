"""The computations behind the tabs, on a tiny random model at 64 px."""

import numpy as np
import pytest
import torch
from PIL import Image

from openvision3.evaluation.reconstruction import psnr_uint8
from openvision3.web.handlers import Handlers, decoder_noise
from openvision3.web.options import NOISE_LEVELS, parse_labels
from openvision3.web.parts import MissingPartError
from tests.web._web_helpers import RESOLUTION


def _image(seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (80, 96, 3), dtype=np.uint8))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_reconstruct_matches_the_pipeline_and_reports_its_psnr(handlers, pipeline):
    image = _image(0)
    rec = handlers.reconstruct(image)
    assert rec.input.size == rec.reconstruction.size == (RESOLUTION, RESOLUTION)
    expected = pipeline.to_pil(pipeline.reconstruct(image))[0]
    assert np.abs(_pixels(rec.reconstruction) - _pixels(expected)).max() <= 1
    x = pipeline.preprocess(image)
    assert rec.psnr == pytest.approx(float(psnr_uint8(x, pipeline.reconstruct(image))[0]), abs=0.05)
    assert 0.0 < rec.ssim <= 1.0


def test_noise_levels_are_seeded_and_grow_away_from_the_clean_decode(handlers):
    image = _image(1)
    a, b = handlers.reconstruct(image, seed=3), handlers.reconstruct(image, seed=3)
    assert [s for s, _ in a.noisy] == list(NOISE_LEVELS)
    clean = _pixels(a.reconstruction)
    assert np.array_equal(_pixels(a.noisy[0][1]), clean)  # sigma = 0 is the reconstruction
    dist = [np.abs(_pixels(im) - clean).mean() for _, im in a.noisy]
    assert dist[-1] > dist[1] > 0
    for (_, x), (_, y) in zip(a.noisy, b.noisy):
        assert np.array_equal(_pixels(x), _pixels(y))
    c = handlers.reconstruct(image, seed=4)
    assert not np.array_equal(_pixels(c.noisy[-1][1]), _pixels(a.noisy[-1][1]))


def test_decoder_noise_hook_is_removed_and_zero_sigma_changes_nothing(pipeline):
    tokens = pipeline.encode(_image(2))
    grid = pipeline.token_grid()
    clean = pipeline.decode(tokens, grid)
    with decoder_noise(pipeline.model.decoder, torch.zeros(1), torch.Generator()):
        same = pipeline.decode(tokens, grid)
    with decoder_noise(pipeline.model.decoder, torch.ones(1), torch.Generator()):
        noisy = pipeline.decode(tokens, grid)
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(noisy, clean)
    torch.testing.assert_close(pipeline.decode(tokens, grid), clean)  # hook gone


def test_understand_gives_a_caption_probabilities_and_the_image_itself_as_nearest(
    handlers, gallery
):
    out = handlers.understand(gallery.images[2], ["red circle", "blue square", "cat"])
    assert isinstance(out.caption, str)
    assert list(out.probs) == ["red circle", "blue square", "cat"]
    assert sum(out.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(out.neighbours) == 4
    best_image, best_caption, best_sim = out.neighbours[0]
    assert best_caption == gallery.captions[2] and best_sim == pytest.approx(1.0, abs=1e-4)
    sims = [s for _, _, s in out.neighbours]
    assert sims == sorted(sims, reverse=True)


@pytest.mark.slow  # beam search over the 49k-token vocabulary at every step
def test_beam_search_caption_runs(handlers):
    assert isinstance(handlers.understand(_image(3), ["a"], beam_size=3).caption, str)


def test_understand_needs_labels(handlers):
    with pytest.raises(ValueError, match="at least one label"):
        handlers.understand(_image(3), [])


def test_parse_labels():
    assert parse_labels(" red circle, blue square\ncat,, red circle ") == [
        "red circle",
        "blue square",
        "cat",
    ]


def test_interpolation_ends_at_both_reconstructions(handlers, pipeline):
    a, b = _image(4), _image(5)
    path = handlers.interpolate(a, b, steps=5)
    assert len(path) == 5 and all(im.size == (RESOLUTION, RESOLUTION) for im in path)
    for end, image in ((path[0], a), (path[-1], b)):
        expected = pipeline.to_pil(pipeline.reconstruct(image))[0]
        assert np.abs(_pixels(end) - _pixels(expected)).max() <= 1
    assert not np.array_equal(_pixels(path[2]), _pixels(path[0]))
    with pytest.raises(ValueError, match="steps"):
        handlers.interpolate(a, b, steps=1)


def test_generate_and_ask_go_through_the_parts_apis(handlers):
    images = handlers.generate("blue square", num=3, cfg_scale=2.0, steps=5, sampler="heun")
    assert len(images) == 3 and images[0].size == (32, 32)
    call = handlers.generator.model.calls[-1]
    assert call["labels"].tolist() == [1, 1, 1]  # "blue square" is class 1
    assert {k: call[k] for k in ("cfg_scale", "steps", "sampler")} == dict(
        cfg_scale=2.0, steps=5, sampler="heun"
    )
    with pytest.raises(ValueError, match="unknown class"):
        handlers.generate("green star")
    assert handlers.ask(_image(6), " what? ") == "a 96x80 image; you asked: what?"
    with pytest.raises(ValueError, match="type a question"):
        handlers.ask(_image(6), "  ")


def test_missing_parts_say_how_to_get_them(pipeline, gallery):
    bare = Handlers(pipeline, gallery)
    with pytest.raises(MissingPartError, match=r"ov3 serve MODEL --generator DIR"):
        bare.generate("red circle")
    with pytest.raises(MissingPartError, match=r"ov3 demo --understanding"):
        bare.ask(_image(0), "what?")


@pytest.mark.parametrize("ends", [True, False])
def test_a_caption_says_whether_it_ended_or_was_cut(handlers, pipeline, monkeypatch, ends):
    from openvision3.tokenizer import EOT_ID, PAD_ID, SOT_ID, Tokenizer

    words = Tokenizer()("a large red star")[0]
    words = words[1 : int((words == EOT_ID).nonzero()[0])]  # the word ids, no SOT/EOT
    tail = [EOT_ID, PAD_ID] if ends else []
    ids = torch.tensor([[SOT_ID, *words.tolist(), *tail]])  # (1, T)
    monkeypatch.setattr(pipeline.model, "caption_ids", lambda x, beam_size=1: ids)
    out = handlers.understand(_image(4), ["a", "b"])
    assert out.caption == "a large red star"
    assert out.cut_at == (None if ends else ids.shape[1])
