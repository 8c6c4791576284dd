"""Benchmark workloads: reproducible by seed, and shaped as their names say."""

from __future__ import annotations

from cluster.bench.workloads import multi_turn, random_prompts, shared_prefix
from cluster.routing.prefix_index import block_hashes
from cluster.routing.prompt import render_for_routing


def test_same_seed_same_requests_other_seed_others() -> None:
    assert shared_prefix("m", 3, 4, seed=1) == shared_prefix("m", 3, 4, seed=1)
    assert shared_prefix("m", 3, 4, seed=1) != shared_prefix("m", 3, 4, seed=2)


def test_shared_prefix_groups_share_their_system_prompt_blocks() -> None:
    requests = shared_prefix("m", groups=2, users=5, seed=0, system_words=(750, 800))
    assert len(requests) == 10
    by_group: dict[str, list[tuple[int, ...]]] = {}
    for request in requests:
        by_group.setdefault(request.group, []).append(block_hashes(render_for_routing(request.body)))
    first, second = by_group.values()
    assert all(h[:10] == first[0][:10] for h in first)  # 750+ words: well over 10 blocks shared
    assert first[0][0] != second[0][0]


def test_multi_turn_resends_a_growing_history_under_one_session() -> None:
    requests = multi_turn("m", conversations=2, turns=3, seed=0)
    conv0 = [r for r in requests if r.session == "conv-0"]
    lengths = [len(r.body["messages"]) for r in conv0]
    assert lengths == [2, 4, 6]  # system + user, then + assistant + user each turn
    assert conv0[1].body["messages"][:2] == conv0[0].body["messages"]


def test_random_prompts_share_nothing() -> None:
    requests = random_prompts("m", count=5, seed=0, words=(300, 400))
    firsts = {block_hashes(render_for_routing(r.body))[0] for r in requests}
    assert len(firsts) == 5


def test_multi_turn_rounds_are_not_in_a_fixed_order() -> None:
    requests = multi_turn("m", conversations=8, turns=3, seed=0)
    rounds = [[r.group for r in requests[t * 8 : (t + 1) * 8]] for t in range(3)]
    assert all(sorted(r) == sorted(rounds[0]) for r in rounds)  # each round has every conversation once
    assert len({tuple(r) for r in rounds}) > 1  # in different orders
