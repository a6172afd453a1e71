"""Train the embedded model on the synthetic shapes (PyTorch, CPU) and write its weights as ``.npz``.

    python -m gradcam.models.train                      # default model -> gradcam/models/default.npz
    python -m gradcam.models.train --kind biased        # biased model  -> gradcam/models/biased.npz

``default`` trains on one-object images with a quarter of multi-instance images mixed in (so the
bundled multi-instance sample is classified too); ``biased`` trains on the biased split, where a
corner mark is on every "circle" image and on no other. Fresh images are drawn every epoch (the
generator is cheap, about 1 ms an image), so the model never sees an image twice. The first
``PLAIN_EPOCHS`` draw only the plain styles (``make_split(..., plain=True)``): on the full mix of
fills, backgrounds and degradations the loss stays near chance for several epochs before it finds
the shapes, and starting plain shortens that. The default model's last ``EPOCHS - LOCALIZATION_FROM``
epochs also penalize class evidence off the object and object edges without evidence (``evidence_outside``,
``edges_without_evidence``, with the masks the generator draws): without them the model classified as well, but
its Grad-CAM boxes matched the object (IoU >= 0.5) on 37% of held-out images and its maximum fell off the object
on 14%; with them, 96% and 0% (``tests/test_models.py``). Held-out accuracy is printed on test splits
(``train=False``: images never used in training); for the biased model also how often a mark on a
non-circle image turns the prediction into "circle". The packaged files were made with the defaults
(``--threads 2``; the thread count changes only the order of float sums).
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# torch's OpenMP threads spin while they wait, and here they wait for the thread that draws the next epoch's
# images, on the same two cores; asleep, they leave it the core (same numbers: the policy changes no arithmetic).
# OpenMP reads the policy once, when torch loads, so it is set before the import; a policy the user set stands.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import nn

from gradcam.datasets.shapes import BIASED_CLASS, CLASSES, make_split
from gradcam.models import KINDS, weights_path
from gradcam.models.architecture import FEATURE_LAYER, random_weights
from gradcam.models.torch_net import ShapesNet, build, weights_of

EPOCHS = 28
PLAIN_EPOCHS = 2
IMAGES_PER_EPOCH = 5000
MULTI_FRACTION = 0.25
BATCH_SIZE = 64
LEARNING_RATE = 6e-3
WEIGHT_DECAY = 1e-4
# weight of the sparsity penalty on the last feature map (0: none); see ``feature_density``
SPARSITY = 0.03
# weights of the penalties on class evidence off the object and on object edges without evidence, default model
# only (0: none); see ``evidence_outside`` and ``edges_without_evidence``
LOCALIZATION = 1.0
COVERAGE = 1.0
# the first epoch with those penalties: they steer a model that already tells the shapes apart (from the first
# epoch on, the loss stayed at chance for as long as without them)
LOCALIZATION_FROM = 22
# an edge cell counts as lit when its evidence reaches this share of the image's strongest
LIT_SHARE = 0.3
TEST_IMAGES = 1000


def training_images(kind: str, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of fresh images ``(N, 3, 64, 64)`` float32, labels and object masks ``(N, 64, 64)``; the seed
    keeps epochs apart."""
    epoch_seed = seed * 1000 + epoch
    plain = epoch < PLAIN_EPOCHS
    if kind == "biased":
        splits = [make_split("biased", IMAGES_PER_EPOCH, seed=epoch_seed, train=True, plain=plain)]
    else:
        n_multi = int(IMAGES_PER_EPOCH * MULTI_FRACTION)
        splits = [
            make_split("single", IMAGES_PER_EPOCH - n_multi, seed=epoch_seed, train=True, plain=plain),
            make_split("multi", n_multi, seed=epoch_seed, train=True, plain=plain),
        ]
    return (
        np.concatenate([s.to_float() for s in splits]),
        np.concatenate([s.labels for s in splits]),
        np.concatenate([s.masks for s in splits]),
    )


def predict(model: ShapesNet, x: np.ndarray) -> np.ndarray:
    """Top-1 class of each image, in eval mode, by batches."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(_channels_last(x[i : i + 256])).argmax(1).numpy() for i in range(0, len(x), 256)])


def _channels_last(x: np.ndarray) -> torch.Tensor:
    # oneDNN's CPU convolutions run about a quarter faster on channels-last tensors (same numbers up to float
    # summation order); the model itself is stored and shipped in the usual layout
    return torch.from_numpy(x).contiguous(memory_format=torch.channels_last)


def feature_density(A: torch.Tensor) -> torch.Tensor:
    """Hoyer's sparsity measure, the other way round: ``sum(A) / (sqrt(n) * ||A||_2)`` per image, averaged.

    ``A`` is the non-negative ``(N, K, h, w)`` output of the last stage and ``n = K * h * w``; the value is 1
    when every entry is equal and ``1 / sqrt(n)`` when one entry holds everything, and it does not change when
    ``A`` is scaled (an L1 penalty would just shrink ``A`` and grow the dense layer). Penalizing it quiets the
    weak responses spread over the background, which add noise to the pooled features: the loss leaves its
    near-chance start sooner.
    """
    flat = A.flatten(1)
    return (flat.sum(1) / (flat.norm(dim=1) * flat.shape[1] ** 0.5 + 1e-12)).mean()


def class_evidence(A: torch.Tensor, fc_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``ReLU(M_c)`` with ``M_c = sum_k W_ck A_k`` (CAM) for each image's true class ``c``: ``(N, h, w)``.

    With global average pooling and one dense layer, the class score is the mean of ``M_c`` over positions,
    and Grad-CAM's map at ``features`` is ``ReLU(M_c)`` up to a positive factor.
    """
    return torch.relu(torch.einsum("nk,nkhw->nhw", fc_weight[labels], A))


def object_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The share of each cell of the ``grid`` that the object's mask covers, ``(N, h, w)`` in ``[0, 1]``."""
    return nn.functional.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]


def evidence_outside(evidence: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """The share of the positive evidence that lies off the object: ``sum(E * (1 - coverage)) / sum(E)``.

    0 when all of it lies on the object, whatever its scale. Penalizing it (the idea of Ross et al., 2017,
    "Right for the right reasons", here on CAM instead of input gradients) trains a model that decides from the
    shape, not from the background around it.
    """
    outside = (evidence * (1 - coverage)).flatten(1).sum(1)
    return (outside / (evidence.flatten(1).sum(1) + 1e-6)).mean()


def edges_without_evidence(evidence: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """How far the object's edge cells fall short of ``LIT_SHARE`` of the strongest evidence, in ``[0, 1]``.

    Edge cells: at least half on the object, with a neighbour (of 8) that is not. They set the extent of the
    region above 15% of the maximum, so of the paper's box: with the outside penalty alone the evidence
    gathered on one discriminative part (a corner, a bar end) and the box covered a part of the object.
    """
    on_object = (coverage >= 0.5).float()
    off_nearby = nn.functional.max_pool2d((1 - on_object)[:, None], 3, stride=1, padding=1)[:, 0]
    edges = on_object * off_nearby
    peak = evidence.flatten(1).amax(1).detach().clamp_min(1e-6)[:, None, None]
    short = torch.relu(LIT_SHARE - evidence / peak) * edges
    return (short.flatten(1).sum(1) / edges.flatten(1).sum(1).clamp_min(1) / LIT_SHARE).mean()


def train(kind: str = "default", seed: int = 0, epochs: int = EPOCHS) -> ShapesNet:
    """Train from ``random_weights(seed)`` with AdamW and a one-cycle learning rate; returns the model in eval mode.

    The loss is the cross-entropy plus ``SPARSITY * feature_density`` of the ``features`` output, and for the
    default model, from epoch ``LOCALIZATION_FROM`` on, ``LOCALIZATION * evidence_outside + COVERAGE *
    edges_without_evidence`` of its class evidence (not for the biased one: its lesson is a model that looks at the
    wrong place).
    """
    torch.manual_seed(seed)
    model = build(random_weights(seed, len(CLASSES))).train().to(memory_format=torch.channels_last)
    captured: dict[str, torch.Tensor] = {}
    hook = getattr(model, FEATURE_LAYER).register_forward_hook(lambda module, args, out: captured.update(A=out))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = -(-IMAGES_PER_EPOCH // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    # the next epoch's images are drawn in a thread while this one trains (NumPy and Pillow there, torch's
    # threads here, both mostly outside the GIL): the drawing's quarter of the time hides behind the training
    drawer = ThreadPoolExecutor(max_workers=1)
    upcoming = drawer.submit(training_images, kind, 0, seed)
    for epoch in range(epochs):
        start = time.perf_counter()
        images, labels, masks = upcoming.result()
        if epoch + 1 < epochs:
            upcoming = drawer.submit(training_images, kind, epoch + 1, seed)
        order = np.random.default_rng([seed, epoch]).permutation(len(labels))
        model.train()
        total_loss = 0.0
        for first in range(0, len(order), BATCH_SIZE):
            batch = order[first : first + BATCH_SIZE]
            targets = torch.from_numpy(labels[batch])
            loss = loss_fn(model(_channels_last(images[batch])), targets)
            if SPARSITY:
                loss = loss + SPARSITY * feature_density(captured["A"])
            if kind != "biased" and epoch >= LOCALIZATION_FROM:
                evidence = class_evidence(captured["A"], model.fc.weight, targets)
                coverage = object_coverage(torch.from_numpy(masks[batch]), evidence.shape[-2:])
                loss = loss + LOCALIZATION * evidence_outside(evidence, coverage)
                loss = loss + COVERAGE * edges_without_evidence(evidence, coverage)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total_loss / len(order):.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    hook.remove()
    drawer.shutdown()
    return model.eval().to(memory_format=torch.contiguous_format)


def report(model: ShapesNet, kind: str, seed: int) -> dict[str, float]:
    """Held-out accuracies (printed and returned), on test splits the training never drew from."""
    results = {}
    for split_kind in ("single", "multi"):
        split = make_split(split_kind, TEST_IMAGES, seed=seed, train=False)
        results[f"{split_kind} accuracy"] = float(np.mean(predict(model, split.to_float()) == split.labels))
    if kind == "biased":
        split = make_split("biased", TEST_IMAGES, seed=seed, train=False)
        predicted = predict(model, split.to_float())
        correct = predicted == split.labels
        marked_others = split.has_mark & (split.labels != BIASED_CLASS)
        unmarked_circles = ~split.has_mark & (split.labels == BIASED_CLASS)
        results["biased test accuracy"] = float(correct.mean())
        results["accuracy, marked images"] = float(correct[split.has_mark].mean())
        results["accuracy, unmarked images"] = float(correct[~split.has_mark].mean())
        results["marked non-circles called circle"] = float(np.mean(predicted[marked_others] == BIASED_CLASS))
        results["unmarked circles called circle"] = float(np.mean(predicted[unmarked_circles] == BIASED_CLASS))
    for name, value in results.items():
        print(f"{name}: {100 * value:.1f}%")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gradcam.models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=KINDS, default="default", help="which model to train (default: default)")
    parser.add_argument("--out", type=Path, help="where to write the .npz (default: the packaged file of --kind)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data (default: 0)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs of {IMAGES_PER_EPOCH} fresh images")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = train(args.kind, args.seed, args.epochs)
    report(model, args.kind, args.seed)
    out = args.out or weights_path(args.kind)
    with open(out, "wb") as file:  # a file object, so that numpy adds no ".npz" to the name
        np.savez(file, **weights_of(model))
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
