"""Telling a run that learned from one that diverged or learned nothing.

A finished run can still be useless: a huge inner or meta learning rate leaves finite but
enormous losses (4e9 was seen) and a model at chance. Such a run is not reported as a success:
``results.json`` records what was found and the command line says it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

# The meta-loss a run may end at, as a multiple of the loss it should never exceed: the
# chance-level cross-entropy ln(ways) for classification, the first logged loss for regression.
EXPLODED = {"classification": 10.0, "regression": 100.0}


@dataclass
class Health:
    diverged: bool = False
    at_chance: bool = False
    findings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(metrics: Sequence[dict[str, Any]], ways: int, regression: bool, test_mean: float,
             test_ci95: float) -> Health:
    """What the training log and the test score say about a finished run."""
    health = Health()
    losses = [line["loss"] for line in metrics if line.get("loss") is not None]
    if any(not math.isfinite(loss) for loss in losses):
        health.diverged = True
        health.findings.append("the meta-loss became non-finite during training")
    elif losses:
        final = losses[-1]
        if regression:
            reference, what = losses[0], f"its first logged value {losses[0]:.3g}"
            limit = EXPLODED["regression"]
        else:
            reference, what = math.log(ways), f"the chance-level loss ln({ways}) = {math.log(ways):.3g}"
            limit = EXPLODED["classification"]
        if reference > 0 and final > limit * reference:
            health.diverged = True
            health.findings.append(f"the meta-loss ended at {final:.3g}, over {limit:g}x {what}")
    if not regression and test_mean <= 1.0 / ways + test_ci95:
        health.at_chance = True
        health.findings.append(f"test accuracy {100 * test_mean:.2f}% is no better than chance "
                               f"({100 / ways:.2f}% for {ways}-way)")
    return health
