"""Property-based tests of the radix tree + cache manager on random operation sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvflow.cache import CacheConfig, KVCacheManager
from kvflow.ops import Load, Offload
from kvflow.policies import POLICY_NAMES, make_policy

# sequences from a tiny alphabet share prefixes often, which is what exercises splits
POOL = [
    [0, 1, 2, 3] * 3,
    [0, 1, 2, 3] * 2 + [1] * 8,
    [0, 1, 2] + [3] * 12,
    [2, 2, 2, 2, 2],
    [1, 0] * 9,
    [0, 1, 2, 3] * 6,
]
seqs = st.one_of(st.sampled_from(POOL), st.lists(st.integers(0, 3), min_size=1, max_size=24))
op = st.one_of(
    st.tuples(st.just("insert"), seqs, st.integers(0, 24), st.sampled_from(["a", "b", "c", ""])),
    st.tuples(st.just("match"), seqs),
    st.tuples(st.just("lock"), seqs),
    st.tuples(st.just("unlock"), st.integers(0, 10)),
    st.tuples(st.just("evict"), st.integers(1, 30)),
    st.tuples(st.just("hints"), st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 5))),
    st.tuples(st.just("load"), seqs),
    st.tuples(st.just("complete"), st.integers(0, 10)),
)


def lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run_ops(ops, policy_name: str, page_size: int, cpu_tokens: int):
    cache = KVCacheManager(
        CacheConfig(
            gpu_capacity_tokens=40,
            cpu_capacity_tokens=cpu_tokens,
            page_size=page_size,
            write_policy="write_through" if cpu_tokens else "none",
        ),
        make_policy(policy_name),
    )
    inserted: list[list[int]] = []
    locked = []  # (node, tokens that must stay matched on GPU)
    inflight = []
    trace = []
    for item in ops:
        kind = item[0]
        if kind == "insert":
            _, tokens, fixed, agent = item
            result = cache.match(tokens)
            cache.lock(result.gpu_node)
            need = len(tokens) - result.gpu_tokens
            granted = cache.alloc_gpu(need, partial=True)
            cache.unlock(result.gpu_node)
            user = ("c0", agent) if agent else None
            cache.insert(tokens[: result.gpu_tokens + granted], granted, fixed, user)
            inserted.append(tokens)
        elif kind == "match":
            result = cache.match(item[1])
            best = max((lcp(item[1], s) for s in inserted), default=0)
            assert result.total_tokens <= best, "match returned more than was ever inserted"
            trace.append(result.gpu_tokens)
        elif kind == "lock":
            result = cache.match(item[1])
            if result.gpu_tokens:
                cache.lock(result.gpu_node)
                locked.append((result.gpu_node, item[1][: result.gpu_tokens]))
        elif kind == "unlock" and locked:
            node, _ = locked.pop(item[1] % len(locked))
            cache.unlock(node)
        elif kind == "evict":
            cache.evict_gpu(item[1])
            cache.evict_cpu(item[1])
        elif kind == "hints":
            cache.set_hints("c0", {k: float(v) for k, v in item[1].items()})
        elif kind == "load":
            result = cache.match(item[1])
            inflight.extend(cache.load(result.cpu_nodes))
        elif kind == "complete":
            inflight.extend(o for o in cache.take_ops() if isinstance(o, (Load, Offload)))
            if inflight:
                cache.complete(inflight.pop(item[1] % len(inflight)))
        inflight.extend(o for o in cache.take_ops() if isinstance(o, (Load, Offload)))
        cache.check_invariants()
        for o in inflight:  # in-flight nodes are still in the tree, in flight
            assert o.node.inflight is not None and o.node.parent is not None
        for node, tokens in locked:  # locked prefixes are never evicted
            assert node.gpu and node.parent is not None
            assert cache.tree.match(tokens, touch=False).gpu_tokens == len(tokens)
    return trace, cache, inflight


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=60), st.sampled_from(POLICY_NAMES), st.sampled_from([1, 2]), st.sampled_from([0, 30]))
def test_random_sequences_keep_invariants(ops, policy_name, page_size, cpu_tokens):
    trace, cache, inflight = run_ops(ops, policy_name, page_size, cpu_tokens)
    # every copy, completed late (after any splits of its node), leaves nothing in flight
    for op in [*cache.take_ops(), *inflight]:
        if isinstance(op, (Load, Offload)) and op.node.inflight is not None:
            cache.complete(op)
    assert all(n.inflight is None for n in cache.tree.walk()), "a node stays in flight after its op completed"
    # every cached token is reachable from the root, and the counters agree with the tree
    reachable = sum(len(n) for n in cache.tree.walk() if n.on_gpu_or_loading)
    assert reachable == cache.gpu_used_tokens
    # same inputs -> same result
    trace2, cache2, _ = run_ops(ops, policy_name, page_size, cpu_tokens)
    assert trace == trace2 and cache.stats == cache2.stats


def test_a_stale_cpu_run_is_not_loaded_below_a_demoted_parent():
    """Regression (found by the chatdev kvflow_gd run with invariant checks): a prefetcher that
    computed an agent's CPU-only run, then started another copy whose eviction demoted the run's
    GPU parent, must not load the run below that parent (GPU residency stays prefix-closed)."""
    from kvflow.prefetch import cpu_run

    cache = KVCacheManager(
        CacheConfig(gpu_capacity_tokens=100, cpu_capacity_tokens=100, write_policy="write_through"), make_policy("lru")
    )
    user = ("c", "a")
    tokens = list(range(1, 21))
    granted = cache.alloc_gpu(20)
    cache.insert(tokens[:10], 10, fixed_tokens=10, user=("c", "p"))  # parent p: tokens 1..10
    tail = cache.insert(tokens, granted - 10, fixed_tokens=20, user=user)  # child x: 11..20
    for op in cache.take_ops():
        cache.complete(op)  # the write-through backups land: both have CPU copies
    parent = tail.parent
    assert parent is not None and parent.cpu and tail.cpu
    cache.tree.lock(parent)
    assert cache.evict_gpu(10) == 10 and not tail.gpu  # x is CPU-only now, p still on the GPU
    cache.tree.unlock(parent)
    run = cpu_run(cache.tree, user)
    assert run == [tail]
    assert cache.evict_gpu(10) == 10 and not parent.gpu  # another copy's room: p is demoted too
    assert cache.load(run, prefetch=True) == []  # the stale run is refused...
    assert not tail.gpu and tail.inflight is None
    cache.check_invariants()
    assert cpu_run(cache.tree, user) == [parent, tail]  # ...and the fresh run loads the whole path


def test_relock_equals_lock_then_unlock():
    """RadixTree.relock(old, new) leaves every lock count as lock(new); unlock(old) would: for a new
    node below the old one, on another branch, and for the same node."""
    from kvflow.policies import make_policy
    from kvflow.radix import RadixTree

    def build() -> tuple[RadixTree, dict[str, object]]:
        tree = RadixTree(make_policy("lru"))
        a = tree.insert_below(tree.root, [1, 2])
        b = tree.insert_below(a, [3])
        c = tree.insert_below(b, [4, 5])
        d = tree.insert_below(a, [9])
        for n in (a, b, c, d):
            n.gpu = True
        return tree, {"a": a, "b": b, "c": c, "d": d}

    for old, new in (("b", "c"), ("c", "d"), ("b", "b"), ("a", "c")):
        ref, nodes_ref = build()
        ref.lock(nodes_ref[old])
        ref.lock(nodes_ref[new])
        ref.unlock(nodes_ref[old])
        got, nodes = build()
        got.lock(nodes[old])
        got.relock(nodes[old], nodes[new])
        assert {k: n.lock_ref for k, n in nodes.items()} == {k: n.lock_ref for k, n in nodes_ref.items()}, (old, new)


def test_cpu_copies_stay_prefix_closed_when_a_parent_backup_finds_no_space():
    """Regression (found by hypothesis): the parent's write-through backup found no CPU space while
    its 1-token child's did; once both left the GPU the parent had to leave the tree with a child.
    A CPU copy is now made only below a parent that has (or is writing) one."""
    ops = [
        ("insert", [0, 1, 2, 3] + [3] * 11, 0, "a"),
        ("insert", [0] * 20, 19, "a"),
        ("complete", 1),
        ("insert", [0, 1, 2, 3] * 3, 0, "a"),
    ]
    run_ops(ops, "lru", 1, 30)  # raised AssertionError in RadixTree._detach before the fix


_IDS = st.lists(st.integers(min_value=0, max_value=2**31 - 1), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_IDS, _IDS, st.sampled_from([2, 4, 8]))
def test_a_paged_tree_finds_the_same_ids_in_any_container(prefix, rest, page):
    """Paged children are keyed by the page's ids (``kvflow.radix.page_key``): what a list prompt
    inserted, an array prompt of the same ids matches, and the other way round; ids beyond 32 bits
    (the simulator's output ids) and non-int units (the replay's block hashes) key by tuple, equal
    only to the same units."""
    from array import array

    from kvflow.radix import RadixTree, page_key

    ids = prefix + rest
    n = len(ids) - len(ids) % page
    if n == 0:
        return
    for stored, probe in ((list, lambda x: array("i", x)), (lambda x: array("i", x), list), (list, tuple)):
        tree = RadixTree(make_policy("lru"), page_size=page)
        node = tree.insert_below(tree.root, stored(ids[:n]))
        node.gpu = True
        match = tree.match(probe(ids), touch=False)
        assert match.gpu_tokens == n and match.gpu_node is node
    assert page_key(array("i", ids), 0, page) == page_key(ids, 0, page) == page_key(tuple(ids), 0, page)
    big = [i + 2**40 for i in ids]
    outputs = range(2**40, 2**40 + page)  # a released request's output ids
    assert page_key(outputs, 0, page) == tuple(outputs) == page_key(list(outputs), 0, page)
    assert page_key(big, 0, page) == tuple(big[:page])
    assert page_key([str(i) for i in ids], 0, page) == tuple(str(i) for i in ids[:page])
    assert page_key(big, 0, page) != page_key(ids, 0, page)
