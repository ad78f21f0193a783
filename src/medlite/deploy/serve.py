"""`medlite serve MODEL|RUN_DIR`: a small web app for the clinic, on the deployed file.

One HTML page (no external assets: works offline, leaks nothing) to upload one or several
images and see the predicted class, the probabilities, an occlusion heat-map computed on the
deployed file and the model card; and a JSON API:

    POST /predict   multipart field `file` (repeat it for several images); ?heatmap=1 adds maps
    GET  /model     the model card, file size and measured latency
    GET  /health    liveness

Safe by default: binds 127.0.0.1; another address needs a token (`Authorization: Bearer TOKEN` on
every request but the page and /health) or an explicit `--no-auth`, and TLS is uvicorn's; a
per-client rate limit on /predict; the request body is capped while it streams in (a huge upload
is refused without being stored); images are checked by decoding them, never by their name;
uploads stay in memory, and neither they nor their results are written to disk or logged; a bad
upload gets a 4xx with a one-line message and the server keeps serving.
"""


import asyncio
import collections
import errno
import hmac
import ipaddress
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from medlite.runtime import Artifact, activate, open_artifact
from medlite.runtime.adapt import ImageError, load_for_model

DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_FILES = 16
DEFAULT_RATE_LIMIT = 120  # /predict requests per minute per client address
MIN_CONFIDENCE = 0.6
MIN_TOKEN_CHARS = 16  # a token short enough to guess is no protection
OPEN_PATHS = {"/", "/health"}  # the page (it asks for the token) and liveness: no model use, no data


def measure_latency(art: Artifact, repeats: int = 30) -> dict:
    """Batch-1 latency of the loaded file on this machine (median and p90, ms), measured at start-up."""
    spec = art.require_spec()
    x = np.zeros((1, spec.channels, spec.image_size, spec.image_size), np.float32)
    art.run(x)  # warm-up: the first call pays for lazy allocations
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        art.run(x)
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(float(np.median(samples)), 3), "p90_ms": round(float(np.percentile(samples, 90)), 3),
            "batch": 1, "threads": art.threads, "runs": repeats}


def create_app(model_path: Path, *, runtime: str | None = None, selection: str = "", threads: int = 0,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_files: int = DEFAULT_MAX_FILES,
               token: str | None = None, rate_limit: int = 0):
    """The FastAPI application for one deployed file (loaded once, shared by all requests).

    `token`: every request but the page and /health needs `Authorization: Bearer TOKEN` (401
    otherwise); `rate_limit`: at most that many /predict requests per minute per client address
    (429 beyond; 0 = no limit). Uploads stay in memory (never spooled to disk) and neither they nor
    their results are logged.
    """
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.formparsers import MultiPartParser

    from medlite.deploy.occlusion import occlusion_map, overlay_png
    from medlite.deploy.page import render_page

    art = open_artifact(model_path, runtime=runtime, threads=threads)
    spec = art.require_spec()
    names = art.class_names
    max_bytes = int(max_upload_mb * 1024 * 1024)
    # Whole request: every file at the limit plus the multipart framing.
    max_body = max_bytes * max_files + 64 * 1024
    latency = measure_latency(art)
    info = {**art.describe(), "selection": selection, "latency": latency,
            "limits": {"max_upload_mb": max_upload_mb, "max_files": max_files, "predict_per_minute": rate_limit or None},
            "auth": token is not None}
    # Patient images must not touch the disk: starlette spools a file part to a temporary file past
    # 1 MB; raised past the upload limit, every accepted upload stays in memory.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_bytes + 1)

    app = FastAPI(title="medlite", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.artifact = art
    recent: dict[str, collections.deque] = {}  # client address -> times of its recent /predict requests

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if token is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"error": "missing or wrong token: send `Authorization: Bearer TOKEN`"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if rate_limit and request.url.path == "/predict":
            now = time.monotonic()
            times = recent.setdefault(request.client.host if request.client else "?", collections.deque())
            while times and now - times[0] > 60:
                times.popleft()
            if len(times) >= rate_limit:
                wait = int(60 - (now - times[0])) + 1
                return JSONResponse({"error": f"rate limit: {rate_limit} predictions per minute per client; "
                                              f"retry in {wait} s"}, status_code=429, headers={"Retry-After": str(wait)})
            times.append(now)
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    def classify(data: bytes, filename: str, heatmap: bool) -> dict:
        try:
            pixels, adaptation = load_for_model(data, spec, art.card)
        except ImageError as err:
            status = 413 if "too large" in str(err) else 415
            raise HTTPException(status, f"{filename}: not a readable image ({err})") from None
        from medlite.data.preprocess import normalize

        x = normalize(pixels[None], spec)
        t0 = time.perf_counter()
        probs = activate(art.run(x), spec)
        ms = (time.perf_counter() - t0) * 1000
        if spec.multilabel:
            return multilabel(probs, ms, pixels, adaptation, x, filename, heatmap)
        k = int(art.decide(probs)[0])
        out = {
            "filename": filename,
            "predicted": names[k],
            "confidence": round(float(probs[0, k]), 6),
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs[0])},
            "low_confidence": bool(probs[0, k] < MIN_CONFIDENCE),
            "input": adaptation,
            "inference_ms": round(ms, 3),
        }
        if heatmap:
            heat = occlusion_map(art, x, k)
            out["heatmap_png"] = overlay_png(pixels, heat)
            out["heatmap_method"] = "occlusion (Zeiler & Fergus 2014) on the deployed file: drop in the predicted class's logit margin"
        return out

    def multilabel(probs, ms: float, pixels, adaptation: dict, x, filename: str, heatmap: bool) -> dict:
        """Every label with its probability, its stored threshold and the decision (`medlite predict`'s row);
        the heat-map explains the most probable label."""
        from medlite.deploy.predict import label_thresholds, multilabel_row

        row = multilabel_row(names, probs[0], art.decide(probs)[0], label_thresholds(art, None))
        out = {"filename": filename, **row, "input": adaptation, "inference_ms": round(ms, 3)}
        if heatmap:
            k = int(np.argmax(probs[0]))
            out["heatmap_png"] = overlay_png(pixels, occlusion_map(art, x, k, multilabel=True))
            out["heatmap_label"] = names[k]
            out["heatmap_method"] = ("occlusion (Zeiler & Fergus 2014) on the deployed file: drop in the logit of the "
                                     f"most probable label ({names[k]})")
        return out

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return render_page(info)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": Path(info["file"]).name}

    @app.get("/model")
    async def model() -> dict:
        return info

    @app.post("/predict")
    async def predict(request: Request, heatmap: bool = False):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise HTTPException(413, f"request of {int(length)} bytes exceeds the limit "
                                     f"({max_files} files of {max_upload_mb:g} MB)")
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise HTTPException(400, "expected multipart/form-data with the image in a field named `file`")
        body = bytearray()
        async for chunk in request.stream():  # capped while streaming: chunked uploads cannot bypass it
            body += chunk
            if len(body) > max_body:
                raise HTTPException(413, f"request exceeds the limit ({max_files} files of {max_upload_mb:g} MB)")
        request._body = bytes(body)  # starlette parses the form from this buffer
        try:
            form = await request.form(max_files=max_files, max_fields=32)
        except Exception as err:  # noqa: BLE001 - starlette's MultiPartException and parser errors
            raise HTTPException(400, f"malformed multipart body ({str(err)[:160]})") from None
        uploads = form.getlist("file")
        if not uploads:
            fields = ", ".join(sorted(set(form.keys()))) or "none"
            raise HTTPException(422, f"no field `file` in the form (fields sent: {fields})")
        results, errors = [], []
        for upload in uploads:
            if isinstance(upload, str):
                errors.append((422, "field `file` must be a file upload, not text"))
                continue
            name = Path(upload.filename or "upload").name[:120]
            data = await upload.read(max_bytes + 1)
            await upload.close()
            if not data:
                errors.append((400, f"{name}: empty upload"))
                continue
            if len(data) > max_bytes:
                errors.append((413, f"{name}: larger than {max_upload_mb:g} MB"))
                continue
            try:
                results.append(await asyncio.to_thread(classify, data, name, heatmap))
            except HTTPException as err:
                errors.append((err.status_code, err.detail))
        if not results:
            status, message = errors[0]
            raise HTTPException(status, message if len(errors) == 1 else f"{message} (and {len(errors) - 1} more)")
        return {"model": Path(info["file"]).name, "results": results,
                "errors": [{"status": s, "error": m} for s, m in errors]}

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, no_auth: bool, certfile: Path | None, keyfile: Path | None) -> list[str]:
    """Refuse a server reachable from other machines without a token (unless `no_auth`, said); TLS needs
    both files. Returns the warnings to print."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"--token: at least {MIN_TOKEN_CHARS} characters (e.g. `python -c 'import secrets; "
                         "print(secrets.token_urlsafe())'`)")
    if (certfile is None) != (keyfile is None):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: not found")
    warnings = []
    if not is_loopback(host):
        if token is None and not no_auth:
            raise ValueError(f"--host {host}: other machines could use the model; give --token (or MEDLITE_SERVE_TOKEN), "
                             "or --no-auth to serve without authentication")
        if token is None:
            warnings.append(f"warning: listening on {host} with --no-auth: anyone who can reach this machine can use "
                            "the model")
        if certfile is None:
            warnings.append(f"warning: listening on {host} without TLS: the token and the images cross the network "
                            "in clear (--ssl-certfile/--ssl-keyfile)")
    return warnings


def check_port(host: str, port: int) -> None:
    """UsageError naming `host:port` when it cannot be listened on (in use, or not an address here).

    Bound and released at once, with SO_REUSEADDR as uvicorn binds: a port another server listens
    on is refused, one left in TIME_WAIT by the last server is not."""
    import socket

    from medlite.errors import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            why = "in use (another server listens there); choose another --port" \
                if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
            raise UsageError(f"--port {port}: cannot listen on {host}:{port}: {why}") from None


def serve(model_path: Path, *, host: str = "127.0.0.1", port: int = 8000, runtime: str | None = None,
          selection: str = "", threads: int = 0, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          max_files: int = DEFAULT_MAX_FILES, say=print, token: str | None = None, no_auth: bool = False,
          rate_limit: int = DEFAULT_RATE_LIMIT, certfile: Path | None = None, keyfile: Path | None = None) -> None:
    """Run the app with uvicorn until interrupted; multipart spooling goes to a private temp dir."""
    import uvicorn

    warnings = check_exposure(host, token, no_auth, certfile, keyfile)  # refused before anything loads

    workdir = Path(tempfile.mkdtemp(prefix="medlite-serve-"))
    previous = tempfile.tempdir
    tempfile.tempdir = str(workdir)  # SpooledTemporaryFile rolls over here, nowhere else
    try:
        app = create_app(model_path, runtime=runtime, selection=selection, threads=threads,
                         max_upload_mb=max_upload_mb, max_files=max_files, token=token, rate_limit=rate_limit)
        for warning in warnings:
            say(warning)
        scheme = "https" if certfile else "http"
        say(f"serving {model_path} on {scheme}://{host}:{port}/" + (" (token required)" if token else "")
            + " (Ctrl+C to stop)")
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    ssl_certfile=str(certfile) if certfile else None, ssl_keyfile=str(keyfile) if keyfile else None)
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(workdir, ignore_errors=True)
