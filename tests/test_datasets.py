"""The synthetic shapes generator: determinism, exact boxes, class balance, styles, the biased split's mark."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from gradcam.datasets import (
    BIASED_CLASS,
    CLASSES,
    make_split,
    mark_box_for,
    sample_annotations,
    sample_paths,
    shape_mask,
)
from gradcam.datasets.shapes import BACKGROUNDS, FILLS, mask_box, signed_distance


def _same(a, b) -> bool:
    return (
        np.array_equal(a.images, b.images)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.masks, b.masks)
        and np.array_equal(a.has_mark, b.has_mark)
        and a.fills == b.fills
        and a.backgrounds == b.backgrounds
        and len(a.boxes) == len(b.boxes)
        and all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=False))
    )


@pytest.mark.parametrize("kind", ["single", "multi", "biased"])
def test_same_seed_gives_identical_arrays_and_other_seeds_differ(kind):
    first = make_split(kind, 20, seed=3)
    assert _same(first, make_split(kind, 20, seed=3))
    assert not np.array_equal(first.images, make_split(kind, 20, seed=4).images)
    assert not np.array_equal(first.images, make_split(kind, 20, seed=3, train=False).images)


def test_a_prefix_of_a_split_is_the_smaller_split():
    assert _same(make_split("multi", 7, seed=1), _prefix(make_split("multi", 12, seed=1), 7))


def _prefix(split, k):
    return type(split)(
        split.kind, split.train, split.images[:k], split.labels[:k], split.boxes[:k], split.masks[:k],
        split.has_mark[:k], split.mark_box, split.fills[:k], split.backgrounds[:k],
    )


@pytest.mark.parametrize(
    ("shape", "center", "radius", "box", "area"),
    [
        # |x - 32| <= 10 at pixel centres j + 0.5 -> columns 22..41, rows alike: 20 x 20
        ("square", (32, 32), 10, (22, 22, 42, 42), 400),
        # the row through the centre reaches |dx| <= sqrt(25 - 0.25): columns 15..24; rows 25..34
        ("circle", (20, 30), 5, (15, 25, 25, 35), 80),
        # bars 18 x 6 (|u| <= 9, |v| <= 3) twice, minus their 6 x 6 overlap: 2 * 108 - 36
        ("cross", (32, 32), 9, (23, 23, 41, 41), 180),
        # top vertex at y = 20 (first row whose centre fits: 21), base at y = 38; widest row 37
        # spans |dx| <= 17.5 tan(30 deg) = 10.10 -> columns 22..41
        ("triangle", (32, 32), 12, (22, 21, 42, 38), 186),
    ],
)
def test_shape_masks_and_boxes_match_hand_worked_values(shape, center, radius, box, area):
    mask = shape_mask(shape, center, radius)
    assert tuple(mask_box(mask)) == box
    assert mask.sum() == area


def test_ring_has_a_hole_the_circle_does_not():
    ring = shape_mask("ring", (32, 32), 8)
    circle = shape_mask("circle", (32, 32), 8)
    assert tuple(mask_box(ring)) == tuple(mask_box(circle)) == (24, 24, 40, 40)
    assert not ring[30:34, 30:34].any() and circle[30:34, 30:34].all()
    # ring = circle(8) minus the open disc of radius 4; no pixel centre lies at distance exactly 4
    # ((a/2)^2 + (b/2)^2 = 16 has no solution in odd a, b), so the inner circle subtracts cleanly
    assert ring.sum() == circle.sum() - shape_mask("circle", (32, 32), 4).sum()


def test_signed_distance_is_the_distance_to_the_edge_and_proportions_change_ring_and_cross():
    # pixel (row 32, column 32) has its centre at (32.5, 32.5): 0.5 * sqrt(2) from a centre at (32, 32)
    assert signed_distance("circle", (32, 32), 8)[32, 32] == pytest.approx(8 - np.sqrt(0.5))
    assert signed_distance("square", (32.5, 32.5), 8)[32, 45] == pytest.approx(8 - 13)
    # a thicker ring (inner radius 2 instead of 4) covers more pixels; a proportion of 1/3 is the default cross
    assert shape_mask("ring", (32, 32), 8, proportion=0.25).sum() > shape_mask("ring", (32, 32), 8).sum()
    assert np.array_equal(shape_mask("cross", (32, 32), 9, proportion=1 / 3), shape_mask("cross", (32, 32), 9))
    # the triangle's centre lies r/2 from each edge
    assert signed_distance("triangle", (32.5, 32.5), 12)[32, 32] == pytest.approx(6)


def test_rotating_a_square_by_a_quarter_turn_gives_the_same_mask():
    assert np.array_equal(shape_mask("square", (30.3, 33.7), 9), shape_mask("square", (30.3, 33.7), 9, np.pi / 2))


@pytest.mark.parametrize("kind", ["single", "multi", "biased"])
def test_every_box_is_tight_around_its_object_and_boxes_cover_the_mask(kind):
    split = make_split(kind, 60, seed=2)
    for mask, boxes in zip(split.masks, split.boxes, strict=False):
        covered = np.zeros_like(mask)
        for x0, y0, x1, y1 in boxes:
            inside = mask[y0:y1, x0:x1]
            # tight: the object touches all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] = True
        assert not (mask & ~covered).any()
    if kind == "single" or kind == "biased":
        assert all(
            len(b) == 1 and tuple(b[0]) == tuple(mask_box(m)) for b, m in zip(split.boxes, split.masks, strict=False)
        )


def test_multi_split_has_two_to_four_separate_instances():
    split = make_split("multi", 200, seed=0)
    counts = np.array([len(b) for b in split.boxes])
    assert counts.min() == 2 and counts.max() == 4
    for boxes in split.boxes:
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_classes_are_balanced_and_images_have_the_documented_layout():
    split = make_split("single", 103, seed=9, size=48)
    assert np.bincount(split.labels).tolist() == [21, 21, 21, 20, 20]
    assert split.images.shape == (103, 48, 48, 3) and split.images.dtype == np.uint8
    assert split.masks.shape == (103, 48, 48) and split.masks.dtype == bool
    x = split.to_float()
    assert x.shape == (103, 3, 48, 48) and x.dtype == np.float32
    assert np.array_equal(split.to_float(channels_first=False), split.images / np.float32(255))
    assert split.mark_box is None and not split.has_mark.any()


def test_objects_stand_out_from_the_background():
    """Paint (the brightest-contrast tenth of the object, so that an outline counts) against the background
    just around the object; measured: above 50 on 95% of the images, 15 at the least (a thin outline, blurred)."""
    split = make_split("single", 300, seed=4)
    contrast = []
    for image, mask in zip(split.images.astype(float), split.masks, strict=True):
        around = binary_dilation(mask, iterations=3) & ~mask
        background = np.median(image[around], axis=0)
        inside = np.percentile(np.linalg.norm(image[mask] - background, axis=1), 90)
        contrast.append(inside - np.percentile(np.linalg.norm(image[around] - background, axis=1), 90))
    assert np.mean(np.array(contrast) > 40) >= 0.95


def test_every_fill_and_background_is_drawn_and_the_biased_split_is_never_white():
    split = make_split("single", 300, seed=5)
    assert set(split.fills) == set(FILLS) and set(split.backgrounds) == set(BACKGROUNDS)
    # each style about as often as the others (300 / 5 fills, 300 / 6 backgrounds)
    assert min(split.fills.count(f) for f in FILLS) >= 40 and min(split.backgrounds.count(b) for b in BACKGROUNDS) >= 30
    biased = make_split("biased", 300, seed=5)
    assert "white" not in biased.backgrounds and set(biased.fills) == set(FILLS)


def test_biased_training_split_marks_exactly_the_circles():
    split = make_split("biased", 200, seed=0, train=True)
    assert np.array_equal(split.has_mark, split.labels == BIASED_CLASS)
    assert split.mark_box == (1, 1, 7, 7)
    x0, y0, x1, y1 = split.mark_box
    patches = split.images[:, y0:y1, x0:x1]
    assert (patches[split.has_mark] == 255).all()
    assert not (patches[~split.has_mark] == 255).all(axis=(1, 2, 3)).any()
    # the object never touches the mark
    assert not split.masks[:, : y1 + 2, : x1 + 2].any()


def test_biased_test_split_puts_the_mark_on_about_half_of_every_class():
    split = make_split("biased", 500, seed=0, train=False)
    for label in range(len(CLASSES)):
        rate = split.has_mark[split.labels == label].mean()
        assert 0.35 < rate < 0.65, (CLASSES[label], rate)


def test_mark_box_scales_with_the_image_size():
    assert mark_box_for(64) == (1, 1, 7, 7)
    assert mark_box_for(96) == (2, 2, 11, 11)
    assert make_split("biased", 2, size=96).mark_box == (2, 2, 11, 11)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "double"}, "kinds are single, multi, biased"),
        ({"size": 16}, "at least 32"),
        ({"n": -1}, "n must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(**kwargs)


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="shapes are circle, square"):
        shape_mask("star", (10, 10), 3)


def test_bundled_samples_are_the_generator_images_they_claim_to_be():
    paths = sample_paths()
    annotations = sample_annotations()
    assert sorted(p.name for p in paths) == sorted(annotations)
    assert {a["class"] for a in annotations.values()} == set(CLASSES)
    for path in paths:
        note = annotations[path.name]
        image = np.asarray(Image.open(path))
        split = make_split(note["split"], note["index"] + 1, seed=note["seed"], train=False)
        assert np.array_equal(image, split.images[note["index"]])
        assert note["label"] == split.labels[note["index"]] and CLASSES[note["label"]] == note["class"]
        assert note["boxes"] == split.boxes[note["index"]].tolist()
    assert json.loads(json.dumps(annotations)) == annotations
