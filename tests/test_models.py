"""Models other than the built-in MLP: a torch.nn.Module trained as an ensemble through torch.func.

Ground truths: the same seed trained alone, a plain PyTorch loop over one nn.Module, and dense
Hessians of an nn.Module's loss by torch.func.hessian.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlf.config import RunConfig, members_of, validate
from dlf.curvature.helper import Curvature
from dlf.dynamical_loss import DynamicalLoss
from dlf.engine.run import execute, prepare
from dlf.engine.trace import open_trace
from dlf.errors import ConfigError
from dlf.numerics.data import DigitsOptions, digits
from dlf.numerics.networks import myrtle5
from tests.cifar_fixtures import write_cifar
from tests.conftest import tiny_config


def cnn_config(tmp_path, **train):
    """Myrtle5 (c = 2) on 89 of the 8×8 digits: a CNN small enough for the default suite."""
    return RunConfig.model_validate(
        {
            "name": "cnn",
            "data": {"name": "digits", "val_fraction": 0.95},
            "model": {"name": "myrtle5", "options": {"channels": 2}},
            "loss": {"name": "dce"},
            "schedule": {"amplitude": [1, 5], "period": 4},
            "train": {"steps": 10, "seeds": 2, "lr": 0.2, "eval_every": 10, **train},
            "output": {"root": str(tmp_path), "progress": "never"},
        }
    )


def test_cnn_member_equals_seed_trained_alone(tmp_path):
    config = cnn_config(tmp_path, optimizer="sgd", batch_size=16, momentum=0.9)
    ensemble = execute(config, trace_path=tmp_path / "ensemble.nc")
    assert ensemble.open().attrs["gradient_path"] == "autograd"
    members = members_of(config)
    for index in (1, len(members) - 1):
        alone = execute(config, members=[members[index]], trace_path=tmp_path / f"m{index}.nc")
        torch.testing.assert_close(alone.theta[0], ensemble.theta[index], rtol=1e-10, atol=1e-10)


def test_vmap_and_loop_ensembles_train_the_same_members(tmp_path):
    """``model.ensemble``: a CNN's members batched by vmap or called one by one end equal to
    1e-10 (float64, minibatch SGD with momentum); ``auto`` loops over a CNN on the CPU only."""
    config = cnn_config(tmp_path, optimizer="sgd", batch_size=16, momentum=0.9)
    raw = config.model_dump(mode="json", exclude_unset=True)
    thetas = {}
    for way in ("vmap", "loop"):
        raw["model"]["ensemble"] = way
        config = RunConfig.model_validate(raw)
        assert prepare(config)[2].model.ensemble == way
        thetas[way] = execute(config, trace_path=tmp_path / f"{way}.nc").theta
    torch.testing.assert_close(thetas["vmap"], thetas["loop"], rtol=1e-10, atol=1e-10)
    raw["model"]["ensemble"] = "auto"
    assert prepare(RunConfig.model_validate(raw))[2].model.ensemble == "loop"
    linear = tiny_config(tmp_path)
    linear["model"] = {"name": "tests.test_models:tiny"}
    assert prepare(RunConfig.model_validate(linear))[2].model.ensemble == "vmap"


def test_heavy_ball_member_equals_a_plain_pytorch_loop(tmp_path):
    """θ ← θ − η v, v ← β v + ∇F (torch.optim.SGD's momentum), written out by hand on one
    nn.Module with dlf.DynamicalLoss: the trainer's member (A = 5, seed 1) lands on it."""
    beta, lr, steps = 0.8, 0.2, 10
    config = cnn_config(tmp_path, momentum=beta, steps=steps)
    result = execute(config, trace_path=tmp_path / "t.nc")
    member = members_of(config)[-1]
    data = digits(DigitsOptions(val_fraction=0.95))
    x = torch.as_tensor(data.x_train).view(-1, 1, 8, 8)
    y = torch.as_tensor(data.y_train)
    torch.manual_seed(member.seed)
    net = myrtle5((1, 8, 8), 10, channels=2).double()
    loss_fn = DynamicalLoss("ce", 10, member.amplitude, member.period, total_steps=steps)
    params = list(net.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    for t in range(steps):
        grads = torch.autograd.grad(loss_fn(net(x), y, t), params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads, strict=True):
                v.mul_(beta).add_(g)
                p.sub_(lr * v)
    expected = torch.cat([p.detach().flatten() for p in params])
    torch.testing.assert_close(result.theta[-1], expected, rtol=1e-10, atol=1e-10)


def tiny_cnn(input_shape, n_classes, channels=2):
    """conv(3×3) → tanh → 4×4 average pool → linear: 110 parameters on the 8×8 digits."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], channels, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(4),
        nn.Flatten(),
        nn.Linear(channels * (input_shape[1] // 4) * (input_shape[2] // 4), n_classes),
    )


@pytest.mark.parametrize(
    ("model", "build"),
    [
        ({"name": "tests.test_models:tiny_cnn"}, tiny_cnn),
        ({"name": "myrtle5", "options": {"channels": 1}}, functools.partial(myrtle5, channels=1)),
    ],
    ids=["tiny_cnn", "myrtle5"],
)
def test_lanczos_on_a_cnn_matches_the_dense_hessian(tmp_path, model, build):
    """The top two Hessian eigenvalues of two members on a 12-sample curvature batch: this
    Lanczos through the vmapped module against eigvalsh of torch.func.hessian of one module."""
    raw = cnn_config(tmp_path, curvature_batch=12).model_dump(mode="json")
    raw["model"] = model
    _, _, run = prepare(RunConfig.model_validate(raw))
    objective = run.curvature_objective
    assert objective is not None and len(objective.y) == 12
    np.testing.assert_array_equal(objective.y.numpy(), run.objective.y[fixed(89, 12)].numpy())
    theta = run.model.init([0, 1], dtype=torch.float64)
    gamma = 3 * torch.rand(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = Curvature(objective).at(0, theta, gamma).spectrum(2, tol=1e-10, max_iter=200)
    images, labels = objective.x.view(-1, 1, 8, 8), objective.y
    for m in range(2):
        torch.manual_seed(m)
        template = build((1, 8, 8), 10).double()
        shapes = [(name, p.shape) for name, p in template.named_parameters()]

        def loss(flat, m=m, template=template, shapes=shapes):
            params, offset = {}, 0
            for name, shape in shapes:
                params[name] = flat[offset : offset + math.prod(shape)].view(shape)
                offset += math.prod(shape)
            logits = torch.func.functional_call(template, params, (images,))
            ce = F.cross_entropy(logits, labels, reduction="none")
            return (gamma[m][labels] * ce).mean()

        dense = torch.func.hessian(loss)(theta[m])
        top = torch.linalg.eigvalsh(dense).flip(0)[:2]
        torch.testing.assert_close(result.values[m], top, rtol=1e-7, atol=1e-9)


def fixed(n, size):
    """The curvature batch by its definition: the first ``size`` of a seed-0 permutation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:size].sort().values


class Tiny(nn.Module):
    def __init__(self, n_in: int, n_classes: int, norm: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 4), nn.BatchNorm1d(4) if norm else nn.Tanh())
        self.head = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


def tiny(input_shape, n_classes, norm=False):
    return Tiny(math.prod(input_shape), n_classes, norm)


def test_module_path_factory_runs_with_every_curvature_analyzer(tmp_path):
    """Lanczos, NTK, bifurcation and landscape on a module named by ``module:factory``; the
    landscape's centre (a = b = 0) is the loss the trainer recorded at the sliced step."""
    analyzers = {"lanczos": {"every": 10}, "ntk": {"every": 10}, "bifurcation": {}}
    analyzers["landscape"] = {"steps": [10], "grid": 5, "future": 3}
    raw = tiny_config(tmp_path, train={"steps": 20}, analyzers=analyzers)
    raw["model"] = {"name": "tests.test_models:tiny"}
    ds = execute(RunConfig.model_validate(raw)).open()
    assert ds.attrs["status"] == "complete" and int(ds["width"]) == 0
    assert np.isfinite(ds["lanczos_eigenvalues"]).all()
    assert np.isfinite(ds["ntk_eigenvalues"]).all()
    assert "bifurcation_count" in ds and np.isfinite(ds["landscape_loss"]).all()
    recorded = ds["loss"].isel(member=0).sel(step=10)
    np.testing.assert_allclose(ds["landscape_loss"][0, 2, 2], recorded, rtol=1e-12)


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ({"name": "myrtle5", "width": 8}, "model", "width applies to model mlp only"),
        ({"options": {"channels": 2}}, "model", "mlp takes model.width"),
        ({"ensemble": "loop"}, "model", "ensemble applies to module models"),
        ({"name": "resnet9"}, "model.name", "unknown model 'resnet9'"),
        ({"name": "myrtle5", "options": {"chanels": 2}}, "model.options.chanels", "unknown key"),
        ({"name": "myrtle5"}, "model.name", "needs images"),  # the spiral's 2 features
        ({"name": "no_such_module:f"}, "model.name", "cannot import 'no_such_module'"),
        ({"name": "tests.test_models:nothing"}, "model.name", "no callable 'nothing'"),
        ({"name": "tests.test_models:tiny", "options": {"depth": 2}}, "model.options", "depth"),
        ({"name": "tests.test_models:tiny", "options": {"norm": True}}, "model.name", "buffers"),
    ],
)
def test_model_mistakes_are_one_line_errors(tmp_path, model, field, words):
    raw = tiny_config(tmp_path)
    raw["model"] = model
    with pytest.raises(ConfigError) as caught:
        prepare(validate(RunConfig, raw))
    assert caught.value.field == field and words in caught.value.message
    assert "\n" not in str(caught.value)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py", per_batch=60)


def test_quick_cifar_config_runs_through_the_cli(tmp_path, capsys, cifar_dir):
    from dlf.cli import main

    folder = cifar_dir
    overrides = [f"data.path={folder}", "train.steps=10", "train.curvature_batch=6"]
    overrides += ["model.options.channels=2", "analyzers.lanczos.every=5", "analyzers.lanczos.k=1"]
    code = main(
        [
            "run",
            str(REPO / "configs" / "cifar_myrtle_quick.yaml"),
            *[arg for override in overrides for arg in ("--set", override)],
            "--out",
            str(tmp_path / "studies"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    ds = open_trace(tmp_path / "studies" / "cifar_myrtle_quick" / "trace.nc")
    assert ds.attrs["status"] == "complete" and ds.attrs["dataset"] == "cifar10"
    assert np.isfinite(ds["lanczos_eigenvalues"]).all()
    assert "(1: the 3.8/η threshold)" in ds["bifurcation_ratio"].attrs["long_name"]


def test_full_cifar_config_builds(cifar_dir):
    """The supplementary's full config validates and builds its run (data, Myrtle5 with c = 32,
    curvature batch, analyzers) on the synthetic folder; only the sizes shrink to fit it."""
    from dlf.config import load_config

    sizes = ["data.train_size=40", "data.val_size=10", "train.curvature_batch=20"]
    config = load_config(REPO / "configs" / "cifar_myrtle.yaml", [f"data.path={cifar_dir}", *sizes])
    _, members, run = prepare(config)
    assert len(members) == 4 and run.data.input_shape == (3, 32, 32)
    assert run.model.n_params == sum(
        p.numel() for p in myrtle5((3, 32, 32), 3, channels=32).parameters()
    )
    assert set(run.analyzers) == {"lanczos", "bifurcation"}


def test_missing_cifar_folder_exits_2_naming_data_path(tmp_path, capsys):
    from dlf.cli import main

    config = str(REPO / "configs" / "cifar_myrtle_quick.yaml")
    assert main(["run", config, "--set", f"data.path={tmp_path / 'absent'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.path" in err and len(err.splitlines()) == 1


def test_user_model_config_names_an_importable_factory(tmp_path, monkeypatch):
    from dlf.config import load_config

    monkeypatch.syspath_prepend(str(REPO / "examples" / "user_model"))
    config = load_config(
        REPO / "configs" / "user_model.yaml",
        [
            f"output.root={tmp_path}",
            "output.progress=never",
            "train.steps=4",
            "train.seeds=1",
            "data.val_fraction=0.95",
            "train.curvature_batch=10",
        ],
    )
    result = execute(config)
    assert result.status == "complete"
    import small_cnn

    torch.manual_seed(0)
    module = small_cnn.build((1, 8, 8), 10, channels=4)
    assert result.theta.shape[1] == sum(p.numel() for p in module.parameters())
