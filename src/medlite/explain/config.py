"""The recipe's `explain:` section. pydantic only: `medlite.recipe` imports this module."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OcclusionConfig(_Strict):
    window: int | None = Field(None, ge=1, description="square patch side in pixels; default: image size / 7")
    # Non-overlapping by default: 49 windows at any image size keeps the default run's explain stage
    # (15 variants, int8 ones included) well under a minute on 2 cores; half the window is smoother.
    stride: int | None = Field(None, ge=1, description="default: the window (a non-overlapping grid)")


class LimeConfig(_Strict):
    samples: int = Field(200, ge=10, description="perturbed images per explained image")
    cell: int | None = Field(None, ge=1, description="side of the square superpixels; default: image size / 7")


class ExplainConfig(_Strict):
    enabled: bool = True
    methods: list[str] = Field(
        default_factory=lambda: ["gradcam", "occlusion"],
        description="gradient methods run on variants that have a PyTorch module; black-box ones on every deployed file",
    )
    images_per_class: int = Field(3, ge=1, le=100, description="test images explained per class (the same for every variant)")
    variants: list[str] | None = Field(None, description="variants to explain; default: all")
    label: str | None = Field(None, description="multi-label data: the label every map explains (images with that "
                              "finding); default: per image, the label the variants give the highest mean probability")
    steps: int = Field(16, ge=2, le=1000, description="deletion/insertion curve points")
    top_fraction: float = Field(0.2, gt=0, lt=1, description="share of pixels in the region IoU")
    min_cam_size: int = Field(4, ge=1, description="CAM layer: the deepest feature stage at least this many pixels wide")
    occlusion: OcclusionConfig = OcclusionConfig()
    lime: LimeConfig = LimeConfig()

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: list[str]) -> list[str]:
        import difflib

        # The registry is the list: its module imports numpy but not torch (methods load torch when they run).
        from medlite.explain.registry import registered

        known = registered()
        for method in methods:
            if method not in known:
                hint = difflib.get_close_matches(method, known, n=1)
                raise ValueError(
                    f"unknown method {method!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else f"; choose from {', '.join(known)}")
                )
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods
