"""The capsule explorer: one static page and a small JSON API on FastAPI, served by uvicorn.

Endpoints (all errors are JSON ``{"detail": "..."}`` with a 4xx code):

* ``GET /``, ``/app.js``, ``/style.css``: the page, shipped as package data;
* ``GET /api/info``: the model's shapes, class names and slider range;
* ``POST /api/predict`` ``{"pixels": [C·H·W floats in [0, 1]]}``: capsule lengths, the winner,
  its pose, its reconstruction and its coupling map on the primary capsule grid;
* ``POST /api/decode`` ``{"class_index": k, "pose": [D floats]}``: the decoder's image of
  class capsule k with that pose (all other capsules masked, as in training);
* ``GET /api/random``: a random test image of the run's dataset and its label.
"""

from __future__ import annotations

import logging
import random
import socket
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor, nn

from capsnet.checkpoint import load_run
from capsnet.data import custom, load_split
from capsnet.data.images import normalize_images
from capsnet.data.tasks import load_test
from capsnet.errors import CapsNetError, ConfigError
from capsnet.predict import class_names, run_data, run_train_config

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SLIDER = {"min": -0.5, "max": 0.5, "step": 0.05, "mark": 0.25}  # paper, Fig. 4: ±0.25
POSE_LIMIT = 2.0  # |pose component| accepted by /api/decode (capsule lengths are < 1)
ASSETS = {"/": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

Pixel = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PoseValue = Annotated[float, Field(ge=-POSE_LIMIT, le=POSE_LIMIT, allow_inf_nan=False)]


class _Body(BaseModel):
    # strict: numbers only (no "0.5" strings, no booleans)
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(_Body):
    pixels: list[Pixel]  # (C·H·W,) in C, H, W order


class DecodeRequest(_Body):
    class_index: int
    pose: list[PoseValue]  # (D,)


def _json_error(status: int, detail: str) -> Response:
    return JSONResponse({"detail": detail}, status_code=status)


class _Guard:
    """ASGI middleware: JSON 400 for a Host header not in ``hosts`` (DNS rebinding), JSON 413
    for a body over ``max_body`` bytes (read before the app sees it), security headers."""

    def __init__(self, app: ASGIApp, max_body: int, hosts: tuple[str, ...] | None):
        self.app, self.max_body, self.hosts = app, max_body, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], *SECURITY_HEADERS]}
            await send(message)

        async def refuse(status: int, detail: str) -> None:
            await _json_error(status, detail)(scope, receive, send_secure)

        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        host = host[1 : host.find("]")] if host.startswith("[") else host.split(":")[0]
        if self.hosts is not None and host not in self.hosts:
            return await refuse(400, "unexpected Host header")
        too_large = f"request body over {self.max_body} bytes"
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await refuse(400, "bad Content-Length")
        if declared > self.max_body:
            return await refuse(413, too_large)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await refuse(413, too_large)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send_secure)


def _rounded(t: Tensor, digits: int) -> list[float]:
    return [round(v, digits) for v in t.flatten().tolist()]


def _asset(text: str, media_type: str) -> Any:
    def get() -> Response:  # no parameters: nothing from the request reaches the response
        return Response(text, media_type=media_type)

    return get


def create_app(
    model: nn.Module,
    dataset: str | None = None,
    test_images: Tensor | None = None,
    test_labels: Tensor | None = None,
    hosts: tuple[str, ...] | None = LOOPBACK,
    saved_names: list[str] | None = None,
    normalize: str = "none",
) -> FastAPI:
    """The explorer for ``model`` (a CapsNet in eval mode on the CPU).

    ``test_images`` (N, C, H, W) uint8 with ``test_labels`` (N,) feed "random test image";
    ``hosts`` are the Host header names accepted (None: any); ``saved_names`` are the
    class names saved in the run (default: the dataset's); ``normalize`` is the run's
    normalisation (see capsnet.data.images), applied to every image sent to /api/predict.
    """
    cfg = model.config
    c, (h, w) = cfg.in_channels, cfg.input_size
    names = class_names(dataset, cfg.num_classes, saved_names)
    has_decoder = getattr(model, "decoder", None) is not None
    n_test = 0 if test_images is None else len(test_images)
    rng = random.Random()
    assets = files("capsnet.explore") / "static"

    app = FastAPI(title="capsnet explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, max_body=16384 + 32 * c * h * w, hosts=hosts)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first, loc = errors[0], errors[0]["loc"]
        if first["type"] == "json_invalid":  # loc is ("body", character offset)
            return _json_error(422, f"body: invalid JSON at character {loc[-1]}")
        where = ".".join(str(p) for p in loc[1:]) or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return _json_error(422, f"{where}: {first['msg']}{more}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        # Starlette re-raises the exception after this response: the server logs it.
        return _json_error(500, "internal error (see the server log)")

    for route, name in ASSETS.items():
        app.get(route)(_asset((assets / name).read_text(), MEDIA[Path(name).suffix]))
    app.get("/favicon.ico")(lambda: Response(status_code=204))

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "dataset": dataset,
            "class_names": names,
            "in_channels": c,
            "input_size": [h, w],
            "class_dim": cfg.class_dim,
            "primary_types": cfg.coupling_grid[0],  # the children routed to the classes
            "primary_grid": list(cfg.coupling_grid[1:]),
            "has_decoder": has_decoder,
            "test_images": n_test,
            "slider": SLIDER,
        }

    @app.post("/api/predict")
    def predict(req: PredictRequest) -> dict[str, Any]:
        if len(req.pixels) != c * h * w:
            raise HTTPException(422, f"pixels: expected {c}×{h}×{w} = {c * h * w} values")
        x = torch.tensor(req.pixels, dtype=torch.float32).view(1, c, h, w)
        if normalize != "none":  # as the run's images were in training
            x = normalize_images(x.mul(255).round().to(torch.uint8), normalize).float() / 255
        with torch.no_grad():
            out = model(x)
        k = int(out.lengths[0].argmax())
        coupling = out.coupling[0, :, k].view(cfg.coupling_grid).mean(0)  # (H', W')
        recon = out.reconstructions
        return {
            "lengths": _rounded(out.lengths[0], 6),
            "prediction": k,
            "class_name": names[k],
            "pose": _rounded(out.poses[0, k], 6),
            "reconstruction": None if recon is None else _rounded(recon[0], 4),
            "coupling": _rounded(coupling, 6),
        }

    @app.post("/api/decode")
    def decode(req: DecodeRequest) -> dict[str, Any]:
        if not has_decoder:
            raise HTTPException(409, "this model has no decoder")
        if not 0 <= req.class_index < cfg.num_classes:
            raise HTTPException(422, f"class_index: must be in 0..{cfg.num_classes - 1}")
        if len(req.pose) != cfg.class_dim:
            raise HTTPException(422, f"pose: expected {cfg.class_dim} values")
        poses = torch.zeros(1, cfg.num_classes, cfg.class_dim)  # (1, K, D)
        poses[0, req.class_index] = torch.tensor(req.pose)
        mask = torch.nn.functional.one_hot(torch.tensor([req.class_index]), cfg.num_classes)
        with torch.no_grad():
            recon = model.decode(poses, mask.float())
        return {"reconstruction": _rounded(recon[0], 4)}

    @app.get("/api/random")
    def random_test_image() -> dict[str, Any]:
        if test_images is None or test_labels is None or n_test == 0:
            raise HTTPException(404, "no test images (the run's dataset was not found)")
        i = rng.randrange(n_test)
        label = int(test_labels[i])
        return {
            "index": i,
            "label": label,
            "class_name": names[label],
            "pixels": _rounded(test_images[i].float() / 255, 4),
        }

    return app


def load_explorer(
    run_dir: str | Path, data_dir: str | None = None, host: str = "127.0.0.1"
) -> FastAPI:
    """The explorer of a run; random test images come from the run's dataset if it is found
    (never downloaded). Host headers are checked unless ``host`` is a wildcard address."""
    model, config = load_run(run_dir)
    train_config = run_train_config(run_dir)
    dataset = train_config.get("dataset")
    images = labels = None
    if dataset is not None:
        data_dir = data_dir or train_config.get("data_dir")
        try:
            if custom.task(dataset) is not None:  # folder:, npz:, …: as in training
                options = train_config.get("dataset_options")
                images, labels = load_test(dataset, data_dir, options=options)
            else:
                images, labels = load_split(dataset, "test", data_dir, download=False)
        except CapsNetError as e:
            log.warning("no random test images: %s", e)
        if images is not None and images.shape[1:] != (config.in_channels, *config.input_size):
            log.warning("no random test images: %s images do not fit the model", dataset)
            images = labels = None
    if host not in LOOPBACK:
        log.warning("listening on %s: whoever can reach it can use it (no authentication)", host)
    hosts = None if host in ("", "0.0.0.0", "::") else (*LOOPBACK, host)
    saved = run_data(run_dir)  # class names and image policy saved by training
    policy = custom.saved_policy(saved)
    normalize = policy.normalize if policy is not None else "none"
    return create_app(model, dataset, images, labels, hosts, saved.get("class_names"), normalize)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: a free one); ConfigError if it can't."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: ASGIApp, sock: socket.socket) -> None:
    """Serve ``app`` on a listening socket with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


__all__ = ["create_app", "listen", "load_explorer", "serve", "url"]
