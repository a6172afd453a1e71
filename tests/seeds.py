"""The hand-worked numbers every backend must reproduce, written once in NumPy (no framework, no layout).

Seed 000 (``../shared/seeds/000_0b1624caf9dad577.txt``, quoted in DESIGN.md section 4) works Grad-CAM out by
hand: two 3x3 channels ``A = (A1, A2)`` and the channel weights ``alpha = (1/3, -2/3)`` give the map
``L = ReLU(alpha_1 A1 + alpha_2 A2)``. A model whose target layer outputs ``A`` and whose head is
``y = sum_k alpha_k sum_ij A_kij`` has ``dy/dA_k = alpha_k`` everywhere, so every backend must hand out exactly
these gradients and Grad-CAM must give exactly ``L``. Its second example is a fully connected head on a 2x2 map
``O``: ``y1 = O11 W11 + O12 W12 + O21 W13 + O22 W14`` with ``W = (0, 1, 0, 1)``, so ``dy1/dO = [[0, 1], [0, 1]]``
and the channel weight is ``1/2``.

The Guided Backpropagation / Deconvnet example (``HAND_*``) is ours, worked by hand from the rules of
Springenberg et al. (2015) as DESIGN.md section 4 states them, on four values. The same array ``HAND_X``
is one channel of four pixels to a channels-first model and one pixel of four channels to a channels-last one;
either way the input gradient, flattened, is ``HAND_GRADIENTS[rule]``.

Arrays here are channels first (``(K, h, w)``); each ``*_nets.py`` lays them out for its framework.
"""
from __future__ import annotations

import numpy as np

# --- seed 000, the Grad-CAM example ---------------------------------------------------------------

SEED_A = np.array(
    [
        [[1, 0, 2], [3, 5, 0], [1, 1, 1]],  # A1
        [[0, 1, 0], [3, 1, 0], [1, 0, 1]],  # A2
    ],
    dtype=np.float32,
)
SEED_ALPHA = np.array([1 / 3, -2 / 3], dtype=np.float32)
# alpha_1 A1 + alpha_2 A2 = [[1/3, -2/3, 2/3], [-1, 1, 0], [-1/3, 1/3, -1/3]], and its ReLU:
SEED_L = np.array([[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]])
# sum A1 = 14 and sum A2 = 7: y = 14/3 - 2/3 * 7 = 0
SEED_SCORE = 0.0

# --- seed 000, the fully connected example ------------------------------------------------------

SEED_W = np.array([0, 1, 0, 1], dtype=np.float32)  # (W11, W12, W13, W14) on (O11, O12, O21, O22)
SEED_DY_DO = np.array([[0, 1], [0, 1]], dtype=np.float32)
SEED_DENSE_ALPHA = 0.5  # the mean of dy1/dO

# --- Guided Backprop and Deconvnet on four values (ours) ------------------------------------------
#   x = [1, -2, 3, 4];  r1 = relu(x) = [1, 0, 3, 4];  z2 = t * r1 = [1, 0, -3, 4], t = [1, 1, -1, 1]
#   r2 = relu(z2) = [1, 0, 0, 4];  y = sum(u * r2) = 2 * 1 + (-1) * 4 = -2, u = [2, 3, 5, -1]
#   plain:     g(r2) = u -> mask z2 > 0 -> [2, 0, 0, -1] -> * t -> [2, 0, 0, -1] -> mask x > 0 -> [2, 0, 0, -1]
#   guided:    [2, 0, 0, 0] (z2 > 0 and g > 0) -> * t -> [2, 0, 0, 0] -> (x > 0 and g > 0) -> [2, 0, 0, 0]
#   deconvnet: max(u, 0) = [2, 3, 5, 0] -> * t -> [2, 3, -5, 0] -> max(., 0) -> [2, 3, 0, 0]

HAND_X = np.array([1, -2, 3, 4], dtype=np.float32).reshape(1, 1, 1, 4)
HAND_T = np.array([1, 1, -1, 1], dtype=np.float32)
HAND_U = np.array([2, 3, 5, -1], dtype=np.float32)
HAND_SCORE = -2.0
HAND_GRADIENTS = {
    "plain": [2, 0, 0, -1],
    "guided": [2, 0, 0, 0],
    "deconvnet": [2, 3, 0, 0],
}
