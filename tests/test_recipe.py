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


# -- partial sections keep their defaults ----------------------------------------------------

import types  # noqa: E402
import typing  # noqa: E402

import yaml  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from medlite.recipe import dump_recipe, validate_tree  # noqa: E402


def _write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


def test_partial_teacher_section_keeps_every_other_default(tmp_path):
    recipe = load_recipe(_write(tmp_path, "teacher: {epochs: 3}\n"))
    assert recipe.teacher.epochs == 3
    assert recipe.teacher.arch == "small_pooled_resnet18" and recipe.teacher.lr == 2e-3
    assert recipe.student.arch == "medlite_dsconv" and recipe.student.lr == 3e-3


def test_partial_student_and_nested_sections(tmp_path):
    text = "student: {epochs: 2}\ncompress:\n  prune_structured: {ratio: 0.5}\ndata: {split: {train: 0.8, val: 0.1, test: 0.1}}\n"
    recipe = load_recipe(_write(tmp_path, text))
    assert (recipe.student.arch, recipe.student.lr, recipe.student.epochs) == ("medlite_dsconv", 3e-3, 2)
    assert recipe.compress.prune_structured.ratio == 0.5
    assert (recipe.compress.prune_structured.epochs, recipe.compress.prune_structured.lr) == (15, 1e-3)
    assert recipe.compress.targets == ["teacher", "student_kd"] and recipe.data.flag == "breastmnist"


def test_set_on_a_recipe_without_that_section(tmp_path):
    recipe = load_recipe(_write(tmp_path, "data: {limit: 40}\n"), ["teacher.epochs=5", "compress.int8_qat.epochs=1"])
    assert recipe.teacher.epochs == 5 and recipe.teacher.arch == "small_pooled_resnet18"
    assert recipe.compress.int8_qat.epochs == 1 and recipe.compress.int8_qat.lr == 1e-4


def test_empty_section_means_defaults(tmp_path):
    recipe = load_recipe(_write(tmp_path, "teacher:\n  # epochs: 3\nstudent:\n"))
    assert recipe.teacher == Recipe().teacher and recipe.student == Recipe().student


def test_resolved_recipe_shows_every_default(tmp_path):
    recipe = load_recipe(_write(tmp_path, "teacher: {epochs: 3}\n"))
    dumped = yaml.safe_load(dump_recipe(recipe))
    assert dumped["teacher"] == {**Recipe().teacher.model_dump(mode="json"), "epochs": 3}
    assert dumped["student"]["arch"] == "medlite_dsconv" and dumped["student"]["lr"] == 3e-3
    assert validate_tree(dumped, "resolved") == recipe


def _sections(model: type[BaseModel], prefix: str = ""):
    for key, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield f"{prefix}{key}", model, key, field
            yield from _sections(field.annotation, f"{prefix}{key}.")


def test_no_default_lives_only_in_an_instance():
    """A section's default must equal its class's defaults: a partial dict is validated against the class."""
    for dotted, _, _, field in _sections(Recipe):
        default = field.get_default(call_default_factory=True)
        assert default == field.annotation(), f"{dotted}: the default instance differs from {field.annotation.__name__}()"


# -- the bad-input corpus: one line, naming the real fault ----------------------------------


def test_unknown_key_inside_a_partial_section_is_named_first(tmp_path):
    with pytest.raises(UsageError) as info:
        load_recipe(_write(tmp_path, "teacher: {epochz: 3}\n"))
    message = str(info.value)
    assert "unknown key 'teacher.epochz'" in message and "did you mean 'teacher.epochs'" in message
    assert "arch" not in message and "\n" not in message


def test_unknown_key_reported_before_what_it_causes():
    tree = {"data": {"split": {"train": 0.5, "vall": 0.3}}}  # the typo also breaks the sum
    with pytest.raises(UsageError, match=r"unknown key 'data\.split\.vall'"):
        validate_tree(tree, "r.yaml")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("- data\n- teacher\n", "must be a mapping of keys (key: value), got a list"),
        ("just text\n", "got a text"),
        ("", "empty recipe"),
        ("# nothing but a comment\n", "empty recipe"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text (UTF-8) recipe file"),
        ("name: a\x07b\n", "malformed YAML"),
        ("data: breastmnist\n", "data: must be a section"),
        ("1: 2\n", "must be text"),
    ],
)
def test_bad_recipe_files_are_one_line_naming_the_file(tmp_path, content, fragment):
    path = _write(tmp_path, content, "bad.yaml")
    with pytest.raises(UsageError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(path) and fragment in message and "\n" not in message


def test_a_folder_or_a_huge_file_is_not_a_recipe(tmp_path):
    with pytest.raises(UsageError, match="a folder, not a recipe file"):
        load_recipe(str(tmp_path))
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (2 << 20))
    with pytest.raises(UsageError, match="too large for a recipe"):
        load_recipe(str(huge))


def test_set_errors_name_the_set_option_not_the_builtin_file():
    with pytest.raises(UsageError) as info:
        load_recipe(None, ["teacher.epochs=abc"])
    message = str(info.value)
    assert message.startswith("--set teacher.epochs=abc: teacher.epochs: Input should be a valid integer"), message
    assert ".yaml" not in message


def test_file_errors_still_name_the_file_with_overrides(tmp_path):
    path = _write(tmp_path, "teacher: {epochs: many}\n")
    with pytest.raises(UsageError) as info:
        load_recipe(path, ["student.epochs=2"])
    assert str(info.value).startswith(f"{path}: teacher.epochs")


def test_set_into_a_value_that_is_not_a_section():
    with pytest.raises(UsageError, match=r"--set teacher.epochs.x=1: teacher.epochs is not a section"):
        load_recipe(None, ["teacher.epochs.x=1"])


def test_recipe_name_from_a_file_name_with_spaces(tmp_path):
    assert load_recipe(_write(tmp_path, "seed: 1\n", "my recipe (v2).yaml")).name == "my_recipe_v2"


# -- property-based: any recipe tree, any --set ---------------------------------------------
# Strategies are derived from the schema itself (field types and bounds), so a key added later
# is covered without editing this file. Fields with validators of their own get hand-written
# strategies below, or are left at their defaults.

from annotated_types import Ge, Gt, Le, Lt  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medlite.compress.registry import METHODS as _COMPRESS_REGISTRY  # noqa: E402

COMPRESS_METHODS = tuple(_COMPRESS_REGISTRY)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECIAL: dict[str, st.SearchStrategy] = {
    "name": st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
    "data.flag": st.sampled_from(["breastmnist", "PneumoniaMNIST", "dermamnist"]),
    "compress.methods": st.lists(st.sampled_from(COMPRESS_METHODS), unique=True, max_size=3),
    "data.split": st.sampled_from([(0.7, 0.1, 0.2), (0.8, 0.0, 0.2), (0.6, 0.2, 0.2)]).map(
        lambda t: dict(zip(("train", "val", "test"), t))
    ),
    "compress.prune_unstructured": st.tuples(st.floats(0, 0.9), st.floats(0.01, 0.99)).map(
        lambda t: {"initial_sparsity": min(t), "final_sparsity": max(t)}
    ),
    # 0 epochs without pretrained weights is refused (an untrained model would be deployed): tested apart
    "teacher.epochs": st.integers(1, 10_000),
    "student.epochs": st.integers(1, 10_000),
}
NORMALISED = {"data.flag": str.lower}


def _bounds(metadata) -> dict:
    out = {}
    for item in metadata:
        if isinstance(item, Ge):
            out["min_value"] = item.ge
        elif isinstance(item, Gt):
            out["min_value"], out["exclude_min"] = item.gt, True
        elif isinstance(item, Le):
            out["max_value"] = item.le
        elif isinstance(item, Lt):
            out["max_value"], out["exclude_max"] = item.lt, True
    return out


def _leaf(annotation, metadata=()) -> st.SearchStrategy | None:
    """A strategy of valid values for a field type, None when this file cannot tell."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        inner = _leaf(others[0], metadata) if len(others) == 1 else None
        return None if inner is None else st.none() | inner
    if origin is typing.Literal:
        return st.sampled_from(args)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        b = _bounds(metadata)
        lo = b.get("min_value", -(2**31)) + (1 if b.get("exclude_min") else 0)
        hi = b.get("max_value", 2**31) - (1 if b.get("exclude_max") else 0)
        return st.integers(lo, min(hi, lo + 10**6))
    if annotation is float:
        b = {"min_value": -1e6, "max_value": 1e6, **_bounds(metadata)}
        return st.floats(**b, allow_nan=False, allow_infinity=False)
    if annotation is str and not metadata:
        return st.text(max_size=12)
    if origin is list and args:
        item = _leaf(args[0])
        return None if item is None else st.lists(item, max_size=3)
    if origin is dict and args == (str, str):
        return st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
    return None


def _has_cross_key_rules(model: type[BaseModel]) -> bool:
    """A rule over several keys (e.g. split ratios summing to 1): random values would break it."""
    return any(v.info.mode != "before" for v in model.__pydantic_decorators__.model_validators.values())


def _fields(model: type[BaseModel], prefix: str = ""):
    """(dotted key, strategy or None, field, is_section) for every key of the schema."""
    for key, field in model.model_fields.items():
        dotted = f"{prefix}{key}"
        section = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        yield dotted, None if section else _leaf(field.annotation, field.metadata), field, section
        if section:
            yield from _fields(field.annotation, f"{dotted}.")


def _section_tree(model: type[BaseModel], prefix: str = "") -> st.SearchStrategy:
    """A partial section: a random subset of its keys with valid values (nested sections too)."""
    parts = {}
    validated = {name for v in model.__pydantic_decorators__.field_validators.values() for name in v.info.fields}
    for key, field in model.model_fields.items():
        dotted = f"{prefix}{key}"
        if dotted in SPECIAL:
            parts[key] = SPECIAL[dotted]
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            if not _has_cross_key_rules(field.annotation):  # else left at its defaults
                parts[key] = _section_tree(field.annotation, f"{dotted}.")
        elif key not in validated:
            leaf = _leaf(field.annotation, field.metadata)
            if leaf is not None:
                parts[key] = leaf
    return st.fixed_dictionaries({}, optional=parts)


recipe_trees = _section_tree(Recipe)


def _get(recipe, dotted: str):
    node = recipe
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        field_model = _model_at(dotted)
        if isinstance(value, dict) and field_model is not None:
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def _model_at(dotted: str):
    model = Recipe
    for part in dotted.split("."):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
    return model


def _default_at(dotted: str):
    parent, _, key = dotted.rpartition(".")
    model = _model_at(parent) if parent else Recipe
    return model.model_fields[key].get_default(call_default_factory=True)


# Keys whose default is derived from other keys (chains follow compress.methods).
DERIVED = {"compress.chains"}


def _assert_matches(recipe: Recipe, tree: dict) -> None:
    given_keys = dict(_leaves(tree))
    for dotted, value in given_keys.items():
        expect = NORMALISED.get(dotted, lambda v: v)(value)
        if isinstance(expect, dict) and _model_at(dotted) is not None:  # a special whole section
            for key, val in expect.items():
                assert getattr(_get(recipe, dotted), key) == val
        else:
            assert _get(recipe, dotted) == expect, dotted
    # Everything not given keeps its class default, however deep.
    for dotted, _, field, section in _fields(Recipe):
        if section or dotted in DERIVED or any(dotted == k or dotted.startswith(k + ".") for k in given_keys):
            continue
        assert _get(recipe, dotted) == _default_at(dotted), dotted


@PROPERTY_SETTINGS
@given(tree=recipe_trees)
def test_valid_partial_trees_load_keep_defaults_and_round_trip(tree):
    recipe = validate_tree(tree, "generated.yaml")
    _assert_matches(recipe, tree)
    assert validate_tree(yaml.safe_load(dump_recipe(recipe)), "resolved.yaml") == recipe


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=recipe_trees)
def test_valid_recipe_files_round_trip_through_the_resolved_yaml(tmp_path_factory, tree):
    folder = tmp_path_factory.mktemp("prop")
    first = load_recipe(_write(folder, yaml.safe_dump(tree), "in.yaml"))
    again = load_recipe(_write(folder, dump_recipe(first), "resolved.yaml"))
    assert again == first


LEAVES = [
    (dotted, SPECIAL.get(dotted, strategy))
    for dotted, strategy, _, section in _fields(Recipe)
    if not section and (dotted in SPECIAL or strategy is not None)
]
LEAVES = [(d, s) for d, s in LEAVES if not (d.rpartition(".")[0] and _has_cross_key_rules(_model_at(d.rpartition(".")[0])))]
_VALIDATED = {
    f"{prefix}.{name}".lstrip(".")
    for prefix, model in [("", Recipe)] + [(d, _model_at(d)) for d, *_, section in _fields(Recipe) if section]
    for v in model.__pydantic_decorators__.field_validators.values()
    for name in v.info.fields
}
LEAVES = [(d, s) for d, s in LEAVES if d in SPECIAL or d not in _VALIDATED]


def _yaml_text(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


@PROPERTY_SETTINGS
@given(data=st.data(), picks=st.lists(st.sampled_from(range(len(LEAVES))), min_size=1, max_size=4, unique=True))
def test_valid_set_values_apply(data, picks):
    chosen = {LEAVES[i][0]: data.draw(LEAVES[i][1], label=LEAVES[i][0]) for i in picks}
    recipe = load_recipe(None, [f"{key}={_yaml_text(value)}" for key, value in chosen.items()])
    for key, value in chosen.items():
        assert _get(recipe, key) == NORMALISED.get(key, lambda v: v)(value), key
    assert validate_tree(yaml.safe_load(dump_recipe(recipe)), "resolved.yaml") == recipe


def _wrong_value(annotation, metadata) -> st.SearchStrategy:
    """Values of the wrong type, or out of the field's range."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return st.sampled_from(["not-a-choice", 12345, [1]])
    if annotation is bool:
        return st.sampled_from(["maybe", 7, [True]])
    if annotation in (int, float):
        wrong = ["abc", [1], {"a": 1}]
        b = _bounds(metadata)
        if "min_value" in b:
            wrong.append(b["min_value"] - (0 if b.get("exclude_min") else 1))
        if "max_value" in b:
            wrong.append(b["max_value"] + (0 if b.get("exclude_max") else 1))
        if annotation is int:
            wrong.append(2.5)
        return st.sampled_from(wrong)
    if annotation is str:
        return st.sampled_from([[1, 2], {"a": 1}])
    if origin in (list, dict):
        return st.sampled_from([5, "text"] if origin is list else [5, [1]])
    return st.sampled_from([object()])  # pragma: no cover


WRONG = [
    (dotted, _wrong_value(field.annotation, field.metadata))
    for dotted, strategy, field, section in _fields(Recipe)
    if not section and strategy is not None
]
SECTIONS = [dotted for dotted, _, _, section in _fields(Recipe) if section]


@PROPERTY_SETTINGS
@given(tree=recipe_trees, data=st.data(), pick=st.sampled_from(range(len(WRONG))), as_set=st.booleans())
def test_wrong_values_name_the_key(tree, data, pick, as_set):
    dotted, strategy = WRONG[pick]
    value = data.draw(strategy, label=dotted)
    if as_set:
        with pytest.raises(UsageError) as info:
            validate_tree(tree, "r.yaml", [f"{dotted}={_yaml_text(value)}"])
        assert str(info.value).startswith(f"--set {dotted}=")
    else:
        node = tree
        for part in dotted.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[dotted.rpartition(".")[2]] = value
        with pytest.raises(UsageError) as info:
            validate_tree(tree, "r.yaml")
        assert str(info.value).startswith("r.yaml: ")
    message = str(info.value)
    assert dotted in message and "\n" not in message


@PROPERTY_SETTINGS
@given(
    tree=recipe_trees,
    section=st.sampled_from([""] + SECTIONS),
    key=st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
)
def test_unknown_keys_are_named(tree, section, key):
    model = _model_at(section) if section else Recipe
    if key in model.model_fields:
        return
    node = tree
    for part in filter(None, section.split(".")):
        node = node.setdefault(part, {})
    node[key] = 1
    dotted = f"{section}.{key}" if section else key
    with pytest.raises(UsageError) as info:
        validate_tree(tree, "r.yaml")
    assert f"unknown key {dotted!r}" in str(info.value) and "\n" not in str(info.value)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["epochs", "arch", "limit", "x", "split", "train"]) | st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
ALL_KEYS = [dotted for dotted, *_ in _fields(Recipe)]


@PROPERTY_SETTINGS
@given(
    tree=st.dictionaries(st.sampled_from(list(Recipe.model_fields)) | st.text(max_size=5) | st.integers(), anything, max_size=5)
    | anything,
    sets=st.lists(
        st.tuples(st.sampled_from(ALL_KEYS) | st.text(max_size=10), st.text(max_size=12) | anything.map(_yaml_text)).map(
            lambda kv: f"{kv[0]}={kv[1]}"
        )
        | st.text(max_size=15),
        max_size=3,
    ),
)
def test_nothing_but_usage_errors_escape(tree, sets):
    try:
        recipe = validate_tree(tree, "r.yaml", sets)
    except UsageError as err:
        assert "\n" not in str(err) and len(str(err)) <= 320
    else:
        assert validate_tree(yaml.safe_load(dump_recipe(recipe)), "resolved.yaml") == recipe


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_file_content_loads_or_is_a_usage_error(tmp_path_factory, content):
    path = _write(tmp_path_factory.mktemp("bytes"), content, "any.yaml")
    try:
        load_recipe(path)
    except UsageError as err:
        assert str(err).startswith(path) and "\n" not in str(err)


def test_switching_the_distill_method_starts_from_its_own_defaults():
    """Issue 21: `--set distill.method=fitnet` on the default recipe failed on KD's `alpha`; DKD kept KD's alpha."""
    from medlite.distill.config import CONFIGS

    fitnet = load_recipe("breastmnist", ["distill.method=fitnet"])
    assert fitnet.distill.method == "fitnet" and "dropped distill.temperature, distill.alpha" in fitnet._notes[0]
    dkd = load_recipe("breastmnist", ["distill.method=dkd"])
    assert dkd.distill.alpha == CONFIGS["dkd"]().alpha and dkd.distill.temperature == CONFIGS["dkd"]().temperature
    assert load_recipe("breastmnist", ["distill.method=dkd", "distill.alpha=0.5"]).distill.alpha == 0.5
    with pytest.raises(UsageError, match=r"--set distill.alpha=0.3: unknown key 'distill.alpha'"):
        load_recipe("breastmnist", ["distill.method=fitnet", "distill.alpha=0.3"])
    assert load_recipe("breastmnist")._notes == []


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_builtin_recipe_resolves_and_reads_back_equal(name):
    """A resolved recipe states every key at its value; reading it back must give the same recipe
    (a table section used to refuse its own default `no_finding`)."""
    import yaml

    from medlite.recipe import dump_recipe, validate_tree

    recipe = load_recipe(name)
    assert validate_tree(yaml.safe_load(dump_recipe(recipe)), "resolved") == recipe


def test_switching_the_dataset_drops_the_files_class_settings(data_root):
    """Issue 21: `--set data.flag=retinamnist` on the default recipe exited 2 on its `malignant` operating point."""
    from medlite.data import load_dataset
    from medlite.evaluate.operating_point import check_config

    recipe = load_recipe("breastmnist", ["data.flag=pneumoniamnist", "data.limit=16"])
    assert recipe.data.flag == "pneumoniamnist" and recipe.evaluate.operating_point is None
    assert len(recipe._notes) == 1 and "dropped evaluate.operating_point" in recipe._notes[0]
    assert "'breastmnist'" in recipe._notes[0] and "'pneumoniamnist'" in recipe._notes[0]
    dataset = load_dataset(recipe.data, data_root, recipe.seed)
    check_config(recipe, dataset.class_names)  # what the pipeline checks at its start: nothing left to refuse
    # The same data: nothing dropped.
    assert load_recipe("breastmnist", ["data.flag=breastmnist"]).evaluate.operating_point is not None
    assert load_recipe("breastmnist", ["data.flag=breastmnist"])._notes == []


def test_a_dataset_switch_drops_the_files_class_map_and_the_old_sources_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("data: {flag: breastmnist, size: 28, class_map: {malignant: cancer}}\n"
                    "evaluate: {operating_point: {positive_class: cancer, youden: true}}\n")
    recipe = load_recipe(str(path), ["data.flag=pneumoniamnist"])
    assert recipe.data.class_map is None and recipe.data.size == 28 and recipe.evaluate.operating_point is None
    assert "dropped evaluate.operating_point, data.class_map" in recipe._notes[0]
    folder = load_recipe(str(path), ["data.source=folder", "data.root=BUSI"])
    assert folder.data.source == "folder" and "data.flag, data.size" in folder._notes[0]


def test_keys_the_user_sets_for_the_old_dataset_stay_errors(data_root):
    """Only the file's settings are dropped: an operating point given with --set is kept, and refused
    naming its key once the dataset's classes are read."""
    from medlite.data import load_dataset
    from medlite.evaluate.operating_point import check_config

    recipe = load_recipe("breastmnist", ["data.flag=pneumoniamnist", "data.limit=16",
                                         "evaluate.operating_point.positive_class=malignant"])
    assert recipe.evaluate.operating_point.positive_class == "malignant" and recipe._notes == []
    dataset = load_dataset(recipe.data, data_root, recipe.seed)
    with pytest.raises(UsageError, match=r"^evaluate\.operating_point\.positive_class: 'malignant' is not a class"):
        check_config(recipe, dataset.class_names)
    mapped = load_recipe("breastmnist", ["data.flag=pneumoniamnist", "data.limit=16", "data.class_map.malignant=x"])
    assert mapped.data.class_map == {"malignant": "x"}
    with pytest.raises(Exception, match=r"data\.class_map: 'malignant' is not a class"):
        load_dataset(mapped.data, data_root, mapped.seed)
