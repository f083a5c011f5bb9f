"""The min-width search over any model's size knob: a CNN's channels on tiny synthetic images,
a ``module:factory`` model's named keyword, myrtle5's declared ``channels``, and bad knob names.

The planted problem has a known answer. Three classes of images that differ in their mean
colour; the CNN is a 1×1 convolution to ``channels`` channels without bias, a global average
pool and a linear read-out without bias: a linear map of the mean colour of rank ≤ channels.
With one channel the logits are u · s(x) for one scalar s(x), so the predicted class is one of
at most two (argmax u where s > 0, argmin u where s < 0): accuracy ≤ 2/3 on balanced classes
whatever the training. With two channels the three (centred) class means lie in a plane and the
classifier argmax_j m_j · x separates them; the test builds that rank-2 solution and checks it
reaches the target. So w* = 2 channels, known before any search. The study trains with
minibatch SGD and momentum and scores the held-out test images, as a CIFAR study does (the
answer held on 5 disjoint seed sets when this test was written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml
from torch import nn

from dlf.errors import ConfigError
from dlf.hooks.manager import load_plugins
from dlf.studies.search import run_study
from dlf.studies.search.config import study_config_from_raw
from dlf.studies.search.cost import plan
from tests.cifar_fixtures import write_cifar

TARGET = 0.85


def mean_colour_cnn(input_shape: tuple[int, ...], n_classes: int, *, channels: int) -> nn.Module:
    """The planted model: rank ≤ ``channels`` linear map of the image's mean colour."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], channels, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, n_classes, bias=False),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py", per_batch=60)


def planted_raw(root: Path, images: Path, **search: Any) -> dict[str, Any]:
    return {
        "name": "planted",
        "data": {"name": "cifar10", "path": str(images), "classes": 3},
        "model": {"name": f"{__name__}:mean_colour_cnn", "dtype": "float64"},
        "loss": {"name": "dce"},
        "train": {  # minibatch SGD with momentum, evaluated on the held-out test images
            "steps": 120,
            "lr": 0.2,
            "optimizer": "sgd",
            "batch_size": 30,
            "momentum": 0.9,
            "eval_every": 40,
        },
        "output": {"root": str(root), "progress": "never"},
        "search": {
            "target": TARGET,
            "seeds": 2,
            "width": {"low": 1, "high": 4, "per_octave": 1, "option": "channels"},
            "amplitude": {"low": 3, "high": 3},
            "period": {"low": 20, "high": 20},
            "trials_per_width": 1,
            "batch": 1,
            "trials": 6,
            "confirm_seeds": 6,
            "confirm_max": 6,
            "static_baseline": False,
            **search,
        },
    }


def test_the_planted_threshold_is_where_the_proof_puts_it(images):
    """Ground truth without training: the rank-2 read-out m_j · x reaches the target on the
    validation images; the bound for one channel (at most 2 of 3 classes) lies below it."""
    entry = load_plugins([]).registries.datasets.get("cifar10", "data.name")
    data = entry.build(entry.options(path=images, classes=3))
    colour = lambda x: x.reshape(len(x), 3, -1).mean(axis=2)  # noqa: E731
    train, val = colour(data.x_train), colour(data.x_val)
    means = np.stack([train[data.y_train == k].mean(axis=0) for k in range(3)])
    assert np.linalg.matrix_rank(means - means.mean(axis=0), tol=1e-6) == 2
    accuracy = np.mean(np.argmax(val @ means.T, axis=1) == data.y_val)
    counts = np.bincount(data.y_val, minlength=3)
    one_channel_bound = (counts.sum() - counts.min()) / counts.sum()  # the two largest classes
    assert accuracy >= TARGET > one_channel_bound


def test_a_search_over_a_cnns_channels_finds_the_planted_threshold(tmp_path, images):
    config = study_config_from_raw(planted_raw(tmp_path, images))
    assert config.knob.field == "model.options.channels"
    result = run_study(config)
    found = result.findings["dynamical"]
    assert found.bracket.converged and found.w_star == 2
    assert found.rungs[1].verdict == "does not reach" and found.rungs[2].verdict == "reaches"
    assert max(found.rungs[1].confirm_values) <= 2 / 3 + 1e-9  # the proof's bound, on fresh seeds
    ds = xr.open_dataset(result.study_file, engine="netcdf4")
    assert ds.attrs["width_option"] == "model.options.channels"
    assert ds["width"].attrs["long_name"] == f"{__name__}:mean_colour_cnn channels"
    traces = sorted(p.name for p in (result.directory / "runs").iterdir())
    assert traces and all("-channels000" in name for name in traces)
    trace = xr.open_dataset(result.directory / "runs" / traces[0], engine="netcdf4")
    assert '"channels":' in trace.attrs["config"]  # each batch's run sets the knob itself
    report = result.report.read_text()
    assert "`model.options.channels`" in report and "w* = 2 (" in report
    from dlf import open_study, plots

    axis = plots.width([open_study(result.directory)]).axes[0].get_xlabel()
    assert axis == f"{__name__}:mean_colour_cnn channels"


def test_the_ladder_sets_the_named_keyword_and_the_config_may_not(tmp_path, images):
    config = study_config_from_raw(planted_raw(tmp_path, images))
    run = config.at_width(config.run, 4)
    assert run.model.options == {"channels": 4} and config.run.model.options == {}
    assert "channels rungs per track" in plan(config) and "at " in plan(config)
    raw = planted_raw(tmp_path, images)
    raw["model"]["options"] = {"channels": 2}
    with pytest.raises(ConfigError, match=r"search\.width") as err:
        study_config_from_raw(raw)
    assert err.value.field == "model.options.channels"


def test_myrtle5_declares_channels_as_its_width(tmp_path, images):
    raw = planted_raw(tmp_path, images)
    raw["model"] = {"name": "myrtle5", "dtype": "float32"}
    del raw["search"]["width"]["option"]
    config = study_config_from_raw(raw)
    assert config.knob.field == "model.options.channels"
    assert config.at_width(config.run, 8).model.options == {"channels": 8}


def test_a_myrtle5_trace_records_its_channels_as_its_width(tmp_path, images):
    """The trace's scalar ``width`` is the declared size option's value, named in long_name."""
    from dlf.engine.run import execute

    raw = planted_raw(tmp_path, images)
    raw["model"] = {"name": "myrtle5", "dtype": "float32"}
    del raw["search"]["width"]["option"]
    config = study_config_from_raw(raw)
    run = config.at_width(config.run, 6)
    result = execute(run.model_copy(update={"train": run.train.model_copy(update={"steps": 2})}))
    trace = xr.open_dataset(result.path, engine="netcdf4")
    assert int(trace["width"]) == 6
    assert trace["width"].attrs["long_name"] == "myrtle5 channels"


@pytest.mark.parametrize(
    ("model", "option", "says"),
    [
        ("myrtle5", "chanels", "myrtle5 has no option 'chanels'; allowed: channels"),
        (f"{__name__}:mean_colour_cnn", "width", "has no option 'width'; allowed: channels"),
        (f"{__name__}:mean_colour_cnn", None, "declares no width option"),
        ("mlp", "channels", "mlp's width is model.width"),
    ],
)
def test_a_bad_knob_name_is_one_line_naming_search_width_and_the_model(
    tmp_path, images, model, option, says
):
    raw = planted_raw(tmp_path, images)
    raw["model"] = {"name": model}
    if model == "mlp":
        raw["data"] = {"name": "spiral", "points_per_class": 10}
    raw["search"]["width"]["option"] = option
    with pytest.raises(ConfigError) as err:
        study_config_from_raw(raw)
    assert err.value.field == "search.width.option" and err.value.exit_code == 2
    assert says in err.value.message and model.split(":")[0] in str(err.value)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_bad_knob_with_exit_code_2_and_writes_nothing(tmp_path, images, capsys):
    from dlf.cli import main

    raw = planted_raw(tmp_path / "out", images)
    raw["search"]["width"]["option"] = "filters"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.width.option" in err[0] and "mean_colour_cnn" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_knob_value_reaches_the_module(tmp_path, images):
    """The run a rung trains builds the model with that many channels (θ's size says so)."""
    from dlf.engine.run import prepare

    config = study_config_from_raw(planted_raw(tmp_path, images))
    sizes = {}
    for channels in (1, 3):
        _, _, run = prepare(config.at_width(config.run, channels))
        sizes[channels] = run.model.n_params
    assert sizes == {1: 3 * 1 + 1 * 3, 3: 3 * 3 + 3 * 3}


# --- configs/min_width_cifar.yaml ----------------------------------------------------------------

CIFAR_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "min_width_cifar.yaml"


def test_the_cifar_config_is_the_supplementarys_set_up(images):
    """3 classes, 3 000 images, Nesterov 0.9, batch 512, η 0 → 0.02 (epoch 300) → 0.002 (epoch
    700), oscillations off from epoch 600: with 3000 // 512 = 5 steps per epoch."""
    from dlf.studies.search import load_study_config
    from dlf.studies.search.study import check_study

    config = load_study_config(CIFAR_CONFIG, [f"data.path={images}", "data.train_size=60"])
    run, epoch = config.run, 3000 // 512
    assert (run.data.name, run.data.options["classes"], config.knob.option) == (
        "cifar10",
        3,
        "channels",
    )
    train = run.train
    assert (train.optimizer, train.batch_size, train.momentum, train.nesterov) == (
        "sgd",
        512,
        0.9,
        True,
    )
    assert train.lr == [0.02] and train.final_lr_factor * 0.02 == pytest.approx(0.002)
    assert (train.warmup_steps, run.schedule.static_from, train.steps) == (
        300 * epoch,
        600 * epoch,
        700 * epoch,
    )
    assert config.search.width.ladder()[-1] == 64 and config.search.metric == "val_accuracy"
    check_study(config)  # everything a trial could reject, at the smallest and widest rung


@pytest.mark.slow
def test_the_cifar_configs_quick_scale_runs_through_the_cli(tmp_path, images, capsys):
    """About 1.5 min on a loaded 2-core machine."""
    from dlf.cli import main

    args = ["run", str(CIFAR_CONFIG), "--set", "search.scale=quick", "--set"]
    args += [f"data.path={images}", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("(myrtle5 channels) confirmed to reach") == 2
    ds = xr.open_dataset(tmp_path / "min_width_cifar" / "study.nc", engine="netcdf4")
    assert ds.attrs["width_option"] == "model.options.channels"
    assert {"static", "dynamical"} == set(ds["kind"].values)
    dynamical = ds["kind"] == "dynamical"
    assert (ds["measured_step"].where(dynamical, 40) >= 40).all()  # decided once Γ is static


def test_a_channel_ladder_too_wide_for_memory_is_refused_before_anything_is_written(
    tmp_path, images
):
    """The engine's memory estimate knows the MLP only; a module model's widest rung is sized
    on the meta device (nothing allocated) and refused naming search.width.high."""
    from dlf.studies.search.study import check_study

    raw = planted_raw(tmp_path / "out", images)
    raw["model"] = {"name": "myrtle5", "dtype": "float32"}
    del raw["search"]["width"]["option"]
    raw["search"]["width"].update(low=4, high=8192)
    config = study_config_from_raw(raw)
    with pytest.raises(ConfigError) as err:
        check_study(config)
    assert err.value.field == "search.width.high" and "myrtle5 channels 8192" in err.value.message
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    raw["search"]["width"].update(high=16)
    check_study(study_config_from_raw(raw))  # a ladder that fits passes
