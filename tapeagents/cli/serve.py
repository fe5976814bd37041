"""The `serve` command: a model behind an OpenAI-compatible HTTP API (`tapeagents.serve`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from tapeagents.cli.common import err, out
from tapeagents.errors import UsageError

__all__ = ["app", "binding_warning", "parse_adapters"]

app = typer.Typer()


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`NAME=DIR` (or just `DIR`, named after its last part) to a map of names to directories."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep:
            name, directory = Path(spec.rstrip("/\\")).name, spec
        name, directory = name.strip(), directory.strip()
        if not name or not directory:
            raise UsageError(
                f"--adapter {spec!r} is not of the form NAME=DIR or DIR (for example "
                "calc=runs/lora or runs/lora)."
            )
        if name in adapters:
            raise UsageError(f"--adapter names {name!r} twice; give each adapter its own name.")
        adapters[name] = directory
    return adapters


def binding_warning(host: str, api_key: str | None) -> str | None:
    """What to tell the user before listening on `host`, or None when loopback only."""
    from tapeagents.studio.security import is_loopback

    if is_loopback(host):
        return None
    if api_key:
        return (
            f"Listening on {host}: other machines can reach the model. The API key travels in "
            "clear text over plain HTTP; put a TLS proxy in front outside a trusted network."
        )
    return (
        f"Listening on {host} without --api-key: anyone who can reach this machine can use the "
        "model. Pass --api-key KEY (or set TAPEAGENTS_SERVE_API_KEY) to require a key."
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@app.command(rich_help_panel="Models")
def serve(
    model: Annotated[
        str,
        typer.Option(
            help="Model string: local, local:<path>, test, litellm:<model>, ... (see resolve_llm)."
        ),
    ] = "local",
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            metavar="[NAME=]DIR",
            help="A LoRA adapter from `tapeagents finetune`, served as the model NAME (default: "
            "the directory's name) beside the base model; repeat for several.",
        ),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="The base model's id for clients (default: its model name)."),
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; other machines can connect off loopback."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="TAPEAGENTS_SERVE_API_KEY",
            help="Key clients must send as 'Authorization: Bearer KEY' (api_key= in clients).",
        ),
    ] = None,
) -> None:
    """Serve a model (the local one by default) behind an OpenAI-compatible API."""
    from tapeagents.studio.security import LOOPBACK_HOSTS, is_loopback

    try:
        import uvicorn

        from tapeagents.serve.app import create_app
    except ImportError:
        raise UsageError(
            "tapeagents serve needs FastAPI and uvicorn: pip install 'tapeagents[serve]'."
        ) from None
    warning = binding_warning(host, api_key)
    if warning:
        err().print(f"[bold yellow]Warning:[/] {warning}", soft_wrap=True)
    application = create_app(
        model,
        name=served_model_name,
        adapters=parse_adapters(adapter or []),
        api_key=api_key,
        allowed_hosts=LOOPBACK_HOSTS | {host.strip("[]").lower()} if is_loopback(host) else None,
    )
    server = application.state.server
    names = ", ".join(m.name for m in server.models)
    config = uvicorn.Config(
        application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2
    )

    async def main() -> None:
        err().print(f"[dim]loading {names}...[/]")
        await server.warm_up()  # in the serving loop: an engine may bind to it
        out().print(
            f"tapeagents serve: [bold]{names}[/] on [bold]http://{_url_host(host)}:{port}/v1[/] "
            "(Ctrl-C to stop)",
            soft_wrap=True,
        )
        await uvicorn.Server(config).serve()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after shutting down gracefully
        pass
