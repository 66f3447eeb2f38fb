"""Plot functions take and return matplotlib Axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from anndata import AnnData  # noqa: E402

from diffsci.domains.singlecell import pl  # noqa: E402


def test_plots_return_the_axes():
    rng = np.random.default_rng(0)
    var = pd.DataFrame(index=["a", "b", "c"])
    t, p = AnnData(rng.random((5, 3)), var=var), AnnData(rng.random((4, 3)), var=var)
    fig, axes = plt.subplots(1, 4)
    assert pl.populations({"x": rng.random((10, 2))}, ax=axes[0]) is axes[0]
    assert pl.de_scatter(t, {"m": p}, ["a", "c"], ax=axes[1]) is axes[1]
    assert pl.pseudotime_scatter(np.arange(5), {"m": np.arange(5)}, ax=axes[2]) is axes[2]
    assert pl.branches(rng.random((4, 2)), list("abab"), ax=axes[3]) is axes[3]
    assert pl.branches(rng.random((4, 2)), list("abab")) is not None  # new figure
    plt.close("all")
