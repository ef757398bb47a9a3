"""Shared pytest options.

`--soak` turns the randomized simulator test into a long soak run (20 minutes, 20000
steps per seed) and runs tests marked `soak`, which are skipped otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

CI_BUDGET_S = 150.0
SOAK_BUDGET_S = 20 * 60.0
CI_STEPS = 4000
SOAK_STEPS = 20000


@dataclass(frozen=True, slots=True)
class SimBudget:
    seconds: float
    steps: int
    soak: bool


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="long randomized simulation: 20 min budget, 20000 steps per seed "
        "(ZAUCTION_SIM_BUDGET=seconds overrides the budget)",
    )


def sim_budget_for(config: pytest.Config) -> SimBudget:
    soak = bool(config.getoption("--soak"))
    default = SOAK_BUDGET_S if soak else CI_BUDGET_S
    seconds = float(os.environ.get("ZAUCTION_SIM_BUDGET", default))
    return SimBudget(seconds, SOAK_STEPS if soak else CI_STEPS, soak)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    budget = sim_budget_for(config)
    skip_soak = pytest.mark.skip(reason="soak run: pass --soak")
    for item in items:
        if "soak" in item.keywords and not budget.soak:
            item.add_marker(skip_soak)
        if "sim_budget" in getattr(item, "fixturenames", ()):
            # The budget is checked between seeds, so allow one long seed past it.
            item.add_marker(pytest.mark.timeout(budget.seconds + 120))


@pytest.fixture(scope="session")
def sim_budget(pytestconfig: pytest.Config) -> SimBudget:
    return sim_budget_for(pytestconfig)
