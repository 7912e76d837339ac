"""The capsule explorer: one static page and a small JSON API on FastAPI, served by uvicorn.

Endpoints (all errors are JSON ``{"detail": "..."}`` with a 4xx code):

* ``GET /``, ``/app.js``, ``/style.css``: the page, shipped as package data;
* ``GET /api/info``: the model's shapes, class names, what it provides and slider range;
* ``POST /api/predict`` ``{"pixels": [C·H·W floats in [0, 1]]}``: class scores (capsule
  lengths, EM activations or softmax probabilities), the winner and, for a capsule model,
  its pose, its reconstruction and its coupling map on the children's grid;
* ``POST /api/decode`` ``{"class_index": k, "pose": [D floats]}``: the decoder's image of
  class capsule k with that pose (all other capsules masked, as in training);
* ``GET /api/random``: a random test image of the run's own test set and its label(s).

Any :class:`~capsnet.models.contract.Classifier` works; poses, coupling map and decoding
appear when the model provides them (``capsules``, ``has_decoder`` in ``/api/info``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Mapping
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

from capsnet import _deprecated
from capsnet.data.images import normalize_images
from capsnet.data.tasks import task_class_names
from capsnet.errors import CapsNetError
from capsnet.models.contract import CapsuleClassifier, Classifier, PoseDecoder, provides, require
from capsnet.targets import OverlayTargets, Targets
from capsnet.training.run import Run

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SLIDER = {"min": -0.5, "max": 0.5, "step": 0.05, "mark": 0.25}  # paper, Fig. 4: ±0.25
BODY_TIMEOUT = 10.0  # seconds a client has to send a whole request body (else 408)
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
    for a body over ``max_body`` bytes and JSON 408 for one not received within
    ``body_timeout`` seconds (read before the app sees it), security headers."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        hosts: tuple[str, ...] | None,
        body_timeout: float = BODY_TIMEOUT,
    ):
        self.app, self.max_body, self.hosts = app, max_body, hosts
        self.body_timeout = body_timeout

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
        deadline = time.monotonic() + self.body_timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                return await refuse(
                    408, f"request body not received within {self.body_timeout:g} s"
                )
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


def _base_app(max_body: int, hosts: tuple[str, ...] | None, body_timeout: float) -> FastAPI:
    """The app without its API: guard, JSON errors, the page and its assets."""
    app = FastAPI(title="capsnet explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, max_body=max_body, hosts=hosts, body_timeout=body_timeout)

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

    assets = files("capsnet.tools.explore") / "static"
    for route, name in ASSETS.items():
        app.get(route)(_asset((assets / name).read_text(), MEDIA[Path(name).suffix]))
    app.get("/favicon.ico")(lambda: Response(status_code=204))
    return app


class _Api:
    """The JSON API's answers for one model (what it provides of the contract decides)."""

    def __init__(
        self,
        model: nn.Module,
        dataset: str | None,
        images,
        labels,
        names,
        normalize: str,
        overrides: Mapping[str, Any],
    ) -> None:
        self.model, self.dataset, self.images, self.labels = model, dataset, images, labels
        self.normalize = normalize
        self.overrides = dict(overrides)  # the fields of the saved config the model replaces
        cfg = model.config
        self.shape = cfg.input_shape  # (C, H, W)
        self.k = cfg.num_classes
        self.names = tuple(names) if names else task_class_names(dataset, self.k)
        self.capsules = provides(model, CapsuleClassifier)
        self.has_decoder = provides(model, PoseDecoder)
        self.pose_dim = model.pose_dim if self.capsules else None
        self.grid = model.coupling_grid if self.capsules else None  # (types, H', W')
        self.n_test = 0 if images is None or labels is None else len(images)
        self.rng = random.Random()

    def info(self) -> dict[str, Any]:
        grid = self.grid
        return {
            "dataset": self.dataset,
            "class_names": self.names,
            "in_channels": self.shape[0],
            "input_size": list(self.shape[1:]),
            "capsules": self.capsules,
            "class_dim": self.pose_dim,
            "coupling_grid": list(grid) if grid else None,  # (types, H', W') of the children
            # the same, as 0.1 named it (the children are primary capsules in CapsNet only)
            "primary_types": grid[0] if grid else None,
            "primary_grid": list(grid[1:]) if grid else None,
            "has_decoder": self.has_decoder,
            "test_images": self.n_test,
            "slider": SLIDER,
            "model_config": self.model.config.to_dict(),  # as served, overrides included
            "overrides": self.overrides,
        }

    def predict(self, req: PredictRequest) -> dict[str, Any]:
        c, h, w = self.shape
        if len(req.pixels) != c * h * w:
            raise HTTPException(422, f"pixels: expected {c}×{h}×{w} = {c * h * w} values")
        x = torch.tensor(req.pixels, dtype=torch.float32).view(1, c, h, w)
        if self.normalize != "none":  # as the run's images were in training
            x = normalize_images(x.mul(255).round().to(torch.uint8), self.normalize) / 255
        with torch.no_grad():
            out = self.model(x)
        k = int(out.scores[0].argmax())
        answer = {"scores": _rounded(out.scores[0], 6), "prediction": k}
        answer["class_name"] = self.names[k]
        if not self.capsules:
            return answer | {"pose": None, "reconstruction": None, "coupling": None}
        coupling = out.coupling[0, :, k].view(self.grid).mean(0)  # (H', W')
        recon = out.reconstructions if self.has_decoder else None
        return answer | {
            "pose": _rounded(out.poses[0, k], 6),
            "reconstruction": None if recon is None else _rounded(recon[0], 4),
            "coupling": _rounded(coupling, 6),
        }

    def decode(self, req: DecodeRequest) -> dict[str, Any]:
        if not self.has_decoder:
            raise HTTPException(409, "this model has no decoder")
        if not 0 <= req.class_index < self.k:
            raise HTTPException(422, f"class_index: must be in 0..{self.k - 1}")
        if len(req.pose) != self.pose_dim:
            raise HTTPException(422, f"pose: expected {self.pose_dim} values")
        poses = torch.zeros(1, self.k, self.pose_dim)  # (1, K, D)
        poses[0, req.class_index] = torch.tensor(req.pose)
        mask = torch.nn.functional.one_hot(torch.tensor([req.class_index]), self.k)
        with torch.no_grad():
            recon = self.model.decode(poses, mask.float())
        return {"reconstruction": _rounded(recon[0], 4)}

    def random_test_image(self) -> dict[str, Any]:
        if self.n_test == 0:
            raise HTTPException(404, "no test images (the run's dataset was not found)")
        i = self.rng.randrange(self.n_test)
        y = self.labels[i]
        labels = y.labels.tolist() if isinstance(y, OverlayTargets) else [int(y)]
        return {
            "index": i,
            "label": labels[0] if len(labels) == 1 else labels,
            "class_name": " + ".join(self.names[k] for k in labels),
            "pixels": _rounded(self.images[i].float() / 255, 4),
        }


@_deprecated.keyword_only(1)
def create_app(
    model: nn.Module,
    *,
    dataset: str | None = None,
    test_images: Tensor | None = None,
    test_labels: Targets | None = None,
    hosts: tuple[str, ...] | None = LOOPBACK,
    body_timeout: float = BODY_TIMEOUT,
    class_names: tuple[str, ...] | None = None,
    normalize: str = "none",
    overrides: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The explorer for ``model`` (a Classifier in eval mode on the CPU).

    ``test_images`` (N, C, H, W) uint8 with ``test_labels`` (N,) or OverlayTargets feed
    "random test image"; ``hosts`` are the Host header names accepted (None: any); a
    request body must arrive within ``body_timeout`` seconds. ``class_names`` default to
    the dataset's; ``normalize`` (see capsnet.data.images) is applied to every image sent
    to /api/predict, as the run's images were in training. ``overrides`` (the fields of
    the saved config the model was built with replaced; see :meth:`Run.load_model`) are
    only reported, in ``/api/info`` with the model's config.
    """
    require(model, "explore", Classifier)
    api = _Api(model, dataset, test_images, test_labels, class_names, normalize, overrides or {})
    app = _base_app(16384 + 32 * math.prod(api.shape), hosts, body_timeout)
    app.get("/api/info")(api.info)
    app.post("/api/predict")(api.predict)
    app.post("/api/decode")(api.decode)
    app.get("/api/random")(api.random_test_image)
    return app


def load_explorer(
    run_dir: str | Path,
    data_dir: str | None = None,
    host: str = "127.0.0.1",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The explorer of a run; random test images come from the run's own test set if its
    data is found (never downloaded). Host headers are checked unless ``host`` is a
    wildcard address. ``overrides`` replace fields of the saved model config (see
    :meth:`Run.load_model`)."""
    run = Run(run_dir)
    model = run.load_model(overrides=overrides)
    require(model, "explore", Classifier)
    images = labels = None
    if run.dataset is not None:
        try:
            images, labels = run.test_set(data_dir, download=False)
        except CapsNetError as e:
            log.warning("no random test images: %s", e)
    if host not in LOOPBACK:
        log.warning("listening on %s: whoever can reach it can use it (no authentication)", host)
    hosts = None if host in ("", "0.0.0.0", "::") else (*LOOPBACK, host)
    policy = run.image_policy
    return create_app(
        model,
        dataset=run.dataset,
        test_images=images,
        test_labels=labels,
        hosts=hosts,
        class_names=run.class_names_for(model.config.num_classes),
        normalize=policy.normalize if policy else "none",
        overrides=overrides,
    )


__all__ = ["BODY_TIMEOUT", "create_app", "load_explorer"]
