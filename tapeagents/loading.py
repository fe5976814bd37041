"""Loading user code named on the command line or in the studio: `package.module:attribute`.

`--agent my_agents:make_agent` names an `Agent`, or a function with no arguments that returns one
(or an `(agent, environment)` pair); `--env` names an `Environment` the same way. Every failure is
a `UsageError` that says what was wrong with the path and what to do.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from typing import Any

from tapeagents.agent import Agent
from tapeagents.environment import Environment
from tapeagents.errors import TapeAgentsError, UsageError

__all__ = ["import_object", "load_agent", "load_environment"]


def import_object(path: str, option: str) -> Any:
    """The object at `package.module:attribute`, or a UsageError that says what went wrong."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"{option} {path!r} is not of the form package.module:attribute "
            "(for example my_agents:build_agent)."
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules next to the user's files
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(
                f"{option} {path!r}: module {module_name!r} not found ({error}). Check the "
                "spelling, and run from the directory that contains it (or add it to PYTHONPATH)."
            ) from None
        raise UsageError(
            f"{option} {path!r}: importing module {module_name!r} failed: {error}. Install "
            f"{missing!r} in this environment."
        ) from None
    except Exception as error:
        raise UsageError(
            f"{option} {path!r}: importing module {module_name!r} raised {_describe(error)}."
        ) from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            candidates = _candidates(module)
            hint = f" It has: {', '.join(candidates)}." if candidates else ""
            raise UsageError(
                f"{option} {path!r}: module {module_name!r} has no attribute {attribute!r}.{hint}"
            )
        obj = getattr(obj, part)
    return obj


def _candidates(module: Any) -> list[str]:
    names = []
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        own_function = inspect.isfunction(value) and value.__module__ == module.__name__
        if own_function or isinstance(value, Agent | Environment):
            names.append(name)
    return sorted(names)


def _describe(error: BaseException) -> str:
    """`Type: message at file:line` of the innermost frame, for errors raised by user code."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def _build(obj: Any, path: str, option: str, wanted: str) -> Any:
    """Call a factory with no arguments (objects that are not factories are returned as is)."""
    if isinstance(obj, Agent | Environment) or not callable(obj):
        return obj
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        required = [
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise UsageError(
                f"{option} {path!r} needs arguments ({', '.join(required)}); point {option} at "
                f"{wanted}, or at a function that takes no arguments and returns one."
            )
    try:
        return obj()
    except TapeAgentsError:
        raise
    except Exception as error:
        raise UsageError(f"{option} {path!r}: calling it raised {_describe(error)}.") from None


def load_agent(path: str) -> tuple[Agent, Environment | None]:
    """The agent at `path`: an `Agent`, or a no-argument callable returning one or (agent, env)."""
    built = _build(import_object(path, "--agent"), path, "--agent", "an Agent")
    if isinstance(built, Agent):
        return built, None
    if (
        isinstance(built, tuple)
        and len(built) == 2
        and isinstance(built[0], Agent)
        and (built[1] is None or isinstance(built[1], Environment))
    ):
        return built[0], built[1]
    raise UsageError(
        f"--agent {path!r} is not an Agent: it is {_kind(built)}. Point --agent at an Agent, or "
        "at a function that takes no arguments and returns an Agent or (agent, environment)."
    )


def load_environment(path: str) -> Environment:
    """The environment at `path`: an `Environment`, or a no-argument callable returning one."""
    built = _build(import_object(path, "--env"), path, "--env", "an Environment")
    if isinstance(built, Environment):
        return built
    raise UsageError(
        f"--env {path!r} is not an Environment: it is {_kind(built)}. Point --env at an "
        "Environment, or at a function that takes no arguments and returns one."
    )


def _kind(value: Any) -> str:
    if inspect.ismodule(value):
        return f"the module {value.__name__}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"
