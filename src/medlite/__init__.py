"""medlite: lightweight, measured, explainable medical image classifiers.

Nothing heavy is imported here: the edge runner (`python -m medlite.edge`) must work
with only numpy, onnxruntime and Pillow installed. The Python API (`medlite.run`, `medlite.load`,
`medlite.study`, `medlite.evaluate_external`; `medlite.api`) is imported on first use.
"""

from medlite.version import __version__  # noqa: F401 - medlite.__version__

_API = {"run", "load", "study", "evaluate_external", "RunResult", "StudyResult", "EvaluationResult"}
_ERRORS = {"MedliteError", "UsageError", "DataError"}


def __getattr__(name: str):
    if name in _API:
        from medlite import api

        return getattr(api, name)
    if name in _ERRORS:
        from medlite import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'medlite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API | _ERRORS))
