import random

import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu

from openvision3.data.synthetic.source import SYNTHETIC_CAPTION_ATTRIBUTES, first_word_among
from openvision3.data.synthetic.world import CLASS_NAMES, SHAPES
from openvision3.evaluation import CaptionEvaluator
from openvision3.evaluation.captioning import coco_caption_scores, normalize_caption
from tests.evaluation._eval_fakes import ScriptedCaptioner, index_images

SCRIPT = [
    "a red circle on a blue square background",
    "a small green triangle next to a yellow star",
    "two purple squares stacked on top of each other",
    "a large orange circle in the middle of the image",
    "one blue star above a red triangle",
]
TRUTH = [  # (colour, shape) each generated caption should name
    ("red", "circle"),
    ("green", "triangle"),
    ("purple", "squares"),
    ("orange", "square"),  # wrong: the caption says circle
    ("blue", "star"),
]


def coco_bleu4(generated, refs):
    """pycocoevalcap's own Bleu_4, on the text the toolkit would see after tokenisation."""
    gts = {i: [normalize_caption(t) for t in r] for i, r in enumerate(refs)}
    res = {i: [normalize_caption(g)] for i, g in enumerate(generated)}
    return Bleu(4).compute_score(gts, res, verbose=0)[0][3]


WORDS = (
    "a man woman dog cat sitting standing on in the of with next to table street field red "
    "blue small large two people holding riding bike horse grass near water building"
).split()


def coco_like_corpus(n=200, seed=0):
    """``n`` generated captions of 7-12 words with 5 references of 8-16 words each; for about
    half of the images the two references listed first are one word longer and one word
    shorter than the caption (a tie for the closest reference length, the longer one first)."""
    g = random.Random(seed)
    generated, refs = [], []
    for _ in range(n):
        scene = [g.choice(WORDS) for _ in range(18)]
        h = g.randint(7, 12)
        generated.append(" ".join(w if g.random() < 0.65 else g.choice(WORDS) for w in scene[:h]))

        def ref(length, scene=scene):
            start = g.randint(0, 2)
            words = scene[start : start + length]
            return " ".join(w if g.random() < 0.8 else g.choice(WORDS) for w in words)

        tie = g.random() < 0.5
        first = [ref(h + 1), ref(h - 1)] if tie else [ref(g.randint(8, 16)) for _ in range(2)]
        refs.append(first + [ref(g.randint(8, 16)) for _ in range(3)])
    return generated, refs


def _batches(n, size, refs, ref_key="caption_text"):
    idx = torch.arange(n)
    return [
        {
            "images": index_images(idx[i : i + size]),
            "label": idx[i : i + size],
            "key": [f"k{j}" for j in range(i, min(i + size, n))],
            ref_key: refs[i : i + size],
        }
        for i in range(0, n, size)
    ]


def test_perfect_captions_score_bleu_one():
    model = ScriptedCaptioner(SCRIPT)
    ev = CaptionEvaluator(max_len=12, beam_size=3, num_samples=3)
    out = ev.run(model, _batches(5, 2, SCRIPT))
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-9)  # 1 - O(1e-11): the toolkit's epsilons
    # CIDEr-D of captions equal to their single reference: cosine 1 for n = 1..4, times 10.
    assert out["cider"] == pytest.approx(10.0, rel=1e-9)
    assert out["count"] == 5 and not any(k.endswith("_accuracy") for k in out)
    assert model.calls == [(12, 3)] * 3
    assert ev.samples == [
        {"key": f"k{i}", "generated": SCRIPT[i], "reference": SCRIPT[i]} for i in range(3)
    ]


def test_corpus_bleu_and_attribute_accuracy():
    refs = [
        ["a red circle on a blue square", "a red circle over a blue square background"],
        ["a small green triangle next to a yellow star"],
        ["two purple squares on top of each other"],
        ["an orange square in the middle of the image"],
        ["a blue star above a red triangle"],
    ]

    def names_truth(text, row):
        colour, shape = TRUTH[int(row["label"])]
        assert row["key"] == f"k{int(row['label'])}"
        return colour in text.split() and shape in text.split()

    ev = CaptionEvaluator(attributes={"attribute": names_truth})
    out = ev.run(
        ScriptedCaptioner(SCRIPT), _batches(5, 2, refs, "refs"), references=lambda b: b["refs"]
    )
    # Corpus BLEU (sums of n-gram matches over all captions), not a mean of sentence scores.
    expected = coco_bleu4(SCRIPT, refs)
    assert 0.3 < expected < 0.95
    assert out["bleu4"] == pytest.approx(expected, abs=1e-6)
    assert out["attribute_accuracy"] == pytest.approx(4 / 5)


# Hand-made captions of the synthetic world, each with its image's main object and whether it
# names that object's (colour, shape, "colour shape") first / together.
WORLD = [
    (
        "A large red circle in the top left, a small blue square below it, on a plain grey "
        "background.",
        "red circle",
        (True, True, True),
    ),
    (  # names the main object second: the first colour and shape are the small object's
        "A large blue square in the center, a small red circle to the left of it.",
        "red circle",
        (False, False, True),
    ),
    ("There is a large red heart in the top.", "red star", (True, False, False)),
    ("A large green star on a striped sage background.", "red star", (False, True, False)),
    ("A large ring in the top right.", "white ring", (False, True, False)),  # no colour word
    ("Orange, hexagon!", "orange hexagon", (True, True, False)),  # words, not the phrase
]


def test_synthetic_colour_and_shape_words():
    script = [caption for caption, _, _ in WORLD]
    labels = torch.tensor([CLASS_NAMES.index(main) for _, main, _ in WORLD])
    batches = [
        {
            "images": index_images(range(i, i + 3)),
            "label": labels[i : i + 3],
            "caption_text": script[i : i + 3],
        }
        for i in (0, 3)
    ]
    out = CaptionEvaluator(attributes=SYNTHETIC_CAPTION_ATTRIBUTES).run(
        ScriptedCaptioner(script), batches
    )
    colour, shape, both = (sum(t[i] for _, _, t in WORLD) / len(WORLD) for i in range(3))
    assert (colour, shape, both) == (3 / 6, 4 / 6, 2 / 6)
    assert out["colour_accuracy"] == pytest.approx(colour)
    assert out["shape_accuracy"] == pytest.approx(shape)
    assert out["attribute_accuracy"] == pytest.approx(both)


def test_first_word_among_matches_whole_words():
    assert first_word_among("A striped ring, then a string.", SHAPES) == "ring"
    assert first_word_among("on a Striped background", ("striped", "plain")) == "striped"
    assert first_word_among("nothing here", SHAPES) is None


def test_reference_count_must_match():
    batch = {"images": index_images([0, 1]), "caption_text": ["only one"]}
    with pytest.raises(ValueError, match="references"):
        CaptionEvaluator().run(ScriptedCaptioner(SCRIPT), [batch])


def test_normalize_caption_and_imperfect_captions_score_lower():
    assert normalize_caption("A Dog, running.  Fast!") == "a dog running fast"
    # 5 words each, so every n-gram order up to 4 exists.
    refs = [["A red circle on grey."], ["A blue square on white."], ["A green heart on black."]]
    perfect = coco_caption_scores(
        ["a red circle on grey", "A BLUE SQUARE ON WHITE", "a green heart on black!"], refs
    )["cider"]
    wrong = coco_caption_scores(
        ["a red circle on grey", "a green square on black", "a blue heart on white"], refs
    )["cider"]
    assert perfect == pytest.approx(10.0, rel=1e-9) and 0 < wrong < perfect


def test_bleu4_is_coco_bleu4_whatever_the_reference_order():
    generated, refs = coco_like_corpus()
    lengths = [
        (len(c.split()), sorted(len(r.split()) for r in rs)) for c, rs in zip(generated, refs)
    ]
    tied = sum(h - 1 in ls and h + 1 in ls and h not in ls for h, ls in lengths)
    assert tied >= 60  # the corpus exercises the brevity penalty's tie rule

    def bleu4(refs):
        model = ScriptedCaptioner(generated)
        return CaptionEvaluator().run(model, _batches(len(generated), 32, refs))["bleu4"]

    expected = coco_bleu4(generated, refs)
    assert 0.2 < expected < 0.5
    assert bleu4(refs) == pytest.approx(expected, abs=1e-6)
    # Shortest first, longest first, shuffled: the same score (ties resolve to the shorter).
    g = random.Random(1)
    for order in (
        [sorted(r, key=lambda t: len(t.split())) for r in refs],
        [sorted(r, key=lambda t: -len(t.split())) for r in refs],
        [g.sample(r, len(r)) for r in refs],
    ):
        assert bleu4(order) == pytest.approx(expected, abs=1e-12)


def test_coco_scores_normalise_text_and_keep_the_toolkit_smoothing():
    # No 4-gram in common: the toolkit's epsilons give a tiny positive Bleu_4, not exactly 0.
    scores = coco_caption_scores(["A dog, on grass!"], [["a cat on the grass"]])
    expected = Bleu(4).compute_score({0: ["a cat on the grass"]}, {0: ["a dog on grass"]}, 0)
    assert scores["bleu4"] == expected[0][3] and scores["bleu4"] > 0
    assert coco_caption_scores([], []) == {"bleu4": None, "cider": None}
    with pytest.raises(ValueError, match="at least one reference"):
        coco_caption_scores(["a dog"], [[]])
