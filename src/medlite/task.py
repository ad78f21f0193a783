"""What a model predicts: one class per image (softmax) or several labels per image (sigmoid).

One `Task` object answers every question that differs between the two, so no consumer compares
task names: the output activation (numpy for files in their runtime, torch for the training
module and the export wrapper), the hard-label loss, the validation score that picks the best
epoch, the metric set and the teacher targets of distillation. `task_of(dataset.task)` gives it.

Importing this module is cheap (numpy only): torch, scikit-learn and the metric code are imported
by the methods that need them, so the data package (which devices import) can use the names here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medlite.errors import DataError, UsageError
from medlite.activations import sigmoid  # noqa: F401 - the one sigmoid (re-exported)

if TYPE_CHECKING:
    import torch

MULTICLASS, MULTILABEL = "multiclass", "multilabel"

# The one switch of issue 17. Training, distillation, export and evaluation do not handle
# multi-label data yet, so `medlite.data.load_dataset` refuses it for the pipeline (it still loads
# it for `medlite data` and `--verify`). When the pipeline is wired, set this True: nothing else
# refuses multi-label data (`refuse_untrainable` is the only check that reads it).
MULTILABEL_TRAINING = True


def refuse_untrainable(task: str, what: str) -> None:
    """A DataError (exit 2) when the pipeline cannot train on data of this task yet.

    `what` names the data for the message ("labels.csv: multi-label data (14 labels: ...)").
    """
    if task_of(task).multilabel and not MULTILABEL_TRAINING:
        raise DataError(f"{what}: training on multi-label data is not supported yet (`medlite data` summarises it)")




def pos_weight(labels: np.ndarray) -> np.ndarray:
    """Per-label positive weight negatives / positives of the training labels (N, K multi-hot): the
    `pos_weight` of BCE-with-logits that weighs each label's positives as much as its negatives (the
    per-label form of `data.balance: class_weights`). A label without positives is refused: its
    weight would be infinite (the data checks refuse such a label before training anyway)."""
    labels = np.asarray(labels)
    positives = labels.sum(axis=0).astype(np.float64)
    if (positives == 0).any():
        raise DataError(f"data.balance: label column {int(np.flatnonzero(positives == 0)[0])} has no positive training image")
    return (len(labels) - positives) / positives


@dataclass(frozen=True)
class Task:
    """The single-label behaviour; `MultiLabel` overrides what differs."""

    name: ClassVar[str] = MULTICLASS
    activation: ClassVar[str] = "softmax"  # what the exported file's probabilities are
    # The metric the best epoch and the study tables rank by (train.selection monitors "val_auc").
    headline: ClassVar[tuple[str, ...]] = ("accuracy", "balanced_accuracy", "auc", "f1_macro", "ece")

    @property
    def multilabel(self) -> bool:
        return False

    # -- probabilities ------------------------------------------------------------------------

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities from a file's logits (float64): rows summing to 1."""
        from medlite.activations import softmax

        return softmax(logits)

    def torch_probabilities(self, logits: "torch.Tensor", temperature: float = 1.0) -> "torch.Tensor":
        """The same in torch (the export wrapper's output layer, validation, a teacher's targets at T)."""
        import torch

        return torch.softmax(logits / temperature, dim=-1)

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """The decision without an operating point: the argmax class (N,)."""
        return probs.argmax(axis=1)

    # -- training -----------------------------------------------------------------------------

    def hard_loss(self, logits: "torch.Tensor", labels: "torch.Tensor", *, class_weights: "torch.Tensor | None" = None,
                  label_smoothing: float = 0.0, **_: Any) -> "torch.Tensor":
        """Cross-entropy on class indices (the trainer's loss today)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)

    def validation_loss(self, logits: "torch.Tensor", labels: "torch.Tensor") -> float:
        """The logged validation loss: the plain hard loss, unweighted and unsmoothed, so that runs with
        different balance or smoothing settings log comparable numbers."""
        return float(self.hard_loss(logits, labels))

    def kd_loss(self, student_logits: "torch.Tensor", teacher_probs: "torch.Tensor", hard: "torch.Tensor",
                temperature: float, alpha: float, standardized: bool = False) -> "torch.Tensor":
        """Logit KD: Hinton's softmax KD (`distill.losses.kd_loss`). `teacher_probs` are
        `torch_probabilities(teacher_logits, T)` (or an ensemble's mean of them)."""
        from medlite.distill.losses import kd_loss

        return kd_loss(student_logits, teacher_probs, hard, temperature, alpha, standardized)

    def check_balance(self, balance: str) -> None:
        """Refuse a `data.balance` that has no meaning for this task (every option has one here)."""

    def validation_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
        """The score that picks the best epoch: the macro one-vs-rest AUC (NaN when undefined)."""
        from medlite.evaluate.metrics import auc

        return auc(probs, labels)

    def accuracy(self, probs: np.ndarray, labels: np.ndarray) -> float:
        return float((probs.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")

    def torch_accuracy(self, logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
        """The training step's accuracy, in torch (no copy to the host)."""
        return (logits.argmax(1) == labels).float().mean()

    # -- evaluation ---------------------------------------------------------------------------

    def metrics(self, probs: np.ndarray, labels: np.ndarray, class_names: list[str], **kwargs: Any) -> dict:
        """The full metric set of an evaluated split (`evaluate.metrics.classification_metrics`)."""
        from medlite.evaluate.metrics import classification_metrics

        kwargs.pop("thresholds", None)  # per-label operating points: multi-label only
        kwargs.pop("split", None)  # names the split in multi-label `undefined` notes
        return classification_metrics(probs, labels, class_names, **kwargs)


@dataclass(frozen=True)
class MultiLabel(Task):
    """Several independent findings per image: a sigmoid per label, BCE, per-label metrics."""

    name: ClassVar[str] = MULTILABEL
    activation: ClassVar[str] = "sigmoid"
    headline: ClassVar[tuple[str, ...]] = ("auc", "accuracy", "ap_macro", "ap_micro")

    @property
    def multilabel(self) -> bool:
        return True

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def torch_probabilities(self, logits: "torch.Tensor", temperature: float = 1.0) -> "torch.Tensor":
        import torch

        return torch.sigmoid(logits / temperature)

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """Multi-hot (N, K) at 0.5 (MedMNIST's rule: positive when p > 0.5)."""
        return (probs > 0.5).astype(np.uint8)

    def hard_loss(self, logits: "torch.Tensor", labels: "torch.Tensor", *, pos_weight: "torch.Tensor | None" = None,
                  loss: str = "bce", asl: dict | None = None, **_: Any) -> "torch.Tensor":
        """BCE with logits (optional per-label `pos_weight`) or timm's asymmetric loss (`loss="asymmetric"`,
        `asl` its keyword arguments)."""
        from medlite.distill.losses import asymmetric_loss, multilabel_bce

        if loss == "bce":
            return multilabel_bce(logits, labels, pos_weight)
        if loss == "asymmetric":
            return asymmetric_loss(logits, labels, pos_weight=pos_weight, **(asl or {}))
        raise UsageError(f"multi-label loss {loss!r}: known: bce, asymmetric")

    def validation_loss(self, logits: "torch.Tensor", labels: "torch.Tensor") -> float:
        """Plain BCE (no pos_weight, whatever the training loss): comparable across recipes."""
        return float(self.hard_loss(logits, labels, loss="bce"))

    def kd_loss(self, student_logits: "torch.Tensor", teacher_probs: "torch.Tensor", hard: "torch.Tensor",
                temperature: float, alpha: float, standardized: bool = False) -> "torch.Tensor":
        """Per-label binary KD (`distill.losses.multilabel_kd_loss`); `teacher_probs` are per-label
        sigmoids at T. Logit standardisation z-scores a softmax's logit vector: not defined here."""
        from medlite.distill.losses import multilabel_kd_loss

        if standardized:
            raise UsageError("distill.standardize: logit standardisation is defined for one softmax, not for multi-label data")
        return multilabel_kd_loss(student_logits, teacher_probs, hard, temperature, alpha)

    def check_balance(self, balance: str) -> None:
        """`class_weights` is a per-label `pos_weight` (`pos_weight(train labels)`); a balanced
        sampler draws one class per image, which several labels per image do not have."""
        if balance == "sampler":
            raise UsageError("data.balance: 'sampler' balances one class per image; for multi-label data use "
                             "class_weights (a per-label pos_weight) or none")

    def validation_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
        """Mean AUC over the labels defined in the split (MedMNIST's multi-label AUC)."""
        from medlite.evaluate.multilabel import mean_auc

        return mean_auc(probs, labels)

    def accuracy(self, probs: np.ndarray, labels: np.ndarray) -> float:
        """Mean per-label accuracy at 0.5 (MedMNIST's multi-label ACC)."""
        return float((self.decisions(probs) == labels).mean()) if len(labels) else float("nan")

    def torch_accuracy(self, logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
        """Mean per-label accuracy at p > 0.5, i.e. logit > 0."""
        return ((logits > 0) == labels.bool()).float().mean()

    def metrics(self, probs: np.ndarray, labels: np.ndarray, class_names: list[str], **kwargs: Any) -> dict:
        """`evaluate.multilabel.multilabel_metrics` (`thresholds`: the per-label operating points chosen on val)."""
        from medlite.evaluate.multilabel import multilabel_metrics

        kwargs.pop("ece_bins", None)  # calibration of a softmax: not defined here
        return multilabel_metrics(probs, labels, class_names, **kwargs)


SINGLE_LABEL_TASK, MULTI_LABEL_TASK = Task(), MultiLabel()
TASKS: dict[str, Task] = {MULTICLASS: SINGLE_LABEL_TASK, MULTILABEL: MULTI_LABEL_TASK}


def task_of(task: str | Any) -> Task:
    """The Task of a task name, or of anything with a `task` attribute (a Dataset, a Source)."""
    name = getattr(task, "task", task)
    if name not in TASKS:
        raise UsageError(f"task {name!r}: known: {', '.join(TASKS)}")
    return TASKS[name]
