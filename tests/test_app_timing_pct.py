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
