"""Synthetic world: determinism, disjoint splits, any resolution, labels and texts."""

import dataclasses
import tarfile

import numpy as np
import pytest
from PIL import Image

from openvision3.data.synthetic.world import (
    BACKGROUNDS,
    CLASS_NAMES,
    COLORS,
    SHAPES,
    ZERO_SHOT_TEMPLATES,
    SyntheticConfig,
    SyntheticWorld,
    write_shards,
)


def test_class_names_and_templates():
    assert len(CLASS_NAMES) == 64 == len(set(CLASS_NAMES))
    assert CLASS_NAMES[0] == "red circle"
    assert all("{}" in t for t in ZERO_SHOT_TEMPLATES)


def test_same_seed_same_sample_and_different_index_differs():
    a, b = SyntheticWorld(3).sample("train", 7, 64), SyntheticWorld(3).sample("train", 7, 64)
    assert np.array_equal(a["image"], b["image"])
    assert (a["alt_text"], a["caption"], a["label"], a["key"]) == (
        b["alt_text"],
        b["caption"],
        b["label"],
        b["key"],
    )
    c = SyntheticWorld(3).sample("train", 8, 64)
    assert not np.array_equal(a["image"], c["image"]) and a["key"] != c["key"]
    d = SyntheticWorld(4).sample("train", 7, 64)
    assert not np.array_equal(a["image"], d["image"])


def test_train_and_val_scenes_are_disjoint():
    w = SyntheticWorld(0)
    train = {w.scene("train", i) for i in range(300)}
    val = {w.scene("val", i) for i in range(300)}
    assert len(train) == 300 and len(val) == 300
    assert not train & val


@pytest.mark.parametrize("res", [32, 64, 96])
def test_renders_at_any_resolution(res):
    w = SyntheticWorld(0)
    img = w.sample("val", 1, res)["image"]
    assert img.shape == (res, res, 3) and img.dtype == np.uint8


def test_same_scene_looks_the_same_at_every_resolution():
    w = SyntheticWorld(0)
    for i in range(5):
        scene = w.scene("train", i)
        small = w.render(scene, 32).astype(np.float32)
        big = np.asarray(Image.fromarray(w.render(scene, 96)).resize((32, 32), Image.BOX))
        assert np.abs(small - big.astype(np.float32)).mean() < 12


def _object_pixels(w, scene, obj, res=96):
    """Pixels covered by ``obj`` alone on a plain background."""
    alone = dataclasses.replace(scene, objects=(obj,), texture="plain")
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.int32)
    return int((np.abs(w.render(alone, res).astype(np.int32) - bg).sum(-1) > 60).sum())


def test_label_is_the_largest_object():
    w = SyntheticWorld(0)
    checked = 0
    for i in range(40):
        scene = w.scene("train", i)
        s = w.sample("train", i, 32)
        assert CLASS_NAMES[s["label"]] == scene.objects[0].name
        if len(scene.objects) > 1:
            areas = [_object_pixels(w, scene, o) for o in scene.objects]
            assert areas[0] > max(areas[1:]), (scene, areas)
            checked += 1
    assert checked >= 10


def test_rendered_colour_at_object_centre():
    w = SyntheticWorld(1)
    res = 96
    for i in range(30):
        scene = w.scene("val", i)
        o = scene.objects[0]
        if o.shape == "ring":
            continue
        img = w.render(scene, res)
        y, x = int(o.cy * res), int(o.cx * res)
        assert np.abs(img[y, x].astype(int) - np.array(COLORS[o.color])).max() <= 12, (o, img[y, x])


def test_texts_mention_every_object():
    w = SyntheticWorld(0)
    for i in range(30):
        scene, s = w.scene("train", i), w.sample("train", i, 32)
        assert s["alt_text"].split(", ")[0] == scene.objects[0].name
        assert len(s["alt_text"].split(", ")) == len(scene.objects)
        for o in scene.objects:
            assert f"{o.color} {o.shape}" in s["alt_text"]
            assert f"{o.size} {o.color} {o.shape}" in s["caption"]
        assert f"{scene.background} background" in s["caption"]
        if len(scene.objects) > 1:
            assert (
                " of it" in s["caption"] or "above it" in s["caption"] or "below it" in s["caption"]
            )


def test_relation_words_match_the_grid():
    w = SyntheticWorld(0)
    for i in range(60):
        scene = w.scene("train", i)
        if len(scene.objects) != 2:
            continue
        a, b = scene.objects
        caption = w.sample("train", i, 32)["caption"]
        if b.cell % 3 > a.cell % 3:
            assert "to the right of it" in caption
        if b.cell // 3 < a.cell // 3:
            assert "above" in caption


def test_all_shapes_and_colours_occur():
    w = SyntheticWorld(0)
    objs = [o for i in range(200) for o in w.scene("train", i).objects]
    assert {o.shape for o in objs} == set(SHAPES)
    assert {o.color for o in objs} == set(COLORS)
    assert {o.size for o in objs} == {"small", "large"}


def test_config_validation():
    with pytest.raises(ValueError):
        SyntheticConfig(train_size=0)
    with pytest.raises(ValueError):
        SyntheticWorld(0).scene("test", 0)


def test_write_shards(tmp_path):
    paths = write_shards(SyntheticWorld(0), "val", tmp_path, 32, samples_per_shard=4, count=10)
    assert len(paths) == 3 and all(p.endswith(".tar") for p in paths)
    with tarfile.open(paths[0]) as tar:
        names = sorted(tar.getnames())
    assert names[:3] == ["val-00000000.json", "val-00000000.png", "val-00000000.txt"]
    assert len(names) == 12


def test_object_counts_follow_their_weights():
    from openvision3.data.synthetic.world import OBJECT_COUNT_WEIGHTS

    world = SyntheticWorld(seed=0)
    counts = np.bincount([len(world.scene("train", i).objects) for i in range(4000)], minlength=5)
    freq = counts[1:] / 4000
    assert counts[0] == 0
    np.testing.assert_allclose(freq, OBJECT_COUNT_WEIGHTS, atol=0.03)
