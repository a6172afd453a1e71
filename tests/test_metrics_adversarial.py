"""The attack of the adversarial evaluation (Grad-CAM 6.2, ``gradcam.attacks``): the log-probability gradient
assembled from the backend's per-class input gradients, worked by hand on a linear model, the same in the three
frameworks on the embedded architecture, and projected gradient descent's steps, projection and stop."""
import math

import numpy as np
import pytest
from backend_kits import embedded_net_everywhere

from gradcam.attacks import log_probability_gradient, pgd_absent, softmax
from gradcam.backends import get_backend

torch = pytest.importorskip("torch")


def linear_model() -> "torch.nn.Module":
    """logits = W x + b on a (1, 3, 2, 2) image flattened to 12 values: z_0 = x_0 - x_2, z_1 = x_1 - x_3 + ln 2,
    z_2 = x_2 - x_0 (x_k: channel 0's pixels in row-major order). On a grey 0.5 image z = (0, ln 2, 0), so
    p = (1/4, 1/2, 1/4)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    W = np.zeros((3, 12), dtype=np.float32)
    W[0, [0, 2]] = 1, -1
    W[1, [1, 3]] = 1, -1
    W[2, [0, 2]] = -1, 1
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(W))
        model[1].bias.copy_(torch.tensor([0.0, math.log(2.0), 0.0]))
    return model.eval()


GREY = np.full((1, 3, 2, 2), 0.5, dtype=np.float32)


def test_log_probability_gradient_by_hand():
    # d log p_0 / dx = W_0 - sum_j p_j W_j = W_0 - (W_0 / 4 + W_1 / 2 + W_2 / 4) = W_0 - W_1 / 2 (W_2 = -W_0),
    # i.e. channel 0 = [[1, -1/2], [-1, 1/2]]
    gradient, p = log_probability_gradient(linear_model(), GREY, np.array([0]))
    np.testing.assert_allclose(p, [[0.25, 0.5, 0.25]], rtol=1e-6)
    expected = np.zeros((1, 3, 2, 2))
    expected[0, 0] = [[1, -0.5], [-1, 0.5]]
    np.testing.assert_allclose(gradient, expected, atol=1e-6)


def test_pgd_steps_against_the_gradient_and_stays_in_the_ball():
    model = linear_model()
    # one step of 0.1: channel 0 becomes [[0.4, 0.6], [0.6, 0.4]] (sign of the gradient), z = (-0.2, ln 2 + 0.2,
    # 0.2), p_0 = e^-0.2 / (e^-0.2 + 2 e^0.2 + e^0.2)
    p0 = math.exp(-0.2) / (math.exp(-0.2) + 3 * math.exp(0.2))
    one = pgd_absent(model, GREY, [0], epsilon=0.1, step_size=0.1, steps=1, stop_probability=0.1)
    stepped = GREY.copy()
    stepped[0, 0] = [[0.4, 0.6], [0.6, 0.4]]
    np.testing.assert_allclose(one.images, stepped, atol=1e-7)
    np.testing.assert_allclose(one.probability, [p0], rtol=1e-5)
    assert one.steps.tolist() == [1] and one.reached.tolist() == [False]
    # three steps: the gradient keeps its sign, the projection onto the 0.1-ball keeps the first step's image
    three = pgd_absent(model, GREY, [0], epsilon=0.1, step_size=0.1, steps=3, stop_probability=0.1)
    np.testing.assert_allclose(three.images, stepped, atol=1e-7)
    assert three.steps.tolist() == [3]
    # already below the stop probability (1/4 < 0.3): no step, the image unchanged
    done = pgd_absent(model, GREY, [0], epsilon=0.1, step_size=0.1, steps=3, stop_probability=0.3)
    np.testing.assert_array_equal(done.images, GREY)
    assert done.steps.tolist() == [0] and done.reached.tolist() == [True]
    # the pixel range is respected: a white image cannot be pushed above 1
    white = pgd_absent(model, np.ones_like(GREY), [1], epsilon=0.1, step_size=0.1, steps=2, stop_probability=1e-3)
    assert white.images.max() <= 1.0 and white.images.min() >= 0.9 - 1e-7


def test_the_same_gradient_and_attack_in_three_frameworks():
    nets = embedded_net_everywhere(weights_seed=3, input_seed=4)
    classes = np.array([1, 3])
    gradients = {}
    for name, (model, x) in nets.items():
        gradient, p = log_probability_gradient(model, x, classes)
        gradients[name] = gradient if name == "torch" else gradient.transpose(0, 3, 1, 2)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    scale = np.abs(gradients["torch"]).max()
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(gradients[name], gradients["torch"], atol=1e-4 * scale)
    for model, x in nets.values():
        attack = pgd_absent(model, x, classes, epsilon=4 / 255, step_size=1 / 255, steps=2)
        assert np.abs(attack.images - x).max() <= 4 / 255 + 1e-7
        assert attack.images.min() >= 0 and attack.images.max() <= 1
        clean = softmax(get_backend(model).predict(model, x))[np.arange(2), classes]
        assert (attack.probability < clean).all()  # two steps down the gradient lower the attacked probability


def test_bad_attack_arguments_are_refused():
    with pytest.raises(ValueError, match="one class per image"):
        pgd_absent(linear_model(), GREY, [0, 1])
    with pytest.raises(ValueError, match="epsilon and step_size must be positive"):
        pgd_absent(linear_model(), GREY, [0], epsilon=0.0)
    with pytest.raises(ValueError, match="outside bounds"):
        pgd_absent(linear_model(), GREY * 3, [0])
