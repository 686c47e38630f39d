"""The HUD's rolling percentiles (app/timing.py Rolling.pct) without numpy's percentile."""
import math

import numpy as np

from app.timing import Rolling


def test_rolling_pct_matches_numpy_linear():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 350):
        r = Rolling(n)
        xs = rng.exponential(0.003, size=n + 5)
        for x in xs:
            r.add(float(x))
        kept = xs[-n:]
        for q in (0, 1, 50, 90, 99, 99.9, 100):
            assert math.isclose(r.pct(q), float(np.percentile(kept, q)), rel_tol=1e-12, abs_tol=1e-15)


def test_rolling_pct_empty_is_nan():
    assert math.isnan(Rolling(4).pct(50))


def test_histogram_remembers_where_its_maximum_was():
    from app.timing import Stats, run_report
    s = Stats(8)
    for i, v in enumerate([0.028, 0.029, 0.18, 0.028]):
        s.ticks = i + 1
        s.interval.add(v, s.ticks)
    rep = run_report(s)
    assert rep["interval_max_at_tick"] == 3 and abs(rep["interval_max_ms"] - 180.0) < 1e-9
    assert rep["hidden_s"] == 0.0
