"""The experiment grid: the coefficient-groups axis adds runs without renaming old ones."""

from __future__ import annotations

import dataclasses
import math

from fedctx.experiment import ExperimentConfig, plan_runs


def test_coefficient_groups_axis_covers_fedctx_and_the_i2cl_baselines_only() -> None:
    base = ExperimentConfig(name="x", tasks=("sst2",), epsilons=(math.inf, 8.0),
                            vector_sources=("private",), control_sources=("zero",))
    grouped = dataclasses.replace(base, coefficient_groups=(0, 3))
    old, new = plan_runs(base), plan_runs(grouped)
    # At 0 (one row per layer, the default) every key is the one older results carry.
    assert [r.key() for r in new if r.coefficient_groups == 0] == [r.key() for r in old]
    added = [r for r in new if r.coefficient_groups == 3]
    assert sorted({r.method for r in added}) == ["centralised", "fedctx", "local_only"]
    assert len({r.key() for r in new}) == len(new)  # every cell distinct
    fedctx_added = [(r.epsilon, r.vector_source) for r in added if r.method == "fedctx"]
    assert sorted(fedctx_added) == [(8.0, "private"), (math.inf, "private"), (math.inf, "zero")]
