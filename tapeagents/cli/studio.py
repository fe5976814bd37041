"""The `studio` command: serve the studio web app over a tape store."""

from __future__ import annotations

from typing import Annotated

import typer

from tapeagents.cli.common import DbOption, err, open_store, out
from tapeagents.errors import UsageError
from tapeagents.loading import load_agent

__all__ = ["app", "parse_agents"]

app = typer.Typer()


def parse_agents(specs: list[str]) -> dict[str, str]:
    """`NAME=package.module:attr` (or just `package.module:attr`, named after `attr`) to a map."""
    agents: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = spec.rpartition(":")[2].rpartition(".")[2], spec
        name, path = name.strip(), path.strip()
        if not name or ":" not in path:
            raise UsageError(
                f"--agent {spec!r} is not of the form NAME=package.module:attribute "
                "(for example calc=my_agents:build_agent)."
            )
        if name in agents:
            raise UsageError(f"--agent names {name!r} twice; give each agent its own name.")
        agents[name] = path
    return agents


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@app.command(rich_help_panel="Studio")
def studio(
    db: DbOption = None,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; anything but loopback needs --token."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            envvar="TAPEAGENTS_STUDIO_AGENTS",
            metavar="NAME=MODULE:ATTR",
            help="An agent tapes can be resumed with (repeat for several): an Agent, or a "
            "function with no arguments returning one or (agent, env).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="TAPEAGENTS_STUDIO_TOKEN",
            help="Access token the browser must present (once, as ?token=...).",
        ),
    ] = None,
) -> None:
    """Browse, step through, fork, edit, resume and compare tapes in the browser."""
    from tapeagents.studio.security import is_loopback

    if not is_loopback(host) and not token:
        raise UsageError(
            f"--host {host} would let other machines read your tapes and run your agents. "
            "Pass --token SECRET (or set TAPEAGENTS_STUDIO_TOKEN) to require it, or keep the "
            "default --host 127.0.0.1."
        )
    agents = parse_agents(agent or [])
    for name, path in agents.items():
        loaded, _ = load_agent(path)  # a typo is reported now, not on the first resume
        err().print(f"[dim]agent {name}: {path} ({loaded.name})[/]")
    try:
        import uvicorn

        from tapeagents.studio import create_app
    except ImportError:
        raise UsageError(
            "The studio needs FastAPI and uvicorn: pip install 'tapeagents[studio]'."
        ) from None
    with open_store(db) as store:
        application = create_app(store, agents=agents, token=token)
        url = f"http://{_url_host(host)}:{port}/"
        out().print(
            f"tapeagents studio on [bold]{url}{'?token=' + token if token else ''}[/] "
            f"over {store.display_url} (Ctrl-C to stop)",
            soft_wrap=True,
        )
        # open pages follow running tapes with never-ending event streams: don't wait for them
        uvicorn.run(
            application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2
        )
