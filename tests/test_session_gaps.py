"""kvflow.session_gaps: the pause learner converges on a known distribution, shrinks to its prior,
and SessionActivity tells pauses from overlapping calls."""

from __future__ import annotations

import math
import random

import pytest

from kvflow.session_gaps import GapLearner, SessionActivity


def test_converges_on_a_lognormal_session():
    rng = random.Random(7)
    mu, sigma = math.log(30.0), 1.0  # median pause 30 s, p90 ~108 s
    learner = GapLearner(prior_gap_s=10.0)
    for _ in range(2000):
        learner.observe("s", "main", rng.lognormvariate(mu, sigma))
    assert learner.predict_s("s", "main") == pytest.approx(30.0, rel=0.08)
    p90 = math.exp(mu + 1.2815515655 * sigma)
    assert learner.quantile_s("s", "main", 0.9) == pytest.approx(p90, rel=0.1)


def test_error_shrinks_with_observations():
    """The estimate starts at the prior and approaches the session's own median as pauses come."""
    rng = random.Random(3)
    learner = GapLearner(prior_gap_s=5.0, shrink_n=3.0)
    learner.observe("other", "main", 5.0)  # the population median is 5 s
    errors = []
    for n in range(1, 201):
        learner.observe("s", "main", rng.lognormvariate(math.log(60.0), 0.5))
        if n in (1, 10, 200):
            errors.append(abs(math.log(learner.predict_s("s", "main") / 60.0)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1


def test_prior_is_the_population_median_and_shrinkage():
    learner = GapLearner(prior_gap_s=10.0, shrink_n=3.0)
    assert learner.predict_s("new") == pytest.approx(10.0)  # nothing observed: the configured prior
    for gap in (1.0, 2.0, 1000.0):  # population median 2 s (the 1000 s outlier does not move it)
        learner.observe("a", "main", gap)
    assert learner.predict_s("new") == pytest.approx(2.0)
    learner.observe("b", "main", 8.0)  # median of 1, 2, 8, 1000 in log space: sqrt(2 * 8) = 4
    assert learner.predict_s("new") == pytest.approx(4.0)
    # one observation of b, 3 pseudo-observations of the prior: log-mean (3 ln 4 + ln 8) / 4
    assert learner.predict_s("b") == pytest.approx(math.exp((3 * math.log(4.0) + math.log(8.0)) / 4))


def test_contexts_are_told_apart():
    learner = GapLearner(shrink_n=1.0)
    for _ in range(50):
        learner.observe("s", "main", 100.0)
        learner.observe("s", "explore", 1.0)
    assert learner.predict_s("s", "main") > 50.0
    assert learner.predict_s("s", "explore") < 2.0
    assert 1.0 < learner.predict_s("s") < 100.0  # the session level pools both


def test_residual_median_grows_with_waiting():
    learner = GapLearner()
    for gap in (5.0, 10.0, 20.0, 40.0, 80.0):
        learner.observe("s", "main", gap)
    median = learner.predict_s("s", "main")
    r0 = learner.residual_median_s("s", "main", 0.0)
    r1 = learner.residual_median_s("s", "main", median)
    r2 = learner.residual_median_s("s", "main", 10 * median)
    assert r0 == pytest.approx(median, rel=1e-6)
    assert median < r1 < r2 and r2 >= 10 * median
    assert learner.residual_median_s("s", "main", 1e12) >= 1e12  # far in the tail: still past the wait


def test_zero_gaps_and_forget():
    learner = GapLearner()
    learner.observe("s", "main", 0.0)  # a sub-agent spawned as the call ended
    assert learner.predict_s("s") > 0
    learner.forget("s")
    assert "s" not in learner.sessions and not learner.contexts
    assert learner.population.n == 1  # the population keeps it
    with pytest.raises(ValueError):
        GapLearner(prior_gap_s=0.0)


def test_session_activity_pauses_only_when_no_call_is_left():
    act = SessionActivity()
    assert act.submit("c", ("c", "main"))  # a new session resumes
    assert not act.submit("c", ("c", "explore"))  # a sub-agent while main runs
    assert not act.finish("c")
    assert act.running("c")
    assert act.finish("c")  # the last call ended: a pause
    assert not act.running("c")
    assert act.submit("c", ("c", "main"))
    assert act.end("c") == {("c", "main"), ("c", "explore")}
