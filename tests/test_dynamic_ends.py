"""Where each user's prompts end (``UserTags.dynamic_ends``, ``tree.user_nodes``) follows evictions:
an end node that leaves the tree is re-pointed at its parent, so the path left above it is still
re-filed when a key drops and untagged when the user's next prompt arrives."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.policies import make_policy
from tests.test_policies import evictable_leaves, put, seq


def make(policy: str, gpu: int = 10_000, cpu: int = 0) -> KVCacheManager:
    write_policy = "write_through" if cpu else "none"
    return KVCacheManager(
        CacheConfig(gpu_capacity_tokens=gpu, cpu_capacity_tokens=cpu, write_policy=write_policy), make_policy(policy)
    )


def drop(cache: KVCacheManager, node) -> None:
    """Evict the unlocked GPU leaf ``node`` (no CPU tier: it leaves the tree)."""
    assert node.gpu and not node.children and not node.lock_ref
    cache.release_gpu(cache.writes.demote(node))
    assert node.parent is None


def in_tree(cache: KVCacheManager, node) -> bool:
    while node.parent is not None:
        node = node.parent
    return node is cache.tree.root


@pytest.mark.parametrize("policy", ["kvflow_cost", "pause_aware"])
def test_next_prompt_untags_the_path_left_above_an_evicted_end(policy):
    cache = make(policy)
    user = ("c", "main")
    fixed, x, y, z = seq(100, 8), seq(200, 4), seq(300, 4), seq(400, 4)
    put(cache, fixed + x, 8, user)  # latest dynamic prompt: x
    end = put(cache, fixed + x + y, 8, user)  # now x + y; y is its own node
    x_node = end.parent
    assert user in x_node.dynamic_users and cache.tags.dynamic_ends[user] is end
    drop(cache, end)
    assert cache.tags.dynamic_ends[user] is x_node  # re-pointed: the deepest part still cached
    put(cache, fixed + z, 8, user)  # the next prompt: x is no longer on the latest one
    assert user not in x_node.dynamic_users
    assert all(user not in n.dynamic_users for n in cache.tree.walk() if n.tokens[0] < 400)


def test_ends_move_up_one_node_at_a_time_and_a_dynamic_end_at_the_root_is_dropped():
    cache = make("kvflow_cost")
    user = ("c", "main")
    end = put(cache, seq(100, 4) + seq(200, 8), 4, user)
    fixed_end = cache.tree.user_nodes[user]
    put(cache, seq(100, 4) + seq(200, 2), 0, ("d", "main"))  # splits the dynamic node: the end is its tail
    head = end.parent
    assert cache.tags.dynamic_ends[user] is end and head.parent is fixed_end
    drop(cache, end)
    assert cache.tags.dynamic_ends[user] is head
    drop(cache, head)
    assert cache.tags.dynamic_ends[user] is fixed_end  # none of the dynamic part is cached
    drop(cache, fixed_end)
    assert user not in cache.tags.dynamic_ends  # nothing of the prompt is cached
    assert cache.tree.user_nodes[user] is fixed_end  # kept: the record that the user ran


def test_a_fixed_end_moves_to_the_part_of_the_fixed_prompt_still_cached():
    cache = make("kvflow")
    u, d = ("c", "main"), ("d", "main")
    put(cache, seq(100, 8), 8, u)
    put(cache, seq(100, 4) + seq(300, 4), 8, d)  # shares u's first 4 tokens: u's node splits
    tail = cache.tree.user_nodes[u]
    head = tail.parent
    assert u in head.users and d in head.users
    drop(cache, tail)
    assert cache.tree.user_nodes[u] is head  # refresh_users / cpu_run walk from here again


# ----- random event orders --------------------------------------------------------------------------
CLIENTS = ("c0", "c1")
AGENTS = ("main", "A")
events = st.lists(
    st.tuples(
        st.sampled_from(["call"] * 4 + ["finish"] * 3 + ["evict"] * 3 + ["end"]),
        st.sampled_from(CLIENTS),
        st.sampled_from(AGENTS),
        st.integers(1, 40),
    ),
    min_size=10,
    max_size=100,
)


def nodes_along(tree, tokens: list[int]) -> list:
    """The nodes holding a prefix of ``tokens``, root first (the last one may hold more)."""
    out, node, pos = [], tree.root, 0
    while pos < len(tokens):
        child = node.children.get(tree.child_key(tokens, pos))
        if child is None:
            break
        out.append(child)
        if child.tokens != tokens[pos : pos + len(child.tokens)]:
            break
        node, pos = child, pos + len(child.tokens)
    return out


def check(cache: KVCacheManager, fixed_prompts: dict) -> None:
    """Every dynamic end is in the tree; each user's dynamic tags lie on its latest prompt's path;
    each fixed end is the deepest cached node of its user's fixed prompt (detached once none is); the GPU heap's top has the lowest
    current key among the evictable leaves."""
    tags, tree = cache.tags, cache.tree
    for user, end in tags.dynamic_ends.items():
        assert in_tree(cache, end), (user, end)
    for node in tree.walk():
        for user in node.dynamic_users:
            end = tags.dynamic_ends.get(user)
            assert end is not None and node in set(end.path_to_root()), ("stale dynamic tag", user, node)
    for user, fixed in fixed_prompts.items():
        tagged = [n for n in nodes_along(tree, fixed) if user in n.users]
        end = tree.user_nodes[user]
        if end.parent is None:
            assert not tagged, ("a detached fixed end above cached nodes", user)
        else:
            assert in_tree(cache, end) and tagged and tagged[-1] is end, (user, end, tagged)
    leaves = evictable_leaves(cache)
    top = tree.gpu_heap.top()
    if leaves:
        assert top is not None and cache.policy.key(top) == min(cache.policy.key(n) for n in leaves)


@pytest.mark.parametrize("policy", ["pause_aware", "kvflow_sessions", "subagent_aware", "kvflow_cost", "kvflow"])
@settings(max_examples=60, deadline=None)
@given(ops=events, cpu=st.booleans())
# found by this test: an agent with two fixed prompts (both tagged); at the session's end only the
# latest one was re-filed, so the earlier one's heap entry kept its old, higher key
@example(
    ops=[("call", "c0", "main", 1)] * 4
    + [("call", "c1", "A", 2), ("finish", "c1", "A", 1), ("call", "c1", "A", 1), ("finish", "c1", "A", 1)]
    + [("evict", "c0", "main", 6), ("end", "c1", "main", 1)],
    cpu=False,
)
def test_random_events_keep_ends_in_the_tree_and_the_heap_top_lowest(policy, ops, cpu):
    cache = make(policy, gpu=300, cpu=300 if cpu else 0)
    sessions = cache.sessions is not None
    prompts: dict[tuple[str, str], list[int]] = {}
    running: dict[tuple[str, str], object] = {}
    fixed_prompts: dict[tuple[str, str], list[int]] = {}  # each user's latest fixed prompt inserted whole
    ended: set[str] = set()
    for i, (kind, client, agent, n) in enumerate(ops):
        now, user = float(i), (client, agent)
        if client in ended:
            continue
        if kind == "call" and user not in running:
            fixed = seq(1000 * (AGENTS.index(agent) + 1) + 500 * (n % 2), 8)  # two system prompts an agent
            base = 100_000 * (CLIENTS.index(client) + 1) + 10_000 * AGENTS.index(agent)
            dynamic = prompts.get(user, fixed)[8:][: n % 24] + seq(base + 100 * i, 1 + n % 16)
            prompts[user] = fixed + dynamic
            if sessions:
                cache.session_submit(client, user, now)
            hit = cache.match(prompts[user])
            cache.lock(hit.gpu_node)
            granted = cache.alloc_gpu(len(prompts[user]) - hit.gpu_tokens)
            cache.unlock(hit.gpu_node)
            end = cache.insert(prompts[user], granted, 8, user)
            if cache.tree.depth_tokens(end) >= 8:
                fixed_prompts[user] = fixed
            cache.lock(end)
            running[user] = end
        elif kind == "finish" and user in running:
            cache.unlock(running.pop(user))  # type: ignore[arg-type]
            if sessions:
                cache.session_finish(client, agent, len(prompts[user]), now)
        elif kind == "end" and sessions and not any(c == client for c, _ in running):
            cache.session_end(client, now)
            ended.add(client)
        elif kind == "evict":
            cache.evict_gpu(n)
        for op in cache.take_ops():
            cache.complete(op)
        cache.check_invariants()
        check(cache, fixed_prompts)
