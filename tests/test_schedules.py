"""Γ_i(t) against values computed by hand from 2021 eqs. 2–5."""

import pytest
import torch

from dlf.numerics.schedules import sine, triangle


def gamma(schedule, steps, amplitude, period, classes=3):
    return schedule(
        torch.tensor(steps),
        torch.tensor([amplitude], dtype=torch.float64),
        torch.tensor([period], dtype=torch.float64),
        classes,
    )[:, 0, :]


def test_triangle_hand_computed_values():
    # A = 4, T = 8, C = 3: m = 2(A-1)/T = 0.75.
    # t=2: class 0 raw 1 + 0.75*2 = 2.5, others 1 → Γ = 3·(2.5, 1, 1)/4.5
    # t=4 (T/2): raw A = 4 → 3·(4,1,1)/6 = (2, 0.5, 0.5)
    # t=6: raw 2A - m·6 - 1 = 8 - 4.5 - 1 = 2.5
    # t=8: next period, class 1 emphasised at raw 1 → all ones
    # t=12: class 1 at T/2 → (0.5, 2, 0.5); t=20: class 2 at T/2 → (0.5, 0.5, 2); t=28: class 0
    g = gamma(triangle, [0, 2, 4, 6, 8, 12, 20, 28], 4.0, 8.0)
    expected = torch.tensor(
        [
            [1, 1, 1],
            [7.5 / 4.5, 3 / 4.5, 3 / 4.5],
            [2, 0.5, 0.5],
            [7.5 / 4.5, 3 / 4.5, 3 / 4.5],
            [1, 1, 1],
            [0.5, 2, 0.5],
            [0.5, 0.5, 2],
            [2, 0.5, 0.5],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("schedule", [triangle, sine])
def test_amplitude_one_is_static_and_weights_sum_to_c(schedule):
    steps = list(range(0, 200, 7))
    torch.testing.assert_close(
        gamma(schedule, steps, 1.0, 30.0), torch.ones(len(steps), 3, dtype=torch.float64)
    )
    g = gamma(schedule, steps, 25.0, 30.0, classes=4)
    torch.testing.assert_close(g.sum(-1), torch.full((len(steps),), 4.0, dtype=torch.float64))
    assert g.max() <= 4.0 and g.min() > 0


def test_members_get_their_own_amplitude_and_period():
    steps = torch.arange(0, 50)
    amp = torch.tensor([1.0, 10.0, 10.0], dtype=torch.float64)
    per = torch.tensor([10.0, 10.0, 20.0], dtype=torch.float64)
    g = triangle(steps, amp, per, 3)
    for m in range(3):
        torch.testing.assert_close(
            g[:, m], gamma(triangle, list(range(50)), amp[m].item(), per[m].item())
        )
