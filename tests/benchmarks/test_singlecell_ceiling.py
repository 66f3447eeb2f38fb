"""The ceiling diagnostic's Monte Carlo expectation against the simulator's closed form."""

from __future__ import annotations

import numpy as np

from benchmarks.singlecell_ceiling import expected_mean
from diffsci.domains.singlecell.simulate import PerturbationSimulator, Program


def test_expected_mean_is_the_simulators_expectation():
    """Away from the clipping at 0, the induced genes move by ``E[h] mean_i(g_i) a w`` and the
    repressed ones by ``-E[min(0.95, h f)] x``; the Monte Carlo change matches to 2% (a fixed
    h = 1 would be 4.6% off)."""
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(8)]
    prog = Program(
        name="P1",
        up=["g0", "g1"],
        up_weight=[0.5, 1.5],
        down=["g2", "g3"],
        down_frac=[0.3, 0.6],
        responders=["g4", "g5"],
        resp_mean=3.0,
        resp_std=1.0,
    )
    sim = PerturbationSimulator(genes=genes, programs={"P1": prog}, noise=0.05)
    x = 3.0 + rng.random((50, 8))
    got = expected_mean(sim, x, "P1", draws=4000, rng=np.random.default_rng(1))
    h = np.random.default_rng(2).lognormal(0.0, sim.hidden_sd, 200_000)
    gain = sim.gain(x, "P1").mean()
    want = x.mean(0).copy()
    want[:2] += h.mean() * gain * sim.effect_size * np.array([0.5, 1.5])
    want[2:4] *= 1 - np.array([np.minimum(0.95, h * f).mean() for f in (0.3, 0.6)])
    base = x.mean(0)
    np.testing.assert_allclose((got - base)[:4], (want - base)[:4], rtol=0.02)
    assert np.allclose(got[4:], x.mean(0)[4:])  # genes outside the program do not move
