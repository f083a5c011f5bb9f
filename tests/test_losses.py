"""Each loss against a direct per-sample formula written with plain Python loops."""

import math

import pytest
import torch

from dlf.numerics.losses import BUILTIN_LOSSES

LOSSES = {loss.name: loss for loss in BUILTIN_LOSSES}


def direct(name, logits, labels, gamma):
    """The papers' formulas, one sample at a time (mean over samples)."""
    members, samples, classes = logits.shape
    out = []
    for m in range(members):
        total = 0.0
        for j in range(samples):
            f = logits[m, j].tolist()
            y = int(labels[j])
            onehot = [1.0 if i == y else 0.0 for i in range(classes)]
            g = gamma[m].tolist() if name not in ("ce", "mse") else [1.0] * classes
            if name in ("ce", "dce"):
                ce = -(f[y] - math.log(sum(math.exp(v) for v in f)))
                total += g[y] * ce
            elif name in ("mse", "dmse1"):
                total += g[y] * sum((f[i] - onehot[i]) ** 2 for i in range(classes))
            else:  # dmse2
                total += sum((f[i] - g[i] * onehot[i]) ** 2 for i in range(classes))
        out.append(total / samples)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_direct_formula(name):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, 4, (7,), generator=gen)
    raw = 1 + 5 * torch.rand(3, 4, generator=gen, dtype=torch.float64)
    gamma = 4 * raw / raw.sum(-1, keepdim=True)
    # Static losses are evaluated by the trainer with Γ ≡ 1; the direct formula ignores Γ for them.
    used_gamma = gamma if LOSSES[name].dynamical else torch.ones_like(gamma)
    got = LOSSES[name](logits, labels, used_gamma)
    torch.testing.assert_close(got, direct(name, logits, labels, gamma), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["dce", "dmse1", "dmse2"])
def test_dynamical_equals_static_at_unit_gamma(name):
    logits = torch.randn(2, 5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 0])
    ones = torch.ones(2, 3, dtype=torch.float64)
    static = LOSSES[LOSSES[name].static_name]
    torch.testing.assert_close(LOSSES[name](logits, labels, ones), static(logits, labels, ones))
