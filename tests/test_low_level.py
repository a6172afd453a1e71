"""``gradcam.activations_and_gradients``: the documented low-level call, in every backend."""
from __future__ import annotations

import numpy as np
import pytest
from backend_kits import embedded_net_everywhere

import gradcam


@pytest.fixture(scope="module")
def three_frameworks():
    return embedded_net_everywhere(weights_seed=3, input_seed=1)


def test_activations_and_gradients_are_the_methods_own_and_agree_across_frameworks(three_frameworks):
    probes = {}
    for framework, (model, x) in three_frameworks.items():
        probe = gradcam.activations_and_gradients(model, x, "features", target=1)
        A, G = probe.activations["features"], probe.gradients["features"]
        assert A.shape == G.shape and A.shape[:2] == (2, probe.activations["features"].shape[1])
        assert probe.layers == ["features"] and (probe.targets == 1).all()
        # Grad-CAM written out from them is the method's raw map
        np.testing.assert_allclose(gradcam.reference.grad_cam(A, G),
                                   gradcam.GradCAM(model, "features")(x, target=1).raw, rtol=1e-5, atol=1e-7)
        probes[framework] = probe
    for framework in ("tensorflow", "jax"):  # channels first whatever the framework's layout
        for part in ("activations", "gradients"):
            ours, torch_s = getattr(probes[framework], part)["features"], getattr(probes["torch"], part)["features"]
            np.testing.assert_allclose(ours, torch_s, rtol=1e-4, atol=1e-5 * np.abs(torch_s).max())


def test_the_automatic_layer_and_an_index_as_for_a_method(three_frameworks):
    model, x = three_frameworks["torch"]
    automatic = gradcam.activations_and_gradients(model, x)
    assert automatic.layers == gradcam.GradCAM(model)(x).layers
    names = [name for name, _ in gradcam.GradCAM(model).backend.layer_shapes(model, x)]
    from_the_end = names.index("features") - len(names)
    assert gradcam.activations_and_gradients(model, x, from_the_end).layers == ["features"]
