"""The recipe's distill section: one config per method (a discriminated union on `method`), teachers, assistants."""

from __future__ import annotations

import pytest
import yaml

from medlite.errors import UsageError
from medlite.recipe import Recipe, dump_recipe, load_recipe


def test_recipes_written_before_the_registry_still_load_as_kd():
    recipe = load_recipe("breastmnist")
    assert recipe.distill.method == "kd" and recipe.distill.temperature == 4.0 and recipe.distill.alpha == 0.7
    assert recipe.distill.scratch_baseline is True
    assert Recipe.model_validate({"distill": {"alpha": 0.5}}).distill.method == "kd"


def test_each_method_has_its_own_keys_and_defaults():
    dkd = load_recipe("breastmnist", ["distill={method: dkd}"]).distill
    assert (dkd.alpha, dkd.beta, dkd.warmup_epochs) == (1.0, 8.0, 5)
    ms = load_recipe("breastmnist", ["distill={method: multistage}"]).distill
    assert (ms.intermediate_weight, ms.logits_weight, ms.labels_weight) == (0.3, 0.3, 0.4)
    assert ms.student_arch("medlite_dsconv") == "fused(medlite_dsconv)"
    assert load_recipe("breastmnist", ["distill={method: kd, standardize: true}"]).distill.standardize


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("distill={method: kd, beta: 8}", "unknown key 'distill.beta'"),  # a DKD key is not a KD key
        ("distill={method: fitnet, temperatur: 2}", "unknown key 'distill.temperatur'"),
        ("distill.method=dkdd", "unknown method 'dkdd' (did you mean 'dkd'?)"),
        ("distill.method=hinton", "choose from"),
        ("distill={method: at, beta: -1}", "distill.beta"),
        ("distill.teacher_weights=[0, 0]", "distill.teacher_weights"),
    ],
)
def test_bad_distill_sections_name_the_key(override, fragment):
    with pytest.raises(UsageError) as info:
        load_recipe("breastmnist", [override])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_teachers_and_assistants_accept_arch_names_and_round_trip():
    recipe = Recipe.model_validate({"teachers": ["small_resnet18", {"arch": "medlite_cnn", "epochs": 3}],
                                    "assistants": ["medlite_dsconv_wide"]})
    assert [t.arch for t in recipe.teachers] == ["small_resnet18", "medlite_cnn"] and recipe.teachers[1].epochs == 3
    assert recipe.teacher == recipe.teachers[0]  # the one-teacher form names the first
    assert recipe.assistants[0].arch == "medlite_dsconv_wide" and recipe.assistants[0].lr == recipe.student.lr
    again = Recipe.model_validate(yaml.safe_load(dump_recipe(recipe)))  # the resolved recipe.yaml loads again
    assert again == recipe


def test_teacher_and_teachers_together_is_an_error():
    with pytest.raises(UsageError, match="not both"):
        load_recipe("breastmnist", ["teachers=[medlite_cnn]"])  # the file already has a teacher:


def test_the_recipe_schema_imports_no_deep_learning_library():
    import subprocess
    import sys

    code = "import sys, medlite.recipe, medlite.distill.config; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
