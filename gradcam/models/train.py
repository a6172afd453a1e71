"""Train the embedded model on the synthetic shapes (PyTorch, CPU) and write its weights as ``.npz``.

    python -m gradcam.models.train                      # default model -> gradcam/models/default.npz
    python -m gradcam.models.train --kind biased        # biased model  -> gradcam/models/biased.npz

``default`` trains on one-object images with a quarter of multi-instance images mixed in (so the
bundled multi-instance sample is classified too); ``biased`` trains on the biased split, where a
corner mark is on every "circle" image and on no other. Fresh images are drawn every epoch (the
generator is cheap), so the model never sees an image twice. Held-out accuracy is printed on
test splits (``train=False``: images never used in training); for the biased model also how
often a mark on a non-circle image turns the prediction into "circle". One run takes about 5 minutes
on 2 CPU cores (the packaged files were made with the default ``--threads 2``; the thread count changes
only the order of float sums).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradcam.datasets.shapes import BIASED_CLASS, CLASSES, make_split
from gradcam.models import KINDS, weights_path
from gradcam.models.architecture import random_weights
from gradcam.models.torch_net import ShapesNet, build, weights_of

EPOCHS = 16
IMAGES_PER_EPOCH = 5000
MULTI_FRACTION = 0.25
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
TEST_IMAGES = 1000


def training_images(kind: str, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of fresh images ``(N, 3, 64, 64)`` float32 and labels; the seed keeps epochs apart."""
    epoch_seed = seed * 1000 + epoch
    if kind == "biased":
        splits = [make_split("biased", IMAGES_PER_EPOCH, seed=epoch_seed, train=True)]
    else:
        n_multi = int(IMAGES_PER_EPOCH * MULTI_FRACTION)
        splits = [
            make_split("single", IMAGES_PER_EPOCH - n_multi, seed=epoch_seed, train=True),
            make_split("multi", n_multi, seed=epoch_seed, train=True),
        ]
    return np.concatenate([s.to_float() for s in splits]), np.concatenate([s.labels for s in splits])


def predict(model: ShapesNet, x: np.ndarray) -> np.ndarray:
    """Top-1 class of each image, in eval mode, by batches."""
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(x[i : i + 256])).argmax(1).numpy() for i in range(0, len(x), 256)]
        )


def train(kind: str = "default", seed: int = 0, epochs: int = EPOCHS) -> ShapesNet:
    """Train from ``random_weights(seed)`` with AdamW and a one-cycle learning rate; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = build(random_weights(seed, len(CLASSES))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = -(-IMAGES_PER_EPOCH // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        start = time.perf_counter()
        images, labels = training_images(kind, epoch, seed)
        order = np.random.default_rng([seed, epoch]).permutation(len(labels))
        model.train()
        total_loss = 0.0
        for first in range(0, len(order), BATCH_SIZE):
            batch = order[first : first + BATCH_SIZE]
            loss = loss_fn(model(torch.from_numpy(images[batch])), torch.from_numpy(labels[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total_loss / len(order):.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return model.eval()


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
