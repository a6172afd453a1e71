"""Layers given by their index among the layers the model runs (``gradcam layers``' order), in every backend."""
from __future__ import annotations

import numpy as np
import pytest
from backend_kits import embedded_net_everywhere

import gradcam
from gradcam.backends import get_backend


@pytest.fixture(scope="module")
def three_frameworks():
    return embedded_net_everywhere(weights_seed=3, input_seed=1)


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
def test_an_index_names_the_layer_at_that_place_counted_from_either_end(three_frameworks, framework):
    model, x = three_frameworks[framework]
    names = [name for name, _ in get_backend(model).layer_shapes(model, x)]
    at = names.index("features")
    by_name = gradcam.GradCAM(model, layer="features")(x)
    for index in (at, at - len(names), np.int64(at)):
        ex = gradcam.GradCAM(model, layer=index)(x)
        assert ex.layers == ["features"], (framework, index)
        np.testing.assert_array_equal(ex.raw, by_name.raw)
    mixed = gradcam.GradCAM(model, layer=["features", at - 1])(x)
    assert mixed.layers == ["features", names[at - 1]]


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
def test_an_index_past_either_end_is_refused_with_the_range(three_frameworks, framework):
    model, x = three_frameworks[framework]
    count = len(get_backend(model).layer_shapes(model, x))
    for index in (count, -count - 1):
        with pytest.raises(ValueError, match=rf"layer index {index} is out of range: the model runs {count} layers"):
            gradcam.GradCAM(model, layer=index)(x)
