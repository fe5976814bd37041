"""BrowserGym's MiniWoB++ environment, timed; run only by `.bench-venv`'s Python.

Prints one JSON line: median `env.reset()` time and median episode time (reset + one click on
the click-test button, found in the accessibility tree BrowserGym gives the agent).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from importlib.metadata import version

import browsergym.miniwob  # noqa: F401  (registers the browsergym/miniwob.* environments)
import gymnasium as gym
from browsergym.utils.obs import flatten_axtree_to_str
from playwright.sync_api import BrowserType

_launch = BrowserType.launch


def _system_chromium(self: BrowserType, *args: object, **kwargs: object) -> object:
    """The patch BrowserGym needs: launch the system Chromium, never a downloaded build.

    Both of its browsers (the task's and the chat window's, which it opens even when headless)
    go through `BrowserType.launch`.
    """
    kwargs.setdefault("executable_path", "/usr/bin/chromium")
    return _launch(self, *args, **kwargs)  # type: ignore[arg-type]


BrowserType.launch = _system_chromium  # type: ignore[method-assign]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    env = gym.make("browsergym/miniwob.click-test", headless=True)
    resets, episodes, rewards = [], [], []
    for seed in range(n + 1):
        started = time.perf_counter()
        obs, _ = env.reset(seed=seed)
        reset = time.perf_counter() - started
        tree = flatten_axtree_to_str(obs["axtree_object"])
        bid = re.search(r"\[([^\]]+)\] button 'Click Me!'", tree).group(1)
        _, reward, _, _, _ = env.step(f"click('{bid}')")
        episode = time.perf_counter() - started
        if seed > 0:  # the first reset also starts Playwright
            resets.append(reset)
            episodes.append(episode)
            rewards.append(reward)
    env.close()
    print(
        json.dumps(
            {
                "version": version("browsergym-miniwob"),
                "reset_ms": statistics.median(resets) * 1000,
                "episode_ms": statistics.median(episodes) * 1000,
                "success": sum(r >= 1.0 for r in rewards) / len(rewards),
            }
        )
    )


if __name__ == "__main__":
    main()
