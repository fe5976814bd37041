"""The OpenAI-compatible application: `GET /v1/models` and `POST /v1/chat/completions`.

Each request is answered by `await llm.generate(prompt)` (or `llm.stream(prompt)`) in the
server's event loop, with no lock: concurrent requests reach the backend together, and the
local engine batches them. Errors are OpenAI's error JSON: 400 for a request the server
refuses, 401 for a wrong API key, 404 for an unknown model, 500 when the model fails (with
the backend's message, never a traceback; the traceback goes to the server's log).

    from tapeagents.serve import create_app

    app = create_app("local", api_key="secret")
    # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"tapeagents serve needs FastAPI and uvicorn ({error}); install them with "
        "pip install 'tapeagents[serve]'."
    ) from None

from tapeagents.errors import ContextWindowExceeded, TapeAgentsError
from tapeagents.llms import LLM, resolve_llm
from tapeagents.llms.base import LLMOutput, Prompt, TextDelta
from tapeagents.serve.models import ServedModel, served_models
from tapeagents.serve.protocol import (
    ChatRequest,
    RequestError,
    Sampling,
    completion,
    error_body,
    finish_reason,
    logprobs_object,
    new_completion_id,
    parse_request,
    stream_chunk,
    tool_call_deltas,
)

__all__ = ["ChatServer", "create_app"]

logger = logging.getLogger("tapeagents.serve")

_DONE = b"data: [DONE]\n\n"


class ChatServer:
    """The served models and the handling of one chat completion request.

    Args:
        models: The models clients may name; the first answers requests that name none.
        api_key: When set, every `/v1` request must send `Authorization: Bearer <api_key>`.
        allowed_hosts: Host names the server answers (the `Host` header); None: any. A server
            on loopback answers loopback names only, so a web page cannot reach it through DNS
            rebinding.
    """

    def __init__(
        self,
        models: list[ServedModel],
        *,
        api_key: str | None = None,
        allowed_hosts: Collection[str] | None = None,
    ) -> None:
        self.models = models
        self.api_key = api_key
        self.allowed_hosts = {host.lower() for host in allowed_hosts} if allowed_hosts else None
        self.created = int(time.time())
        self._by_name: dict[str, ServedModel] = {}
        for model in reversed(models):  # a model's own name wins over another's alias
            self._by_name[model.llm.model] = model
        for model in models:
            self._by_name[model.name] = model

    def authorize(self, request: Request) -> None:
        """Refuse a request to another host name or without the API key."""
        if self.allowed_hosts is not None:
            host = (request.url.hostname or "").lower()
            if host not in self.allowed_hosts:
                raise RequestError(
                    f"This server answers requests to {', '.join(sorted(self.allowed_hosts))}, "
                    f"not {host!r}; connect through one of those names.",
                    status=403,
                    code="host_not_allowed",
                )
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), self.api_key.encode()
        ):
            raise RequestError(
                "Missing or wrong API key: send the key the server was started with as "
                "'Authorization: Bearer <key>' (api_key= in OpenAI clients).",
                status=401,
                code="invalid_api_key",
            )

    def model(self, name: str | None) -> ServedModel:
        """The served model a request names (the first one when it names none)."""
        if name is None:
            return self.models[0]
        model = self._by_name.get(name)
        if model is None:
            served = ", ".join(repr(m.name) for m in self.models)
            raise RequestError(
                f"The model {name!r} is not served here; this server serves {served} "
                "(GET /v1/models lists them).",
                status=404,
                param="model",
                code="model_not_found",
            )
        return model

    def model_list(self) -> dict[str, Any]:
        return {"object": "list", "data": [m.card(self.created) for m in self.models]}

    async def warm_up(self) -> None:
        """Load every served model now (one one-token answer each), so that a broken model or
        adapter is reported at start and the first request is not slow."""
        prompt = Prompt(messages=[{"role": "user", "content": "Hi"}])
        for model in self.models:
            await model.llm_for(Sampling(max_tokens=1)).generate(prompt)

    async def chat(self, chat: ChatRequest) -> Response:
        """Answer a validated request: a `chat.completion`, or a stream of chunks."""
        model = self.model(chat.model)
        sampling = chat.sampling()
        llm = model.llm_for(sampling)
        prompt = chat.prompt()
        answer = _Answer(
            model=model.name,
            logprobs=bool(chat.logprobs),
            top_logprobs=sampling.top_logprobs,
            max_tokens=model.max_tokens(sampling),
            include_usage=chat.include_usage,
        )
        if chat.stream:
            return await self._stream(llm, prompt, answer)
        try:
            output = await llm.generate(prompt)
        except Exception as error:
            raise _backend_failure(error, model.name) from None
        return JSONResponse(answer.completion(output))

    async def _stream(self, llm: LLM, prompt: Prompt, answer: _Answer) -> Response:
        stream = llm.stream(prompt)
        try:
            first = await anext(stream)  # a failure before any output is still an HTTP error
        except Exception as error:
            await stream.aclose()  # type: ignore[attr-defined]
            if isinstance(error, StopAsyncIteration):
                error = RuntimeError("the model's stream ended without an answer")
            raise _backend_failure(error, answer.model) from None
        hold = bool(prompt.tools) and prompt.tool_choice != "none"
        return StreamingResponse(
            answer.events(first, stream, _LiveText(hold_calls=hold)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


class _LiveText:
    """What part of the text streamed so far may be sent at once.

    When the model may call tools, a call is written as JSON in the text and taken out of the
    content at the end, so text from the first `{` (or code fence) on, and trailing blanks,
    wait for the complete output.
    """

    def __init__(self, *, hold_calls: bool) -> None:
        self.hold_calls = hold_calls
        self.text = ""
        self.sent = 0

    def add(self, piece: str) -> str:
        self.text += piece
        limit = len(self.text)
        if self.hold_calls:
            cuts = [i for i in (self.text.find("{"), self.text.find("`")) if i >= 0]
            limit = len(self.text[: min(cuts, default=limit)].rstrip())
        if limit <= self.sent:
            return ""
        ready = self.text[self.sent : limit]
        self.sent = limit
        return ready

    def rest(self, content: str | None) -> str:
        """The part of the final content not sent yet (none if the sent text is not its start)."""
        content = content or ""
        sent = self.text[: self.sent]
        return content[len(sent) :] if content.startswith(sent) else ""


class _Answer:
    """How one request's answer is written: its model name, logprobs and usage options."""

    def __init__(
        self,
        *,
        model: str,
        logprobs: bool,
        top_logprobs: int,
        max_tokens: int | None,
        include_usage: bool,
    ) -> None:
        self.model = model
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.include_usage = include_usage
        self.id = new_completion_id()

    def completion(self, output: LLMOutput) -> dict[str, Any]:
        return completion(
            output,
            model=self.model,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            max_tokens=self.max_tokens,
            completion_id=self.id,
        )

    def chunk(self, **fields: Any) -> bytes:
        return stream_chunk(self.id, self.model, include_usage=self.include_usage, **fields)

    async def events(
        self,
        first: TextDelta | LLMOutput,
        stream: AsyncIterator[TextDelta | LLMOutput],
        live: _LiveText,
    ) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed answer, ending with `data: [DONE]`."""
        yield self.chunk(delta={"role": "assistant", "content": ""})
        try:
            item = first
            while isinstance(item, TextDelta):
                ready = live.add(item.text)
                if ready:
                    yield self.chunk(delta={"content": ready})
                item = await anext(stream)
            for chunk in self._ending(item, live):
                yield chunk
        except Exception as error:
            failure = (
                error if isinstance(error, RequestError) else _backend_failure(error, self.model)
            )
            yield b"data: " + json.dumps(failure.body(), ensure_ascii=False).encode() + b"\n\n"
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        yield _DONE

    def _ending(self, output: LLMOutput, live: _LiveText) -> list[bytes]:
        chunks: list[bytes] = []
        rest = live.rest(output.content)
        logprobs = logprobs_object(output, self.top_logprobs) if self.logprobs else None
        if rest or logprobs is not None:
            chunks.append(self.chunk(delta={"content": rest}, logprobs=logprobs))
        if output.tool_calls:
            chunks.append(self.chunk(delta={"tool_calls": tool_call_deltas(output.tool_calls)}))
        chunks.append(self.chunk(finish=finish_reason(output, self.max_tokens)))
        if self.include_usage:
            chunks.append(self.chunk(usage=output.usage))
        return chunks


def _backend_failure(error: BaseException, model: str) -> RequestError:
    """The error a client sees when the model failed: 400 for a prompt too long, else 500."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, ContextWindowExceeded):
        return RequestError(str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, TapeAgentsError):
        logger.warning("model %s failed: %s", model, error)
        return RequestError(f"The model {model!r} failed: {error}", status=500, kind="server_error")
    logger.error("model %s failed", model, exc_info=error)
    return RequestError(
        f"The model {model!r} failed with {type(error).__name__}; the server's log has the "
        "details.",
        status=500,
        kind="server_error",
    )


def create_app(
    llm: LLM | str,
    *,
    name: str | None = None,
    adapters: Mapping[str, str] | None = None,
    api_key: str | None = None,
    allowed_hosts: Collection[str] | None = None,
) -> FastAPI:
    """An OpenAI-compatible application serving `llm` (an `LLM`, or a model string).

    Args:
        llm: The backend, or a model string `resolve_llm` knows (`"local"`, `"local:<path>"`,
            `"test"`, ...).
        name: The model id clients send; default: the backend's model name.
        adapters: LoRA adapters of a local model, served as more models: name to directory.
        api_key: The key every `/v1` request must send as a bearer token; None: no key.
        allowed_hosts: Host names to answer; None: any (see `ChatServer`).

    Raises:
        UsageError: An unknown model string, adapters for a model that is not local, a
            missing adapter directory.
    """
    models = served_models(resolve_llm(llm), name=name, adapters=adapters)
    server = ChatServer(models, api_key=api_key, allowed_hosts=allowed_hosts)
    app = FastAPI(title="tapeagents serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> Response:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {error.detail}."
        if error.status_code == 404:
            message += " This server has GET /v1/models and POST /v1/chat/completions."
        return JSONResponse(error_body(message), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> Response:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
        body = error_body(
            f"Internal error ({type(error).__name__}); the server's log has the details.",
            kind="server_error",
        )
        return JSONResponse(body, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        server.authorize(request)
        return server.model_list()

    @app.get("/v1/models/{model:path}")
    async def get_model(request: Request, model: str) -> dict[str, Any]:
        server.authorize(request)
        return server.model(model).card(server.created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        server.authorize(request)
        return await server.chat(parse_request(await request.body()))

    return app
