"""The evaluation behind ``gradcam evaluate``: every method on the default model, scored by the papers' metrics
over held-out synthetic images (``gradcam.datasets``), and the biased model's doctor/nurse experiment.

Three held-out (test) splits:

``single``
    One object per image. The ground-truth class is explained. Localization, pointing game, energy in the box
    (Grad-CAM, Score-CAM), rank correlation with the occlusion map (Grad-CAM's faithfulness), average drop and
    increase in confidence (Grad-CAM++), deletion and insertion (RISE).
``multi``
    2-4 instances of one class: pointing game, energy in the instances' boxes (Grad-CAM++'s ``Loc``), the share
    of instances the map lights up, localization against the best-matching instance.
``biased``
    The model trained with a corner mark that always came with "circle", and the default model, on test images
    where the mark appears on a random half. On the marked images, the share of each map's energy on the mark:
    a model that learnt the shortcut looks at it (Grad-CAM paper, section 6.3, the doctor/nurse experiment).

The Grad-CAM paper's three other evaluations, on the same default model:

pointing game with recall (section 4.3)
    On the ``multi`` split: the classes among the top-5 predictions (all five classes here) whose probability
    reaches a rejection threshold are declared present; precision is the share of declared classes whose map
    points at an object of that class, recall the share of present classes declared and pointed at. The
    threshold is the one whose present/absent decisions score the best F1 on a validation split of another seed.
    The synthetic splits hold one class per image, so a declared class other than the true one is a miss
    whatever its map (no object of it to point at), and its map is not computed.
adversarial noise (section 6.2)
    Each ``single`` image is perturbed (``gradcam.attacks.pgd_absent``, L-infinity radius ``EPSILON``) until the
    model gives its true class a probability below ``STOP_PROBABILITY``; on the images where that is reached, the
    map for the true class: does it still point at the object, and how much of its energy stays on the object's
    mask, against the clean image.
weakly-supervised segmentation (section 4.2)
    Each map, thresholded at a share of its maximum, as a segment of the object: its IoU with the object's mask at
    each threshold of ``SEGMENTATION_THRESHOLDS``, the threshold chosen on a validation split of another seed and
    the IoU reported on the ``single`` test images at it.

Every value is a per-image (or per image-and-class) number; the summary is its mean with a 95% interval
(Student's t).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from gradcam import metrics
from gradcam.api import method_class
from gradcam.attacks import pgd_absent, softmax
from gradcam.backends import get_backend
from gradcam.datasets import BIASED_CLASS, make_split
from gradcam.datasets.shapes import ShapesSplit
from gradcam.explanation import Explanation
from gradcam.models import BACKENDS, FEATURE_LAYER, default_model

# The default model normalizes with mean 0.5: a grey of 0.5 is "no signal" to it, so removed or occluded
# pixels take that value.
BASELINE = 0.5
OCCLUSION_WINDOW, OCCLUSION_STRIDE = 8, 4
# The pointing game's tolerance: Zhang et al. allow 15 pixels on PASCAL VOC images of about 500 pixels, 3% of
# the side, which is 2 pixels of these 64. It also absorbs the half-cell quantisation of an 8x8 layer: the
# maximum of a bilinearly upsampled map always falls on a cell centre, which for a small object can sit a pixel
# or two past its edge.
POINTING_TOLERANCE = 2
# Validation splits (the rejection threshold, the segmentation threshold) use the test seed plus this.
VALIDATION_SEED_OFFSET = 1
# The pointing game with recall: maps for the top-5 predictions (Grad-CAM 4.3), the rejection thresholds tried.
TOP_CLASSES = 5
REJECTION_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The attack: 8/255 per pixel and channel is the usual L-infinity budget of ImageNet attacks (Madry et al.),
# small enough that the shapes, drawn at least 110 RGB units from their background, stay plainly visible.
EPSILON, STEP_SIZE, ATTACK_STEPS = 8 / 255, 2 / 255, 20
STOP_PROBABILITY = 1e-3
SEGMENTATION_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The methods evaluated by default, those of the tables in docs/evaluation and the README; the later ones
# (Eigen-Grad-CAM, KPCA-CAM, FEM, Finer-CAM, saliency, SmoothGrad, SS-CAM, IS-CAM) are evaluated when named.
EVALUATED_METHODS = (
    "gradcam", "gradcam++", "smoothgradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "cam",
    "guided-backprop", "deconvnet", "guided-gradcam", "scorecam", "ablationcam", "occlusion",
)


@dataclass(frozen=True)
class Metric:
    """One column of the report: its key, heading, whether higher is better, and what it measures."""

    key: str
    heading: str
    higher_is_better: bool
    meaning: str


METRICS: dict[str, tuple[Metric, ...]] = {
    "single": (
        Metric("localization", "loc. acc.", True, "IoU >= 0.5 of the 15%-threshold box (Grad-CAM 4.1)"),
        Metric("iou", "loc. IoU", True, "IoU of that box with the object's box"),
        Metric(
            "pointing",
            "pointing",
            True,
            f"the map's maximum lies within {POINTING_TOLERANCE} px of the box (Grad-CAM 4.3)",
        ),
        Metric("energy", "energy", True, "share of the map's sum inside the box (Score-CAM)"),
        Metric("faithfulness", "rank corr.", True, "Spearman correlation with the occlusion map (Grad-CAM 5.3)"),
        Metric("average_drop", "avg. drop", False, "max(0, Y - O) / Y on image * map (Grad-CAM++)"),
        Metric("increase", "incr. conf.", True, "O > Y on image * map (Grad-CAM++)"),
        Metric("deletion", "deletion", False, "area under the probability as top pixels are removed (RISE)"),
        Metric("insertion", "insertion", True, "area under the probability as top pixels are put in (RISE)"),
    ),
    "multi": (
        Metric(
            "pointing",
            "pointing",
            True,
            f"the maximum lies within {POINTING_TOLERANCE} px of one of the instances' boxes",
        ),
        Metric("energy", "energy", True, "share of the map's sum inside the instances' boxes (Grad-CAM++ Loc)"),
        Metric("coverage", "instances lit", True, "share of instances where the map reaches half its maximum"),
        Metric("iou", "loc. IoU", True, "IoU of the 15%-threshold box with the best-matching instance"),
    ),
}


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate: ``images`` per split, the framework of the default model, the methods, the RISE steps."""

    # 100 per split keeps the whole command, the validation and adversarial passes included, well under 10
    # minutes on 2 cores; the 95% interval of a share near 0.9 is then about +-0.06
    images: int = 100
    backend: str = "torch"
    methods: tuple[str, ...] = EVALUATED_METHODS
    steps: int = 16
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.images < 2:
            raise ValueError(f"evaluate needs at least 2 images per split for an interval, got {self.images}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be at least 1, got {self.steps} and {self.batch_size}")
        object.__setattr__(self, "methods", tuple(method_class(name).name for name in self.methods))


@dataclass(frozen=True)
class Summary:
    """The mean of per-image values with the half-width of its 95% interval, over ``n`` images."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        values = np.asarray(list(values), dtype=np.float64)
        n = values.size
        if n == 0:
            return cls(float("nan"), float("nan"), 0)
        spread = values.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
        half = float(stats.t.ppf(0.975, n - 1) * spread) if n > 1 else float("nan")
        return cls(float(values.mean()), half, n)


@dataclass
class BiasReport:
    """The doctor/nurse experiment: per model kind, the mark's share of each method's map energy on marked
    images, and how the model behaves on marked and unmarked images."""

    mark_box: tuple[int, int, int, int]
    mark_share: float  # the mark's area over the image's
    # "biased", "default", and "shortcut": the biased model on the marked images of other classes that it
    # calls "circle" -> method -> summary
    energy_on_mark: dict[str, dict[str, Summary]] = field(default_factory=dict)
    accuracy_unmarked: dict[str, float] = field(default_factory=dict)
    circle_share_marked_others: dict[str, float] = field(default_factory=dict)
    marked_images: int = 0


@dataclass
class PointingReport:
    """The pointing game with recall on the several-instances split: per method, ``"precision"`` (over the
    declared (image, class) pairs) and ``"recall"`` (over the present ones)."""

    threshold: float  # the rejection threshold chosen on the validation split
    thresholds: tuple[float, ...]  # those it was chosen from
    top: int  # how many top predictions were candidates
    validation_images: int
    declared_per_image: float  # classes declared present per test image
    scores: dict[str, dict[str, Summary]] = field(default_factory=dict)


@dataclass
class AdversarialReport:
    """The adversarial images: how the attack went, and per method the true class's map on the images where it
    succeeded, clean and adversarial (``"pointing_clean"``, ``"pointing_adversarial"``, ``"energy_clean"``,
    ``"energy_adversarial"``, and the paired ``"energy_drop"`` = clean - adversarial)."""

    epsilon: float
    step_size: float
    steps: int
    stop_probability: float
    attacked: int
    reached: int
    mean_steps: float  # gradient steps the successful images took, on average
    accuracy: float  # the model's accuracy on all the perturbed images
    scores: dict[str, dict[str, Summary]] = field(default_factory=dict)


@dataclass
class SegmentationReport:
    """Maps as segments: per method the threshold chosen on the validation split, the test IoU at it, and the
    mean test IoU at every threshold."""

    thresholds: tuple[float, ...]
    validation_images: int
    best: dict[str, float] = field(default_factory=dict)
    iou: dict[str, Summary] = field(default_factory=dict)
    iou_by_threshold: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """Everything ``gradcam evaluate`` reports."""

    config: EvaluationConfig
    scores: dict[str, dict[str, dict[str, Summary]]]  # split -> method -> metric -> summary
    seconds_per_image: dict[str, float]  # method -> seconds per image (one-object split)
    accuracy: dict[str, float]  # split -> the default model's accuracy
    bias: BiasReport
    pointing: PointingReport
    adversarial: AdversarialReport
    segmentation: SegmentationReport
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    config: EvaluationConfig = EvaluationConfig(), progress: Callable[[str], None] | None = None
) -> EvaluationResult:
    """Run every configured method on the three held-out splits and score it; ``progress`` hears each step."""
    start = time.perf_counter()
    report = progress or (lambda message: None)
    model = default_model(config.backend)
    single = make_split("single", config.images, seed=config.seed, train=False)
    x_single = _layout(single, config.backend)
    # occlusion always runs here: it is the faithfulness reference
    names = dict.fromkeys([*config.methods, "occlusion"])
    maps_single, raw, seconds_per_image = _explain_all(model, x_single, single.labels, names, config, report, "single")
    scores = {"single": _score_single(model, x_single, single, maps_single, raw["occlusion"], config, report)}
    multi = make_split("multi", config.images, seed=config.seed, train=False)
    x_multi = _layout(multi, config.backend)
    maps_multi, _, _ = _explain_all(model, x_multi, multi.labels, config.methods, config, report, "multi")
    scores["multi"] = {name: _score_multi(multi, maps_multi[name]) for name in config.methods}
    accuracy = {"single": _accuracy(model, x_single, single.labels, config)}
    accuracy["multi"] = _accuracy(model, x_multi, multi.labels, config)
    return EvaluationResult(
        config,
        scores,
        seconds_per_image,
        accuracy,
        bias=_bias_experiment(model, config, report),
        pointing=_pointing_with_recall(model, x_multi, multi, maps_multi, config),
        adversarial=_adversarial(model, x_single, single, maps_single, config, report),
        segmentation=_segmentation(model, single, maps_single, config, report),
        seconds=time.perf_counter() - start,
    )


def heatmaps(ex: Explanation) -> np.ndarray:
    """The ``(N, H, W)`` map in [0, 1] that the metrics score (pixel-space methods: the largest |gradient|)."""
    return ex.heatmaps().astype(np.float64)


def build_method(name: str, model: Any, batch_size: int) -> Any:
    """The method ``name`` set up for the default model (its layer, its dense layer for CAM, the grey baseline)."""
    cls = method_class(name)
    options: dict[str, Any] = {}
    if cls.takes_layer:
        options["layer"] = FEATURE_LAYER
    if name == "cam":
        options["fc_layer"] = "fc"
    if name in ("scorecam", "ablationcam", "sscam", "iscam"):
        options["batch_size"] = batch_size
    if name == "occlusion":
        options.update(window=OCCLUSION_WINDOW, stride=OCCLUSION_STRIDE, baseline=BASELINE, batch_size=batch_size)
    return cls(model, **options)


def _layout(split: ShapesSplit, backend: str) -> np.ndarray:
    return split.to_float(channels_first=backend in ("torch", "pytorch"))


def _accuracy(model: Any, x: np.ndarray, labels: np.ndarray, config: EvaluationConfig) -> float:
    return _share(_predict(model, x, config).argmax(axis=1) == labels)


def _predict(model: Any, x: np.ndarray, config: EvaluationConfig) -> np.ndarray:
    return get_backend(model).predict(model, x, batch_size=config.batch_size)


def _explain_all(
    model: Any,
    x: np.ndarray,
    targets: np.ndarray | None,
    names: Iterable[str],
    config: EvaluationConfig,
    report: Callable[[str], None],
    label: str,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """Each method's heat maps and raw maps of ``x`` (explained ``batch_size`` images at a time), and its
    seconds per image."""
    maps, raw, seconds = {}, {}, {}
    for name in names:
        report(f"{label}: {name}")
        method = build_method(name, model, config.batch_size)
        start = time.perf_counter()
        parts = [
            method(x[i : i + config.batch_size], target=None if targets is None else targets[i : i + config.batch_size])
            for i in range(0, len(x), config.batch_size)
        ]
        seconds[name] = (time.perf_counter() - start) / len(x)
        maps[name] = np.concatenate([heatmaps(ex) for ex in parts])
        if parts[0].raw is not None:
            raw[name] = np.concatenate([ex.raw for ex in parts])
    return maps, raw, seconds


def _score_single(
    model: Any,
    x: np.ndarray,
    split: ShapesSplit,
    maps_by_method: dict[str, np.ndarray],
    occlusion: np.ndarray,
    config: EvaluationConfig,
    report: Callable[[str], None],
) -> dict[str, dict[str, Summary]]:
    common = dict(target=split.labels, batch_size=config.batch_size)
    curve = dict(common, steps=config.steps, baseline=BASELINE)
    scored = {}
    for name in config.methods:
        report(f"single: scoring {name}")
        maps = maps_by_method[name]
        iou = metrics.localization_iou(maps, split.boxes)
        values = {
            "localization": iou >= metrics.localization.CORRECT_IOU,
            "iou": iou,
            "pointing": metrics.pointing_game(maps, split.boxes, tolerance=POINTING_TOLERANCE),
            "energy": metrics.energy_pointing_game(maps, split.boxes),
            "faithfulness": metrics.rank_correlation(maps, occlusion),
            "average_drop": metrics.average_drop(model, x, maps, **common),
            "increase": metrics.increase_in_confidence(model, x, maps, **common),
            "deletion": metrics.deletion_auc(model, x, maps, **curve),
            "insertion": metrics.insertion_auc(model, x, maps, **curve),
        }
        scored[name] = {key: Summary.of(v) for key, v in values.items()}
    return scored


def _score_multi(split: ShapesSplit, maps: np.ndarray) -> dict[str, Summary]:
    values = {
        "pointing": metrics.pointing_game(maps, split.boxes, tolerance=POINTING_TOLERANCE),
        "energy": metrics.energy_pointing_game(maps, split.boxes),
        "coverage": metrics.instance_coverage(maps, split.boxes),
        "iou": metrics.localization_iou(maps, split.boxes),
    }
    return {key: Summary.of(v) for key, v in values.items()}


def _bias_experiment(default: Any, config: EvaluationConfig, report: Callable[[str], None]) -> BiasReport:
    split = make_split("biased", config.images, seed=config.seed, train=False)
    x = _layout(split, config.backend)
    marked = split.has_mark
    x0, y0, x1, y1 = split.mark_box
    mark_share = (x1 - x0) * (y1 - y0) / split.masks[0].size
    result = BiasReport(mark_box=split.mark_box, mark_share=mark_share, marked_images=int(marked.sum()))
    others = marked & (split.labels != BIASED_CLASS)
    for kind, model in (("biased", default_model(config.backend, kind="biased")), ("default", default)):
        predicted = _predict(model, x, config).argmax(axis=1)
        result.accuracy_unmarked[kind] = _share(predicted[~marked] == split.labels[~marked])
        result.circle_share_marked_others[kind] = _share(predicted[others] == BIASED_CLASS)
        energy = {name: np.zeros(0) for name in config.methods}
        if marked.any():
            # the model's own decision is explained (top-1), as in the paper's experiment
            maps, _, _ = _explain_all(model, x[marked], None, config.methods, config, report, f"biased, {kind} model")
            boxes = [split.mark_box] * result.marked_images
            energy = {name: metrics.energy_pointing_game(m, boxes) for name, m in maps.items()}
        result.energy_on_mark[kind] = {name: Summary.of(values) for name, values in energy.items()}
        if kind == "biased":
            shortcut = (predicted == BIASED_CLASS)[marked] & (split.labels != BIASED_CLASS)[marked]
            result.energy_on_mark["shortcut"] = {name: Summary.of(v[shortcut]) for name, v in energy.items()}
    return result


def _pointing_with_recall(
    model: Any, x: np.ndarray, split: ShapesSplit, maps_by_method: dict[str, np.ndarray], config: EvaluationConfig
) -> PointingReport:
    """Precision and recall of the pointing game over the top-5 predictions with the rejection option. The maps
    for the true classes are those of the several-instances table; a declared class with no object in the image
    is a miss whatever its map, so that map is not computed."""
    validation = make_split("multi", config.images, seed=config.seed + VALIDATION_SEED_OFFSET, train=False)
    validation_p = softmax(_predict(model, _layout(validation, config.backend), config))
    threshold = metrics.best_rejection_threshold(
        validation_p, _one_hot(validation.labels, validation_p.shape[1]), REJECTION_THRESHOLDS, TOP_CLASSES
    )
    p = softmax(_predict(model, x, config))
    present = _one_hot(split.labels, p.shape[1])
    declared = metrics.declared_present(p, threshold, TOP_CLASSES)
    top = min(TOP_CLASSES, p.shape[1])
    result = PointingReport(
        threshold, REJECTION_THRESHOLDS, top, len(validation.labels), float(declared.sum(axis=1).mean())
    )
    for name in config.methods:
        hits = present & metrics.pointing_game(maps_by_method[name], split.boxes, tolerance=POINTING_TOLERANCE)[:, None]
        precision, recall = metrics.pointing_precision_recall(declared, present, hits)
        result.scores[name] = {"precision": Summary.of(precision), "recall": Summary.of(recall)}
    return result


def _adversarial(
    model: Any,
    x: np.ndarray,
    split: ShapesSplit,
    maps_by_method: dict[str, np.ndarray],
    config: EvaluationConfig,
    report: Callable[[str], None],
) -> AdversarialReport:
    """The true class's maps on the images the attack made the model certain of its absence, against the clean
    maps of the same images (those of the one-object table)."""
    report("adversarial: attack")
    attack = pgd_absent(
        model, x, split.labels, EPSILON, STEP_SIZE, ATTACK_STEPS, STOP_PROBABILITY, batch_size=config.batch_size
    )
    reached = attack.reached
    result = AdversarialReport(
        EPSILON, STEP_SIZE, ATTACK_STEPS, STOP_PROBABILITY, len(x), int(reached.sum()),
        float(attack.steps[reached].mean()) if reached.any() else float("nan"),
        _accuracy(model, attack.images, split.labels, config),
    )
    empty = np.zeros(0)
    maps = dict.fromkeys(config.methods, None)
    if reached.any():
        maps, _, _ = _explain_all(
            model, attack.images[reached], split.labels[reached], config.methods, config, report, "adversarial"
        )
    boxes = [box for box, kept in zip(split.boxes, reached, strict=True) if kept]
    masks = split.masks[reached]
    for name in config.methods:
        values = dict.fromkeys(("pointing_clean", "pointing_adversarial", "energy_clean", "energy_adversarial"), empty)
        if maps[name] is not None:
            clean = maps_by_method[name][reached]
            values = {
                "pointing_clean": metrics.pointing_game(clean, boxes, tolerance=POINTING_TOLERANCE),
                "pointing_adversarial": metrics.pointing_game(maps[name], boxes, tolerance=POINTING_TOLERANCE),
                "energy_clean": metrics.mask_energy(clean, masks),
                "energy_adversarial": metrics.mask_energy(maps[name], masks),
            }
        values["energy_drop"] = np.asarray(values["energy_clean"]) - np.asarray(values["energy_adversarial"])
        result.scores[name] = {key: Summary.of(v) for key, v in values.items()}
    return result


def _segmentation(
    model: Any,
    split: ShapesSplit,
    maps_by_method: dict[str, np.ndarray],
    config: EvaluationConfig,
    report: Callable[[str], None],
) -> SegmentationReport:
    """Each method's segmentation threshold chosen on a validation split of another seed (half as many images:
    the best of nine thresholds on smooth IoU curves needs fewer than a table's intervals), its IoU on the test
    images of the one-object table."""
    validation = make_split(
        "single", max(2, config.images // 2), seed=config.seed + VALIDATION_SEED_OFFSET, train=False
    )
    x = _layout(validation, config.backend)
    maps, _, _ = _explain_all(model, x, validation.labels, config.methods, config, report, "segmentation validation")
    result = SegmentationReport(SEGMENTATION_THRESHOLDS, len(validation.labels))
    for name in config.methods:
        best = metrics.best_threshold(
            SEGMENTATION_THRESHOLDS, metrics.iou_by_threshold(maps[name], validation.masks, SEGMENTATION_THRESHOLDS)
        )
        test = metrics.iou_by_threshold(maps_by_method[name], split.masks, SEGMENTATION_THRESHOLDS)
        result.best[name] = best
        result.iou[name] = Summary.of(test[SEGMENTATION_THRESHOLDS.index(best)])
        result.iou_by_threshold[name] = [float(v) for v in test.mean(axis=1)]
    return result


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.arange(classes)[None, :] == np.asarray(labels)[:, None]


def _share(hits: np.ndarray) -> float:
    """The share of True values; NaN when there are none to count."""
    return float(np.mean(hits)) if hits.size else float("nan")
