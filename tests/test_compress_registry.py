"""The compression seam: the method registry, chain validation at recipe load, stage keys, warnings.

Fast unit tests: no training, no torch (the registry and the recipe are light by design).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from medlite.compress import registry
from medlite.errors import UsageError
from medlite.recipe import load_recipe


def test_builtin_methods_declare_config_and_formats():
    assert set(registry.METHODS) == {"prune_structured", "prune_unstructured", "int8_dynamic", "int8_static", "int8_qat", "fp16"}
    from medlite.recipe import CompressConfig

    for spec in registry.METHODS.values():
        assert spec.accepts and spec.emits and spec.suffix.startswith("_")
        if spec.config is not None:  # the config section exists in the recipe schema
            assert spec.config in CompressConfig.model_fields
        assert callable(spec.load())  # the dotted stage path resolves
    assert registry.METHODS["int8_qat"].accepts == {registry.PYTORCH}
    assert registry.METHODS["int8_static"].emits == {registry.ONNX_INT8_QDQ}
    assert registry.METHODS["fp16"].accepts == {registry.ONNX_FP32} and registry.METHODS["fp16"].emits == {registry.ONNX_FP16}


@pytest.mark.parametrize("chain", [
    ["prune_structured", "int8_qat"],
    ["prune_structured", "int8_static"],
    ["prune_structured", "int8_dynamic"],
    ["prune_structured", "prune_unstructured", "int8_static"],
    ["int8_qat"],
])
def test_valid_chains(chain):
    registry.check_chain(chain)
    recipe = load_recipe("breastmnist", [f"compress.chains=[[{','.join(chain)}]]"])
    assert recipe.compress.chains == [chain]


@pytest.mark.parametrize("chain, fragment", [
    (["int8_static", "prune_structured"], "prune_structured cannot follow int8_static"),
    (["int8_qat", "int8_static"], "int8_static cannot follow int8_qat"),
    (["int8_dynamic", "int8_qat"], "int8_qat cannot follow int8_dynamic"),
    (["prune_unstructured", "int8_qat"], "int8_qat cannot follow prune_unstructured"),  # QAT would refill the zeros
    (["prune_structured", "prune_structued"], "unknown method 'prune_structued' (did you mean 'prune_structured'?)"),
    (["prune_structured", "prune_structured"], "appears twice"),
])
def test_invalid_chains_fail_at_load_naming_the_chain(chain, fragment):
    with pytest.raises(ValueError, match="chain"):
        registry.check_chain(chain)
    with pytest.raises(UsageError) as err:
        load_recipe("breastmnist", [f"compress.chains=[[{','.join(chain)}]]"])
    message = str(err.value)
    assert "compress.chains" in message and fragment in message and "\n" not in message
    assert "[" + ", ".join(chain) + "]" in message


def test_empty_chain_and_unknown_method_are_errors():
    with pytest.raises(UsageError, match="at least one method"):
        load_recipe("breastmnist", ["compress.chains=[[]]"])
    with pytest.raises(UsageError, match="unknown method 'int4'"):
        load_recipe("breastmnist", ["compress.methods=[int4]"])


def test_default_chain_reproduces_quantize_pruned():
    # The built-in recipe lists both methods and no chains: the pruned model is also quantized.
    assert load_recipe("breastmnist").compress.chains == [["prune_structured", "int8_static"]]
    assert load_recipe("breastmnist", ["compress.methods=[prune_structured]"]).compress.chains == []
    assert load_recipe("breastmnist", ["compress.methods=[]"]).compress.chains == []
    # An explicit list (empty included) wins over the default.
    assert load_recipe("breastmnist", ["compress.chains=[]"]).compress.chains == []


def test_resolved_chains_round_trip(tmp_path):
    from medlite.recipe import dump_recipe

    recipe = load_recipe("breastmnist", ["compress.chains=[[prune_structured,int8_qat]]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_recipe(recipe))
    assert yaml.safe_load(path.read_text())["compress"]["chains"] == [["prune_structured", "int8_qat"]]
    assert load_recipe(str(path)) == recipe


def test_old_quantize_pruned_key_points_to_chains(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("compress:\n  methods: [prune_structured, int8_static]\n  quantize_pruned: true\n")
    with pytest.raises(UsageError) as err:
        load_recipe(str(path))
    assert "quantize_pruned" in str(err.value) and "compress.chains" in str(err.value)
    result = subprocess.run([sys.executable, "-m", "medlite.cli", "run", str(path), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "quantize_pruned" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stage_keys_change_with_schema_and_version(monkeypatch):
    import medlite.version
    from medlite import stage as variant

    parts = ("abc", {"lr": 0.1})
    before = variant.stage_key("export", *parts)
    assert variant.stage_key("export", *parts) == before  # stable
    monkeypatch.setitem(variant.STAGE_SCHEMAS, "export", variant.STAGE_SCHEMAS["export"] + 1)
    bumped = variant.stage_key("export", *parts)
    assert bumped != before
    monkeypatch.setattr(medlite.version, "__version__", medlite.version.__version__ + ".post1")
    assert variant.stage_key("export", *parts) not in (before, bumped)
    # Compression methods carry their own schema number.
    assert variant.stage_key("int8_qat", *parts, schema=1) != variant.stage_key("int8_qat", *parts, schema=2)
    with pytest.raises(KeyError, match="schema"):
        variant.stage_key("no_such_stage", *parts)


def test_warnings_are_kept_printed_and_reported():
    from io import StringIO

    from rich.console import Console

    from medlite.report import print_table, render_html
    from medlite.variant import TrainSection, Variant

    ok = Variant(name="student_kd", parent="teacher", stage="distill", arch="a", train_section=TrainSection("student"))
    odd = Variant(name="student_kd_int8_dynamic_dense", parent="student_kd", stage="int8_dynamic", arch="a",
                  warnings=["only the dense layers are int8: 5 Conv node(s) stay float"])
    assert Variant.from_dict(odd.to_dict()) == odd
    results = {
        "recipe": "r", "dataset": {"name": "d", "images": {"test": 1}, "classes": ["a", "b"], "source": "s",
                                   "origin": "o", "split": "x", "image_size": 28, "channels": 1,
                                   "per_class": {"test": {"a": 1, "b": 0}}},
        "variants": [ok.to_dict(), odd.to_dict()], "timings": {"teacher": 3.0, "total": 0.5},
        "timings_reused": {"teacher": 3.0}, "versions": {},
    }
    out = StringIO()
    print_table(results, Console(file=out, width=400))
    text = out.getvalue()
    assert "student_kd_int8_dynamic_dense (!)" in text and "student_kd (!)" not in text
    assert "(!) student_kd_int8_dynamic_dense: only the dense layers are int8" in text
    html = render_html(results)
    assert 'id="warnings"' in html and "5 Conv node(s) stay float" in html
    assert "reused: measured by the run that made it" in html


def test_bench_results_are_keyed_by_the_machine(tmp_path, monkeypatch):
    """A run directory copied to another machine re-benches: the bench record names its machine."""
    from medlite.bench import runner
    from medlite.bench.stage import bench_stage
    from medlite.context import Context
    from medlite.runstate import RunDir

    here = {"cpu": "CPU A", "cores": 4, "platform": "Linux-x", "python": "3.11"}
    calls = []
    monkeypatch.setattr(runner, "machine_info", lambda: dict(here))
    # Only the keying is under test here: the measurement itself is tests/test_bench.py's business.
    monkeypatch.setattr(runner, "bench_run_dir", lambda root, cfg: calls.append(root) or {})

    def bench_once():
        ctx = Context(load_recipe("breastmnist"), RunDir(tmp_path), tmp_path, say=lambda line: None, progress=False)
        ctx.ledger.run_stage(bench_stage(ctx))
        return ctx.ledger.cached_stages

    assert bench_once() == [] and len(calls) == 1
    assert bench_once() == ["bench"] and len(calls) == 1  # same machine: reused
    here["python"] = "3.12"  # not part of the machine identity
    assert bench_once() == ["bench"]
    here["cpu"] = "CPU B"
    assert bench_once() == [] and len(calls) == 2  # another CPU: measured again
    here["cores"] = 8
    assert bench_once() == [] and len(calls) == 3
