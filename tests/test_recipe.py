import pytest

from medlite.errors import UsageError
from medlite.recipe import Recipe, builtin_recipes, load_recipe, parse_override


def test_builtin_recipes_all_validate():
    names = builtin_recipes()
    assert {"breastmnist", "pneumoniamnist", "busi"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name


def test_default_recipe_is_breastmnist():
    recipe = load_recipe(None)
    assert recipe.data.source == "medmnist" and recipe.data.flag == "breastmnist"


def test_parse_override_types_values():
    assert parse_override("teacher.epochs=5") == (["teacher", "epochs"], 5)
    assert parse_override("distill.alpha=0.5") == (["distill", "alpha"], 0.5)
    assert parse_override("compress.methods=[int8_static]") == (["compress", "methods"], ["int8_static"])
    assert parse_override("data.root=/x/y") == (["data", "root"], "/x/y")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_override("teacher.epochs")


def test_overrides_apply_and_are_typed():
    recipe = load_recipe("breastmnist", ["teacher.epochs=3", "student.lr=0.01", "data.limit=40"])
    assert recipe.teacher.epochs == 3 and recipe.student.lr == 0.01 and recipe.data.limit == 40


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("teacher.epochz=3", "unknown key 'teacher.epochz'"),
        ("distill.alpha=1.7", "distill.alpha"),
        ("data.source=dicom", "data.source"),
        ("teacher.epochs=many", "teacher.epochs"),
        ("compress.methods=[int8_statik]", "did you mean 'int8_static'"),
        ("compress.prune_structured.ratio=1.5", "compress.prune_structured.ratio"),
        ("data.split.train=0.9", "must be 1"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(UsageError, match=None) as info:
        load_recipe("breastmnist", [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nteacher:\n  epochs: [1, 2\n")
    with pytest.raises(UsageError) as info:
        load_recipe(str(bad))
    assert "bad.yaml" in str(info.value) and "malformed YAML" in str(info.value)


def test_unknown_recipe_name_suggests():
    with pytest.raises(UsageError, match="did you mean 'breastmnist'"):
        load_recipe("breastmnst")


def test_missing_recipe_file():
    with pytest.raises(UsageError, match="not found"):
        load_recipe("nowhere/recipe.yaml")


def test_defaults_are_complete():
    dumped = Recipe().model_dump()
    for key in ("name", "seed", "data", "teacher", "student", "distill", "compress", "bench"):
        assert key in dumped
    assert dumped["data"]["augment"] in ("none", "light", "medium")
