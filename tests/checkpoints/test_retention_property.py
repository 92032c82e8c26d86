"""Property test: over random score sequences, ties, NaN scores, late scores and crash points,
the kept set is exactly what the rules say and the best checkpoint always survives."""
import math

from hypothesis import given, settings, strategies as st

from runner.checkpoints.retention import Candidate, Policy, best_k, decide

scores = st.one_of(st.floats(min_value=0, max_value=10, allow_nan=False), st.just(math.nan),
                   st.sampled_from([1.0, 2.0, 3.0]))  # repeated values make ties


@st.composite
def scenarios(draw):
    n = draw(st.integers(min_value=1, max_value=25))
    values = draw(st.lists(scores, min_size=n, max_size=n))
    late = draw(st.lists(st.booleans(), min_size=n, max_size=n))  # score arrives one checkpoint later
    crashes = draw(st.lists(st.integers(min_value=0, max_value=3), min_size=n, max_size=n))
    policy = Policy(best=draw(st.integers(1, 3)), latest=draw(st.integers(0, 2)),
                    every=draw(st.sampled_from([None, 2, 5])), mode=draw(st.sampled_from(["min", "max"])))
    return values, late, crashes, policy


def evaluate(store, policy, final, crash_after=None):
    """One retention pass over the persisted store, applying updates one by one like the guard;
    ``crash_after`` stops after that many updates (a SIGKILL mid-pass)."""
    cands = [Candidate(c["step"], c["score"], c["ever_best"]) for c in store.values() if c["state"] != "trash"]
    best, keep, prune = decide(cands, policy, final=final)
    updates = []
    for step, c in sorted(store.items()):
        if c["state"] == "trash":
            continue
        if step in best:
            updates.append((step, "best"))
        elif step in prune:
            updates.append((step, "trash"))
    for i, (step, action) in enumerate(updates):
        if crash_after is not None and i >= crash_after:
            return None  # crashed: the rest of this pass never happened
        if action == "best":
            store[step]["ever_best"] = True
            store[step]["state"] = "best"
        else:
            assert not store[step]["ever_best"], "a checkpoint that was best is never pruned"
            store[step]["state"] = "trash"
    return best


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_kept_set_is_exact_and_best_survives(scenario):
    values, late, crashes, policy = scenario
    store: dict[int, dict] = {}
    completed_best: set[int] = set()
    pending_scores: list[tuple[int, float]] = []
    for i, value in enumerate(values):
        step = (i + 1) * 10
        store[step] = {"step": step, "score": None, "ever_best": False, "state": "kept"}
        for s, v in pending_scores:
            store[s]["score"] = v
        pending_scores = []
        if late[i]:
            pending_scores.append((step, value))
        else:
            store[step]["score"] = value
        crash = crashes[i]
        best = evaluate(store, policy, final=False, crash_after=crash - 1 if crash else None)
        if best is not None:
            completed_best |= best
        else:
            # A crash: the restarted guard evaluates again from what was persisted.
            completed_best |= {s for s, c in store.items() if c["ever_best"]}
            completed_best |= evaluate(store, policy, final=False)
    for s, v in pending_scores:
        store[s]["score"] = v
    completed_best |= evaluate(store, policy, final=True)

    kept = {s for s, c in store.items() if c["state"] != "trash"}
    steps = sorted(store)
    final_cands = [Candidate(s, store[s]["score"]) for s in steps]
    expected = set(best_k(final_cands, policy)) | {s for s, c in store.items() if c["ever_best"]}
    if policy.latest:
        expected |= set(steps[-policy.latest:])
    if policy.every:
        expected |= {s for s in steps if s % policy.every == 0}
    assert kept == expected
    assert {s for s, c in store.items() if c["ever_best"]} <= kept
    # The single best scored checkpoint (earliest on a tie) is kept.
    scored = [(store[s]["score"], s) for s in steps if store[s]["score"] is not None and not math.isnan(store[s]["score"])]
    if scored:
        sign = 1 if policy.mode == "min" else -1
        overall = min(scored, key=lambda x: (sign * x[0], x[1]))[1]
        assert overall in kept
    # NaN-scored checkpoints are never "best".
    assert not any(store[s]["ever_best"] for s in steps if store[s]["score"] is not None and math.isnan(store[s]["score"]))


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_incomplete_checkpoints_change_nothing(scenario, data):
    """Issue 24: an incomplete checkpoint (any score, newest or not) is never best, never one of the newest N,
    never kept or pruned: the decision is exactly the one taken without it."""
    values, _late, _crashes, policy = scenario
    cands = [Candidate((i + 1) * 10, v) for i, v in enumerate(values)]
    extra = data.draw(st.lists(st.tuples(st.integers(1, 300), scores), max_size=5))
    half = [Candidate(step * 10 + 5, value, complete=False) for step, value in extra]
    final = data.draw(st.booleans())
    mixed = data.draw(st.permutations(cands + half))
    assert decide(mixed, policy, final=final) == decide(cands, policy, final=final)
    assert set(best_k(mixed, policy)) == set(best_k(cands, policy))
