"""The cost a study announces before it starts: member-steps from the ladder and budgets
(checked against a hand count), a rate probed on this machine, and the line printed."""

from __future__ import annotations

import math

import pytest

from dlf.config import RunConfig
from dlf.engine.probe import step_rate
from dlf.studies.search import run_study
from dlf.studies.search.config import study_config_from_raw
from dlf.studies.search.cost import member_steps, rungs_per_track
from tests.conftest import study_raw, tiny_config


@pytest.mark.parametrize(("widths", "rungs"), [(1, 1), (2, 2), (3, 3), (13, 5), (16, 5)])
def test_bisection_rungs(widths, rungs):
    assert rungs_per_track(widths) == rungs


def test_member_steps_by_hand(tmp_path):
    config = study_config_from_raw(study_raw(tmp_path, confirm_seeds=4, confirm_max=8))
    # ladder 2, 4, 8: 3 rungs; 2 seeds, 80 steps; dynamical: batch 2 of 2 trials per width;
    # static: 1 trial per width; confirmation: 4 fresh seeds at least, 8 at most
    rungs, steps, seeds = 3, 80, 2
    least = rungs * steps * ((2 * seeds + 4) + (1 * seeds + 4))
    most = rungs * steps * ((2 * seeds + 8) + (1 * seeds + 8))
    assert member_steps(config) == (least, most)


@pytest.mark.parametrize("train", [{}, {"optimizer": "sgd", "batch_size": 8, "momentum": 0.9}])
def test_the_probe_measures_a_positive_rate(tmp_path, train):
    config = RunConfig.model_validate(tiny_config(tmp_path, train=train))
    rate = step_rate(config, 4, seconds=0.05)
    assert math.isfinite(rate) and rate > 0


def test_a_study_announces_its_cost_before_it_starts(tmp_path, capsys):
    run_study(study_config_from_raw(study_raw(tmp_path)))
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("plan: about 3 widths per track (bisection over 3), ")
    assert "member-steps/s (measured now at width 4, 4 members, " in first
