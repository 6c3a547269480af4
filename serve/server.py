"""``python -m serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [options]``

Serves a fine-tuned model dir (``<out_dir>/model``) over HTTP with FastAPI + uvicorn:

- ``POST /predict`` with ``{"texts": [...]}``, ``{"pairs": [[a, b], ...]}`` or, for token
  classification, ``{"tokens": [[word, ...], ...]}`` (``texts`` are split there at spaces, and
  Han/kana a character each): ``{"predictions": [...]}``, one per input: label, score and
  probabilities; ``value`` for regression; per-word labels and entity spans for token
  classification.
- ``GET /health``, ``GET /metadata`` (task, labels, max_len, base model, training summary, batching),
  ``GET /docs`` and ``/openapi.json`` from FastAPI.

Bad input gets a 4xx with ``{"error": "<one line>"}``; beyond ``--max-queue`` requests in progress,
503. SIGTERM (uvicorn's handler) stops accepting connections, answers the requests in flight, exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import asynccontextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local dir, never a hub download

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, StrictStr  # noqa: E402

from finetune import InputError  # noqa: E402
from serve.batcher import Batcher, Overloaded  # noqa: E402
from serve.engine import ModelInfo, Predictor  # noqa: E402


class PredictRequest(BaseModel):
    """Exactly one of the three fields, a non-empty list."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = None
    pairs: list[tuple[StrictStr, StrictStr]] | None = None
    tokens: list[list[StrictStr]] | None = None


class Limits(BaseModel):
    max_items: int = 64  # inputs per request
    max_chars: int = 10_000  # characters per text (pair: both texts; tokens: all words)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return 400, f"request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    if where == "body" and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return 422, 'request body must be a JSON object such as {"texts": ["..."]}'
    if first.get("type") == "extra_forbidden":
        return 422, f"unknown field {where!r}; send one of texts, pairs, tokens"
    return 422, f"{where}: {first.get('msg', 'invalid value')}"


def check_request(body: PredictRequest, info: ModelInfo, limits: Limits) -> list:
    """The request's inputs, or ValueError with the one-line reason."""
    task = info.task
    given = [name for name in ("texts", "pairs", "tokens") if getattr(body, name) is not None]
    if len(given) != 1:
        raise ValueError(f"send exactly one of texts, pairs, tokens (got {', '.join(given) or 'none'})")
    name = given[0]
    items = getattr(body, name)
    if not items:
        raise ValueError(f"{name} is empty; send at least one input")
    if len(items) > limits.max_items:
        raise ValueError(f"{name} has {len(items)} inputs; at most {limits.max_items} per request")
    if name == "tokens" and task != "token_classification":
        raise ValueError(f"tokens are for token classification; this model does {task}: send texts")
    if name == "pairs" and task == "token_classification":
        raise ValueError("pairs are not supported by token classification; send tokens or texts")
    if name == "pairs" and info.pair is False:
        raise ValueError("this model was trained on single texts, not pairs; send texts")
    if name == "texts" and info.pair and task != "token_classification":
        raise ValueError("this model was trained on sentence pairs; send pairs: [[a, b], ...]")
    for index, item in enumerate(items):
        parts = item if isinstance(item, (tuple, list)) else [item]
        if not any(part.strip() for part in parts):
            raise ValueError(f"{name}[{index}] is empty")
        size = sum(len(part) for part in parts)
        if size > limits.max_chars:
            raise ValueError(f"{name}[{index}] has {size} characters; at most {limits.max_chars}")
    if name == "pairs":
        return [tuple(pair) for pair in items]
    return list(items)


def create_app(predictor: Predictor, batcher: Batcher, limits: Limits) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    info = predictor.info
    app = FastAPI(
        title="bert-pretrain fine-tuned model",
        description=f"{info.task} model from {predictor.model_dir}",
        lifespan=lifespan,
    )

    # The largest valid body (every input at max_chars, JSON-escaped at worst 6 bytes a character)
    # plus slack: anything longer is refused from its Content-Length before it is read into memory.
    max_body = limits.max_items * (limits.max_chars * 6 + 64) + 1024

    @app.middleware("http")
    async def _body_size(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            return _error(413, f"request body of {int(length):,} bytes is over the limit of {max_body:,}")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(*_validation_message(err))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "pending": batcher.pending}

    @app.get("/metadata")
    async def metadata() -> dict:
        return {
            **predictor.metadata(),
            "batching": {
                "enabled": batcher.enabled,
                "max_batch_size": batcher.max_batch_size,
                "max_wait_ms": batcher.max_wait_s * 1000,
                "max_queue": batcher.max_queue,
                "forwards": batcher.forwards,
                "requests": batcher.batched_requests,
            },
            "limits": limits.model_dump(),
        }

    @app.post("/predict", responses={400: {}, 422: {}, 503: {}})
    async def predict(body: PredictRequest):
        try:
            items = check_request(body, info, limits)
        except ValueError as err:
            return _error(422, str(err))
        try:
            return {"predictions": await batcher.submit(items)}
        except Overloaded as err:
            return JSONResponse(status_code=503, content={"error": str(err)}, headers={"Retry-After": "1"})
        except Exception as err:  # a model failure answers this batch with 500; the server lives on
            return _error(500, f"inference failed: {type(err).__name__}: {str(err).splitlines()[0]}")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serve",
        description="Serve a fine-tuned model dir over HTTP (FastAPI + uvicorn): POST /predict, GET /health, "
        "/metadata, /docs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model_dir", help="a fine-tuned model dir (<out_dir>/model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32, help="inputs per forward pass")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its forward",
    )
    parser.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    parser.add_argument(
        "--max-queue", type=int, default=256, help="requests in progress before new ones get 503"
    )
    parser.add_argument("--max-items", type=int, default=Limits().max_items, help="inputs per request")
    parser.add_argument("--max-chars", type=int, default=Limits().max_chars, help="characters per input")
    parser.add_argument(
        "--threads", type=int, help="torch threads for inference (unset: torch's default, the physical cores)"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 where the CPU has native bf16 matmuls (or on a GPU), else fp32",
    )
    parser.add_argument(
        "--log-level", default="warning", help="uvicorn's log level (info logs every request)"
    )
    args = parser.parse_args(argv)
    for name in ("max_batch_size", "max_queue", "max_items", "max_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    try:
        predictor = Predictor(args.model_dir, dtype=args.dtype, threads=args.threads)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    limits = Limits(max_items=args.max_items, max_chars=args.max_chars)
    batcher = Batcher(
        predictor,
        max_batch_size=args.max_batch_size,
        max_wait_s=args.max_wait_ms / 1000,
        max_queue=args.max_queue,
        enabled=not args.no_batching,
    )
    import uvicorn

    info = predictor.info
    print(
        f"serving {predictor.model_dir} ({info.task}, {len(info.labels) or 'value'} labels, "
        f"{predictor.dtype}, {predictor.threads} threads, batching "
        f"{'off' if args.no_batching else f'<= {batcher.max_batch_size} inputs / {args.max_wait_ms:g} ms'}) "
        f"on http://{args.host}:{args.port} (docs: /docs)",
        flush=True,
    )
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown (stop accepting, answer the requests in
    # flight, run the lifespan's end), then re-raises the signal under the handler found at start:
    # this one, so that a clean shutdown exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    uvicorn.run(
        create_app(predictor, batcher, limits),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )
    _exit_after_shutdown(signal.SIGTERM, None)


def _exit_after_shutdown(_signal: int, _frame) -> None:
    print("server stopped", flush=True)
    raise SystemExit(0)


if __name__ == "__main__":
    main()
