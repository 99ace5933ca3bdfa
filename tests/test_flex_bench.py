"""tools/bench/flex.py's seed-by-seed effect table: on minus off per seed, the mean, and how many seeds went
the right way (CO2 and cost down, CFE up), from rows shaped as the bench makes them."""
import argparse

import pytest

from tools.bench.flex import _seeds, effect_table


def _row(seed, flex, co2, cfe, led, cost, missed=0):
    return {"scenario": "nordic-wind", "strategy": "mpc", "seed": seed, "flex": flex, "co2_adjusted_kg": co2,
            "cfe_share": cfe, "ledger_cfe_pct": led, "cost": cost, "jobs_deadline_missed": missed}


def test_seed_ranges_are_parsed_and_bounded():
    assert _seeds("3") == [3] and _seeds("1-4") == [1, 2, 3, 4]
    for bad in ("x", "4-2", "1-200", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
            _seeds(bad)


def test_effect_table_is_on_minus_off_with_the_mean_and_the_count_that_helped():
    rows = [_row(1, True, 537.3, 0.74396, 72.26, 956.05), _row(1, False, 537.4, 0.74401, 71.71, 901.43),
            _row(2, True, 629.8, 0.70141, 69.32, 1015.11), _row(2, False, 632.4, 0.7008, 68.53, 1112.11, missed=1)]
    lines = effect_table(rows).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0] == ["nordic-wind", "mpc", "1", "-0.10", "-0.005", "+0.55", "+54.62", "0"]
    assert cells[1] == ["nordic-wind", "mpc", "2", "-2.60", "+0.061", "+0.79", "-97.00", "1"]
    assert cells[2] == ["nordic-wind", "mpc", "mean of 2", "-1.35 (2/2 better)", "+0.028 (1/2 better)",
                        "+0.67 (2/2 better)", "-21.19 (1/2 better)", "1"]
