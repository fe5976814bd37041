"""The local model's engines side by side: llama.cpp (f16 and quantized) against transformers.

    PYTHONPATH=. .venv/bin/python benchmarks/local_engine.py            # everything, ~10 min
    PYTHONPATH=. .venv/bin/python benchmarks/local_engine.py --quick    # fewer runs and tokens
    PYTHONPATH=. .venv/bin/python benchmarks/local_engine.py --only single demo

Figures (median of `--runs`; the machine is shared, so compare engines within one run):
- single: one answer of 128 tokens after a 171-token prompt, tokens/s (EOS is ignored: the
  engines are asked for exactly 128 tokens at the engine level where they allow it);
- concurrent: 16 answers of 128 tokens requested at once, tokens/s in aggregate;
- demo: the hello agent on 20 random two- and three-digit products and sums: correct answers,
  median and slowest seconds per question (llama.cpp only: transformers has no grammar, so
  it rarely calls the tool at all);
- score: logprobs (with top-5 alternatives on llama.cpp) of a 1,000-token expert text, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tapeagents.llms import LocalLLM, Prompt  # noqa: E402

WORDS = (
    "the river carried small boats past the old mill while children counted the stones on the "
    "bank and their grandmother told stories of winters when the water froze from shore to shore"
).split()
ENGINES: dict[str, dict[str, Any]] = {
    "llama.cpp f16": {"engine": "llama.cpp"},
    "llama.cpp q4_1": {"engine": "llama.cpp", "quantized": True},
    "transformers": {"engine": "transformers"},
}


def text_of(llm: LocalLLM, tokens: int, seed: int = 0) -> str:
    """Prose of exactly `tokens` tokens in the model's tokenizer (a few words over, then cut)."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(tokens * 2)]
    ids = llm.tokenizer.encode(" ".join(words), add_special_tokens=False)[:tokens]
    return str(llm.tokenizer.decode(ids))


def prompt_of(llm: LocalLLM, total: int, seed: int = 0) -> Prompt:
    """A chat prompt of `total` tokens as the model reads it (template included)."""
    prefix = "Continue this story: "
    body = total
    while True:
        content = prefix + text_of(llm, body, seed)
        prompt = Prompt(messages=[{"role": "user", "content": content}])
        size = (
            len(llm._prepare_tokens(prompt)[1])
            if llm.engine == "llama.cpp"
            else _count(llm, prompt)
        )
        if size == total or body <= 1:
            return prompt
        body += total - size


def _count(llm: LocalLLM, prompt: Prompt) -> int:
    from tapeagents.llms.local.chat import prompt_ids

    return len(prompt_ids(llm._load_tokenizer(), prompt.messages, prompt.tools))


async def generate_exactly(llm: LocalLLM, prompt: Prompt, tokens: int) -> int:
    """Generate `tokens` tokens (end of turn ignored where the engine allows); tokens made."""
    if llm.engine == "llama.cpp":
        from tapeagents.llms.local.chat import prompt_ids

        engine = llm._engine()
        ids = prompt_ids(llm._load_tokenizer(), prompt.messages, prompt.tools)
        result = await asyncio.wrap_future(engine.generate(ids, max_new_tokens=tokens))
        return len(result.ids)
    loaded = await asyncio.to_thread(llm._load)
    torch = __import__("torch")
    from tapeagents.llms.local.chat import prompt_ids

    ids = prompt_ids(loaded, prompt.messages, prompt.tools)

    def run() -> int:
        with torch.inference_mode():
            out = loaded.model.generate(
                torch.tensor([ids]),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=loaded.tokenizer.eos_token_id,
            )
        return int(out.shape[1] - len(ids))

    return await asyncio.to_thread(run)


def median_of(
    llm: LocalLLM, runs: int, measure: Callable[[], Awaitable[float]]
) -> tuple[float, list[float]]:
    """Median of `runs` measurements; llama.cpp runs past the end of turn meanwhile, so every
    answer has the tokens asked for (transformers: `min_new_tokens`)."""
    eog = None
    if llm.engine == "llama.cpp":
        engine = llm._engine()
        eog = engine._eog.copy()
        engine._eog[:] = False
    try:
        values = [asyncio.run(measure()) for _ in range(runs)]
    finally:
        if eog is not None:
            llm._engine()._eog[:] = eog
    return statistics.median(values), values


def single(name: str, llm: LocalLLM, runs: int, tokens: int) -> None:
    prompt = prompt_of(llm, 171)
    asyncio.run(generate_exactly(llm, prompt, 4))  # load and warm up

    async def measure() -> float:
        start = time.perf_counter()
        made = await generate_exactly(llm, prompt, tokens)
        return made / (time.perf_counter() - start)

    value, values = median_of(llm, runs, measure)
    print(f"  single   {name:15s} {value:7.1f} tokens/s  runs: {_fmt(values)}", flush=True)


def concurrent(name: str, llm: LocalLLM, runs: int, tokens: int, sessions: int) -> None:
    prompts = [prompt_of(llm, 171, seed) for seed in range(sessions)]
    asyncio.run(generate_exactly(llm, prompts[0], 4))

    async def measure() -> float:
        start = time.perf_counter()
        made = await asyncio.gather(*(generate_exactly(llm, p, tokens) for p in prompts))
        return sum(made) / (time.perf_counter() - start)

    value, values = median_of(llm, runs, measure)
    print(
        f"  {sessions} at once {name:15s} {value:7.1f} tokens/s aggregate  runs: {_fmt(values)}",
        flush=True,
    )


def demo(name: str, llm: LocalLLM, questions: int) -> None:
    from examples.hello.agent import make_agent
    from tapeagents import run_sync

    rng = random.Random(7)
    correct, seconds = 0, []
    make_agent(llm)  # warm-up below loads the model outside the timing
    run_sync(make_agent(llm)[0], "What is 2 plus 2?", make_agent(llm)[1], max_steps=4)
    for _ in range(questions):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        word, value = rng.choice([("times", a * b), ("plus", a + b)])
        agent, env = make_agent(llm)
        start = time.perf_counter()
        result = run_sync(agent, f"What is {a} {word} {b}?", env, max_steps=4)
        seconds.append(time.perf_counter() - start)
        answer = result.tape.steps[-1]
        correct += str(getattr(answer, "content", "")).endswith(f"= {value}")
    print(
        f"  demo     {name:15s} {correct}/{questions} correct, median "
        f"{statistics.median(seconds):.2f} s, slowest {max(seconds):.2f} s per question",
        flush=True,
    )


def score(name: str, llm: LocalLLM, runs: int) -> None:
    question = [{"role": "user", "content": "Tell me the story of the river."}]
    expert = text_of(llm, 1000, seed=3)
    top = 5 if llm.engine == "llama.cpp" else 0
    asyncio.run(llm.score(question, "warm up", top_logprobs=top))

    async def measure() -> float:
        start = time.perf_counter()
        scored = await llm.score(question, expert, top_logprobs=top)
        assert len(scored) >= 990
        return time.perf_counter() - start

    value, values = median_of(llm, runs, measure)
    what = "with top-5" if top else "no top-k"
    print(f"  score    {name:15s} {value:7.2f} s for 1,000 tokens ({what})  runs: {_fmt(values)}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" if v >= 10 else f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, 64 tokens, 10 questions")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--only",
        nargs="+",
        default=["single", "concurrent", "demo", "score"],
        choices=["single", "concurrent", "demo", "score"],
    )
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    tokens = 64 if args.quick else 128
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}", flush=True)
    for name in args.engines:
        llm = LocalLLM(max_new_tokens=48, **ENGINES[name])
        if "single" in args.only:
            single(name, llm, runs, tokens)
        if "concurrent" in args.only:
            # transformers takes turns: 16 x 128 tokens would take minutes, so fewer for it
            sessions = 16
            concurrent(name, llm, 1 if name == "transformers" else runs, tokens, sessions)
        if "demo" in args.only and llm.engine == "llama.cpp":
            demo(name, llm, 10 if args.quick else 20)
        if "score" in args.only:
            score(name, llm, runs)


if __name__ == "__main__":
    main()
