"""The bias audit's statistics (experiments/bias_audit/analyse.py) on made-up run folders."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bias_audit" / "analyse.py"


@pytest.fixture(scope="module")
def analyse():
    spec = importlib.util.spec_from_file_location("bias_audit_analyse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wilson_interval_matches_published_values(analyse):
    # Wilson (1927) / Newcombe (1998) table: 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634].
    low, high = analyse.wilson_ci(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    assert analyse.wilson_ci(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(math.isnan(v) for v in analyse.wilson_ci(0, 0))


def test_chi_squared_permutation_separates_dependent_from_independent(analyse):
    groups = ["a"] * 20 + ["b"] * 20
    dependent = [True] * 18 + [False] * 2 + [False] * 18 + [True] * 2
    independent = [True, False] * 20
    _, p_dependent, _ = analyse.chi2_permutation(groups, dependent, permutations=2000)
    _, p_independent, _ = analyse.chi2_permutation(groups, independent, permutations=2000)
    assert p_dependent < 0.001 and p_independent > 0.5
    assert math.isnan(analyse.chi2_permutation(groups, [True] * 40)[1])  # constant outcome: no test


def test_table_groups_samples_by_the_true_faces_skin_tone(analyse, tmp_path):
    run = tmp_path / "0"
    run.mkdir()
    rows = [
        {"name": f"f{i}_x8", "duplicate": 0, "scale": 8, "success": str(i % 2 == 0), "ita_hr": ita,
         "ita_sr": ita + 2, "ita_shift": 2.0, "id_dist_hr": 0.5 + i / 100, "id_match_hr": 1.0}
        for i, ita in enumerate([60.0, 58.0, 20.0, 15.0, -40.0])
    ]  # fmt: skip
    with (run / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    records = analyse.samples([tmp_path])
    table = {row[3]: row for row in analyse.group_rows(records)}
    assert table["very light"][4] == "2" and table["tan"][4] == "2" and table["dark"][4] == "1"
    assert table["light"][4] == "0" and table["**all**"][4] == "5"
    assert table["very light"][5].startswith("50% (1/2)") and table["tan"][6].startswith("2.0")
