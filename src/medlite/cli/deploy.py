"""`medlite predict` and `medlite serve`: classify images with a deployed model, or serve it over HTTP.

Module-level imports stay light (typer, the standard library, medlite.errors) so `medlite --help`
stays instant; the runtimes, rich and the web stack are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medlite.cli.common import DebugOpt, check_writable
from medlite.errors import UsageError


def _usage(err: Exception) -> UsageError:
    return UsageError(str(err))


def predict(
    model: Annotated[Path, typer.Argument(help="a model file (.onnx, .tflite) or a run directory")],
    images: Annotated[list[Path], typer.Argument(help="image files, folders, or list files (.txt: one path a line)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="write predictions to a .csv or .json file")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="two-class models: decision threshold on the positive class [default: the file's operating point, else argmax]")] = None,
    min_confidence: Annotated[float, typer.Option(
        "--min-confidence", help="flag predictions whose probability is below this as low-confidence")] = 0.6,
    threads: Annotated[int, typer.Option("--threads", help="runtime threads; 0 = all cores")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per runtime call")] = 64,
    debug: DebugOpt = False,
) -> None:
    """Classify images with a deployed model: class, probabilities, low-confidence flag, input warnings."""
    # local: rich and the runtimes (onnxruntime, numpy, PIL) are not for --help.
    from rich.console import Console

    from medlite.deploy.predict import expand_inputs, predict_files, write_output
    from medlite.deploy.select import resolve_model
    from medlite.runtime import ArtifactError

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:  # logs: one line per message, no wrapping at 80 columns
        console = Console(stderr=True, highlight=False, width=240)
    if batch_size < 1:
        raise _usage(ValueError(f"--batch-size {batch_size}: must be at least 1"))
    if out is not None:
        if out.suffix.lower() not in (".csv", ".json"):
            raise UsageError(f"--out {out}: use a .csv or .json file name")
        check_writable(out, parents=False)  # before classifying: a long run must not end in "cannot write"
    try:
        path, runtime, rule = resolve_model(model)
        console.print(f"model: {rule}")
        hidden: list[int] = []
        files, missing = expand_inputs(images, hidden)
        if hidden[0]:
            console.print(f"skipped {hidden[0]} hidden files (macOS ._* files, hidden folders such as .thumbs/)")
        if not files:
            raise ArtifactError("no images to classify" + (f" ({missing[0]['file']}: {missing[0]['error']})" if missing else ""))
        if len(files) >= 50 and console.is_terminal:
            # local: only a long run at a terminal shows a progress bar.
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            with Progress("classifying", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=console, transient=True) as bar:
                task = bar.add_task("", total=len(files))
                result = predict_files(path, files, runtime=runtime, threads=threads, batch_size=batch_size,
                                       threshold=threshold, min_confidence=min_confidence,
                                       on_progress=lambda n: bar.update(task, completed=n))
        else:
            result = predict_files(path, files, runtime=runtime, threads=threads, batch_size=batch_size,
                                   threshold=threshold, min_confidence=min_confidence)
        result["unreadable"] = missing + result["unreadable"]
        result["summary"]["unreadable"] = len(result["unreadable"])
        result["selection"] = rule
        if out is not None:
            write_output(result, out)
    except ArtifactError as err:
        raise _usage(err) from None
    except OSError as err:
        from medlite.runstate import DISK_ERRNOS, write_error

        if out is None or err.errno not in DISK_ERRNOS:
            raise
        raise write_error(out, err) from None
    for warning in ((result.get("model") or {}).get("card") or {}).get("warnings") or []:
        console.print(f"model warning: {warning}", markup=False)  # e.g. a model no better than chance
    _print(result, console, out)
    if not result["predictions"]:
        raise _usage(ValueError(f"none of the {len(result['unreadable'])} inputs could be classified"))


def _print(result: dict, console, out: Path | None) -> None:
    # local: rich is not for --help.
    from rich.console import Console
    from rich.table import Table

    s = result["summary"]
    names = list(result["model"]["preprocess"]["class_names"])
    multilabel = result.get("task") == "multilabel"
    if out is None and multilabel:  # every label, positive ones first: probability / its threshold
        table = Table(show_edge=False)
        for col in ("file", "positive labels (p / threshold)", "other labels (p / threshold)", "flags"):
            table.add_column(col, overflow="fold")
        for r in result["predictions"][:200]:
            flags = (["near a threshold"] if r["low_confidence"] else []) + r["input"]["warnings"]
            cell = lambda pos: ", ".join(f"{n} {v['probability']:.2f}/{v['threshold']:.2f}"  # noqa: E731
                                         for n, v in r["labels"].items() if v["positive"] == pos) or "none"
            table.add_row(r["file"], cell(True), cell(False), "; ".join(flags))
        Console(highlight=False).print(table)
        if len(result["predictions"]) > 200:
            console.print(f"(first 200 of {len(result['predictions'])} rows; use --out FILE.csv for all)")
    elif out is None:
        table = Table(show_edge=False)
        for col in ("file", "predicted", *names, "flags"):
            table.add_column(col, overflow="fold")
        for r in result["predictions"][:200]:
            flags = (["low confidence"] if r["low_confidence"] else []) + r["input"]["warnings"]
            table.add_row(r["file"], r["predicted"], *[f"{r['probabilities'][n]:.3f}" for n in names], "; ".join(flags))
        Console(highlight=False).print(table)
        if len(result["predictions"]) > 200:
            console.print(f"(first 200 of {len(result['predictions'])} rows; use --out FILE.csv for all)")
    for r in result["unreadable"]:
        console.print(f"unreadable: {r['file']}: {r['error']}")
    console.print(
        f"{s['classified']} classified, {s['unreadable']} unreadable, {s['low_confidence']} "
        f"{'near a threshold' if multilabel else 'low-confidence'}, "
        f"{s['with_warnings']} with input warnings; decision: {result['decision']}; "
        f"{s['wall_s']:.2f} s ({s['images_per_s']} images/s)" + (f"; wrote {out}" if out else "")
    )


def serve(
    model: Annotated[Path, typer.Argument(help="a model file (.onnx, .tflite) or a run directory")],
    host: Annotated[str, typer.Option("--host", help="address to bind; the default keeps it on this machine")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    threads: Annotated[int, typer.Option("--threads", help="runtime threads; 0 = all cores")] = 0,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="largest accepted image file")] = 10.0,
    max_files: Annotated[int, typer.Option("--max-files", help="most images per request")] = 16,
    token: Annotated[Optional[str], typer.Option("--token", envvar="MEDLITE_SERVE_TOKEN",
                                                 help="require `Authorization: Bearer TOKEN` (needed off loopback)")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="serve beyond loopback without a token (warned)")] = False,
    rate_limit: Annotated[int, typer.Option("--rate-limit", min=0, help="/predict requests per minute per client; 0 = none")] = 120,
    ssl_certfile: Annotated[Optional[Path], typer.Option("--ssl-certfile", help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Optional[Path], typer.Option("--ssl-keyfile", help="TLS private key (PEM)")] = None,
    debug: DebugOpt = False,
) -> None:
    """Serve one page and a JSON API (POST /predict, GET /model, GET /health) for a deployed model."""
    # local: the runtimes (onnxruntime, numpy) and the web stack (fastapi, uvicorn: an extra) are not for --help.
    from medlite.deploy.select import resolve_model
    from medlite.runtime import ArtifactError

    try:  # the serve extra: checked here to name the install, before anything else is loaded
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise _usage(ImportError("medlite serve needs fastapi and uvicorn (pip install medlite[serve])")) from None
    if not 0 < port < 65536:
        raise _usage(ValueError(f"--port {port}: must be 1..65535"))
    if max_upload_mb <= 0 or max_files < 1:
        raise _usage(ValueError("--max-upload-mb must be > 0 and --max-files >= 1"))
    from medlite.deploy.serve import check_exposure, check_port
    from medlite.deploy.serve import serve as run_server  # local: imports fastapi, checked just above

    check_port(host, port)  # a port in use: one line now, not "serving on ..." and then uvicorn's exit 3

    try:
        check_exposure(host, token, no_auth, ssl_certfile, ssl_keyfile)  # before the model loads
    except ValueError as err:
        raise _usage(err) from None
    try:
        path, runtime, rule = resolve_model(model)
        typer.echo(f"model: {rule}")
        run_server(path, host=host, port=port, runtime=runtime, selection=rule, threads=threads,
                   max_upload_mb=max_upload_mb, max_files=max_files, say=typer.echo, token=token, no_auth=no_auth,
                   rate_limit=rate_limit, certfile=ssl_certfile, keyfile=ssl_keyfile)
    except ArtifactError as err:
        raise _usage(err) from None
