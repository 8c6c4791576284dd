"""Seeded request workloads for the routing benchmark (pure: same seed, same requests).

- shared_prefix: G long system prompts, many users each asking short questions (prefix affinity pays).
- multi_turn: conversations that resend their growing history every turn (session/prefix affinity pays).
- random_prompts: nothing shared (routing should not hurt).
Sizes are in words (~1.3 tokens each for English text); each request is an OpenAI chat body.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

_WORDS = (
    "orchard apple pear plum cherry quince blossom branch root soil rain frost prune graft harvest ladder basket "
    "cider press bee hive season spring summer autumn winter tree row grass fence gate path barn stone shade"
).split()


@dataclass(frozen=True)
class Request:
    body: dict[str, Any]
    session: str | None  # what a client would send as X-Session-Id (multi-turn conversations)
    group: str  # which shared prefix or conversation it belongs to, for reporting


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _chat(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}


def shared_prefix(
    model: str, groups: int, users: int, seed: int, system_words: tuple[int, int] = (750, 3000), max_tokens: int = 32
) -> list[Request]:
    rng = random.Random(seed)
    systems = [f"System {g}. " + _text(rng, rng.randint(*system_words)) for g in range(groups)]
    requests = [
        Request(
            _chat(
                model,
                [
                    {"role": "system", "content": systems[g]},
                    {"role": "user", "content": f"User {u}: " + _text(rng, rng.randint(5, 20)) + "?"},
                ],
                max_tokens,
            ),
            session=None,
            group=f"system-{g}",
        )
        for g in range(groups)
        for u in range(users)
    ]
    rng.shuffle(requests)
    return requests


def multi_turn(model: str, conversations: int, turns: int, seed: int, max_tokens: int = 32) -> list[Request]:
    """Turn t of every conversation comes before turn t+1 of any, in a shuffled order; assistant replies are
    synthetic (the same words for the same conversation and turn) so the workload does not depend on a run."""
    rng = random.Random(seed)
    histories: list[list[dict[str, str]]] = [
        [{"role": "system", "content": f"Conversation {c}. " + _text(rng, 200)}] for c in range(conversations)
    ]
    requests = []
    for _turn in range(turns):
        order = list(enumerate(histories))
        rng.shuffle(order)  # users do not take turns in a fixed order (a fixed order lets round robin pin them)
        for c, history in order:
            history.append({"role": "user", "content": _text(rng, rng.randint(10, 40)) + "?"})
            requests.append(Request(_chat(model, list(history), max_tokens), session=f"conv-{c}", group=f"conv-{c}"))
            history.append({"role": "assistant", "content": _text(rng, max_tokens)})
    return requests


def random_prompts(
    model: str, count: int, seed: int, words: tuple[int, int] = (200, 1500), max_tokens: int = 32
) -> list[Request]:
    rng = random.Random(seed)
    return [
        Request(
            _chat(model, [{"role": "user", "content": f"{i}. " + _text(rng, rng.randint(*words))}], max_tokens),
            session=None,
            group=f"random-{i}",
        )
        for i in range(count)
    ]
