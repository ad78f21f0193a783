"""Recipe schema of the distillation methods: one pydantic model per method, chosen by `method`.

Light on purpose (pydantic only, no torch): `medlite.recipe` imports `DistillConfig` from here,
so validating a recipe never loads a deep-learning library. The method classes that compute the
losses live in `medlite.distill.methods` and are registered under the same names.

Adding a method = a config model here (added to `CONFIGS`) + a class in `methods.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


class MethodConfig(BaseModel):
    """Keys every method shares. Unknown keys are errors (a typo never falls back to a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    method: str
    scratch_baseline: bool = Field(
        True, description="also train the student without a teacher: the fair baseline (live augmentation, same budget)")
    scratch_bank_control: bool = Field(
        False, description="also train it without a teacher on the teacher bank's fixed views (`student_scratch_bank`): "
        "a control for the views, never the headline baseline")
    teacher_weights: list[float] | None = Field(
        None, description="weights of the teachers (recipe `teachers:`) in their ensemble; default: equal"
    )
    views: Literal["live", "bank"] | None = Field(
        None, description="what the teacher sees: `live` = the identical freshly augmented view the student sees at "
        "every step (function matching, Beyer et al. CVPR 2022); `bank` = a few fixed augmented views computed once "
        "(cheap). Default: bank for logit methods; feature methods always run live")
    mixup: float = Field(
        0.0, ge=0, le=10, description="mixup's Beta(alpha, alpha) on every batch, for teacher and student alike (0 = off); "
        "the scratch baseline gets the same mixup. Needs views: live when distilling (a bank's logits are of unmixed views)")

    @field_validator("teacher_weights")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or min(value) < 0 or sum(value) <= 0):
            raise ValueError("teacher weights must be non-negative with a positive sum")
        return value

    # What the method needs from the teacher(s): logits only (a cached bank is enough) or features
    # (the teacher runs live). A class fact, not a recipe key.
    uses_teacher_features: ClassVar[bool] = False

    # Whether the loss reads one hard label per image beyond `hard_loss` (DKD's target-class split):
    # such a method cannot take mixup's two labels per image.
    uses_labels: ClassVar[bool] = False

    def student_arch(self, arch: str) -> str:
        """The architecture the distilled student is built as (a method may wrap it, e.g. with exits)."""
        return arch

    @property
    def resolved_views(self) -> str:
        """`live` or `bank`: what this method's teacher sees when `views` is left to its default."""
        if type(self).uses_teacher_features:
            return "live"
        return self.views or "bank"

    @model_validator(mode="after")
    def _views_fit_method(self) -> "MethodConfig":
        if type(self).uses_teacher_features and self.views == "bank":
            raise ValueError(f"{self.method} distils the teacher's features, which a bank of logits does not hold; "
                             "use views: live (its default)")
        if self.mixup and self.resolved_views == "bank":
            raise ValueError("mixup needs views: live: the bank holds the teacher's logits on unmixed views")
        if self.mixup and type(self).uses_labels:
            raise ValueError(f"{self.method} splits the loss on each image's one label; mixup gives each image two")
        return self


class _LogitConfig(MethodConfig):
    temperature: float = Field(4.0, gt=0, le=100, description="softening temperature of both distributions")
    standardize: bool = Field(
        False, description="logit standardisation (Sun et al., CVPR 2024): z-score each logit vector before softening"
    )


class KDConfig(_LogitConfig):
    """Hinton et al. 2015: soft targets at temperature T plus the labels."""

    method: Literal["kd"] = "kd"
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the distillation term (1 - alpha on the labels)")


class DKDConfig(_LogitConfig):
    """Decoupled KD (Zhao et al., CVPR 2022): target (TCKD) and non-target (NCKD) terms weighted apart."""

    method: Literal["dkd"] = "dkd"
    alpha: float = Field(1.0, ge=0, description="weight of TCKD (target-class KD)")
    beta: float = Field(8.0, ge=0, description="weight of NCKD (non-target-class KD)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the label cross-entropy")
    warmup_epochs: int = Field(5, ge=0, description="the KD terms ramp up linearly over these epochs")
    uses_labels: ClassVar[bool] = True


class DISTConfig(_LogitConfig):
    """DIST (Huang et al., NeurIPS 2022): match inter- and intra-class Pearson relations."""

    method: Literal["dist"] = "dist"
    temperature: float = Field(1.0, gt=0, le=100)
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation (per image, across classes)")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation (per class, across the batch)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the label cross-entropy")


class FitNetConfig(MethodConfig):
    """FitNets (Romero et al., ICLR 2015): regress a teacher feature map from a student one (a hint)."""

    method: Literal["fitnet"] = "fitnet"
    student_tap: str | None = Field(None, description="student module path; default: its middle stage")
    teacher_tap: str | None = Field(None, description="teacher module path; default: its middle stage")
    hint_weight: float = Field(1.0, ge=0, description="weight of the hint (MSE) term")
    kd_weight: float = Field(0.0, ge=0, description="optional Hinton KD term on the logits as well")
    temperature: float = Field(4.0, gt=0, le=100)
    uses_teacher_features: ClassVar[bool] = True


class ATConfig(MethodConfig):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial attention maps."""

    method: Literal["at"] = "at"
    student_taps: list[str] | None = Field(None, description="student module paths; default: every stage")
    teacher_taps: list[str] | None = Field(None, description="teacher module paths, paired in order; default: every stage")
    beta: float = Field(1000.0, ge=0, description="weight of the attention term (the paper's beta = 1000)")
    p: float = Field(2.0, gt=0, description="attention map = mean over channels of |A|^p")
    uses_teacher_features: ClassVar[bool] = True


class MultiStageConfig(MethodConfig):
    """Multi-stage distillation: exits on the student's stages, each supervised by the teacher's logits,
    and the stages' pooled features fused before the final classifier (kept in the deployed model)."""

    method: Literal["multistage"] = "multistage"
    exits: list[str] | None = Field(None, description="student stages with an exit; default: every stage but the last")
    temperature: float = Field(4.0, gt=0, le=100)
    intermediate_weight: float = Field(0.3, ge=0, description="weight of the exits' distillation (shared equally)")
    logits_weight: float = Field(0.3, ge=0, description="weight of the final logits' distillation")
    labels_weight: float = Field(0.4, ge=0, description="weight of the label cross-entropy")
    exit_labels: bool = Field(False, description="also train each exit on the labels (within the intermediate weight)")

    def student_arch(self, arch: str) -> str:
        from medlite.models.registry import fused_arch  # light (no torch); local: the recipe schema must not load the model registry

        return fused_arch(arch)


class SPConfig(MethodConfig):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): match the batch's pairwise similarity matrices."""

    method: Literal["sp"] = "sp"
    student_taps: list[str] | None = Field(None, description="student module paths; default: its last stage")
    teacher_taps: list[str] | None = Field(None, description="teacher module paths, paired in order; default: its last stage")
    gamma: float = Field(3000.0, ge=0, description="weight of the similarity term (the paper's gamma = 3000)")
    uses_teacher_features: ClassVar[bool] = True


# The registry of configs by method name; methods.py registers a class under each of these names.
CONFIGS: dict[str, type[MethodConfig]] = {
    c.model_fields["method"].default: c
    for c in (KDConfig, DKDConfig, DISTConfig, FitNetConfig, ATConfig, MultiStageConfig, SPConfig)
}
DEFAULT_METHOD = "kd"


def _method_of(value: Any) -> str | None:
    """The discriminator: `method`, defaulting to kd so recipes written before the registry still load."""
    if isinstance(value, dict):
        return value.get("method", DEFAULT_METHOD)
    return getattr(value, "method", None)


DistillConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in CONFIGS.items())],  # type: ignore[valid-type]
    Discriminator(_method_of),
]
