"""Multi-object checker: exact on clean renders, colour split of touching objects, scene scores, caption sets."""
import numpy as np
import pytest

from ldm.data.shapes import ATTRIBUTES, POSITIONS, ShapesDataset, render_shape
from ldm.eval.shapes import detect_objects
from ldm.eval.shapes_model import scene_captions
from ldm.eval.shapes_scenes import match_objects, parse_scene, scene_report


def test_detect_objects_reads_every_object_of_a_clean_render():
    objects = [{"shape": "circle", "color": "red", "size": "large", "position": "left"},
               {"shape": "square", "color": "blue", "size": "small", "position": "right"},
               {"shape": "triangle", "color": "green", "size": "large", "position": "top"}]
    found = detect_objects(render_shape(objects, size=96, rng=0, position_jitter=0.0, size_jitter=0.0))
    assert sorted(({k: d[k] for k in ATTRIBUTES} for d in found), key=lambda d: d["position"]) == \
        sorted(objects, key=lambda d: d["position"])


def test_touching_objects_of_different_colours_are_two_objects():
    objects = [{"shape": "square", "color": "yellow", "size": "large", "position": "left"},
               {"shape": "square", "color": "blue", "size": "large", "position": "center"}]
    image = render_shape(objects, size=64, rng=1, position_jitter=0.0, size_jitter=0.1)
    assert len(detect_objects(image)) == 2
    assert detect_objects(np.full((32, 32, 3), 240, np.uint8)) == []


def test_multi_object_renders_keep_apart_where_there_is_room_and_single_renders_are_unchanged():
    one = {"shape": "circle", "color": "red", "size": "small", "position": "center"}
    assert np.array_equal(render_shape(one, rng=5), render_shape([one], rng=5))
    ds = ShapesDataset(size=64, length=480, num_objects=2, split="test", paraphrase_prob=0.5)
    items = [ds[i] for i in range(len(ds))]
    result = scene_report(np.stack([it["image"] for it in items]), [it["caption"] for it in items])
    assert result["accuracy"]["scene"] > 0.95  # the checker's ceiling on the data itself (touching same colours)


def test_scene_report_scores_objects_and_scenes():
    captions = ["a large red circle at the left and a small blue square at the right"] * 2
    wanted = parse_scene(captions[0])
    assert [o["position"] for o in wanted] == ["left", "right"]
    right = render_shape(wanted, size=64, rng=0)
    half = render_shape([wanted[0], {**wanted[1], "color": "green"}], size=64, rng=0)  # 2nd object: wrong colour
    result = scene_report(np.stack([right, half]), captions)
    acc = result["accuracy"]
    assert acc["n_images"] == 2 and acc["n_objects"] == 4
    assert acc["object_position"] == 1.0 and acc["object_color"] == 0.75 and acc["scene"] == 0.5
    assert acc["count"] == 1.0 and set(result["ci95"]) == {*(f"object_{k}" for k in (*ATTRIBUTES, "all")),
                                                           "scene", "count"}
    assert match_objects(wanted, [])[0] == {**{k: False for k in ATTRIBUTES}, "all": False}
    with pytest.raises(ValueError, match="images for"):
        scene_report(np.stack([right]), captions)


def test_scene_captions_name_distinct_positions_and_are_seeded():
    captions = scene_captions(10, num_objects=3, seed=2)
    assert captions == scene_captions(10, num_objects=3, seed=2) != scene_captions(10, num_objects=3, seed=3)
    for caption in captions:
        positions = [o["position"] for o in parse_scene(caption)]
        assert len(positions) == 3 == len(set(positions)) and set(positions) <= set(POSITIONS)
    with pytest.raises(ValueError, match="num_objects"):
        scene_captions(2, num_objects=6)
