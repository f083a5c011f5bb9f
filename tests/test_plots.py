"""Every figure drawn from small real runs and checked for what it shows: panels, lines, cells,
points and labels, with the plotted numbers recomputed from the traces; plus the one-line errors
for missing data and ``cli_plot`` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import QuadMesh

import dlf.plots as plots
from dlf.config import RunConfig
from dlf.engine.run import execute
from dlf.errors import ConfigError, DlfError
from tests.conftest import tiny_config

STEPS = 200


def run(root, **sections):
    """Train a tiny config under ``root`` and return its trace."""
    return execute(RunConfig.model_validate(tiny_config(root, **sections))).open()


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("plots")


@pytest.fixture(scope="session")
def curvature_trace(root):
    """One member on an oscillating loss with Hessian, NTK and landscape analyzers."""
    return run(
        root,
        name="curvature",
        schedule={"amplitude": [20], "period": 80},
        train={"steps": STEPS, "seeds": 1, "eval_every": 50},
        analyzers={
            "lanczos": {"every": 5, "k": 3},
            "ntk": {"every": 10},
            "landscape": {"steps": [60, 150], "grid": 9, "future": 6},
        },
    )


@pytest.fixture(scope="session")
def grid_trace(root):
    """3 amplitudes × 2 periods × 2 seeds in one ensemble."""
    return run(
        root,
        name="grid",
        schedule={"amplitude": [1, 5, 20], "period": [10, 40]},
        train={"steps": 100, "seeds": 2, "eval_every": 50},
    )


@pytest.fixture(scope="session")
def width_traces(root):
    """A width sweep of CE (A = 1) and DCE at two learning rates, with λmax every 10 steps."""
    return [
        run(
            root / "sweep",
            name=f"width{w}",
            model={"width": w},
            schedule={"amplitude": [1, 10], "period": 20},
            train={"steps": 100, "seeds": 2, "lr": [0.5, 1.0], "eval_every": 50},
            analyzers={"lanczos": {"every": 10, "k": 1}},
        )
        for w in (3, 6, 12)
    ]


@pytest.fixture(scope="session")
def edge_trace(root):
    """The static loss at η = 2 and 4: λmax climbs to 2/η and the loss starts to bounce."""
    return run(
        root,
        name="edge",
        data={"name": "spiral", "points_per_class": 50},
        model={"width": 16},
        schedule={"amplitude": [1], "period": 100},
        train={"steps": 500, "seeds": 2, "lr": [2.0, 4.0], "eval_every": 100},
        analyzers={"lanczos": {"every": 4, "k": 3}, "bifurcation": {}},
    )


def lines_of(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_dynamics_panels_and_zoom(curvature_trace):
    ds = curvature_trace
    fig = plots.dynamics(ds, zoom=(100, 160))
    axes = np.array(fig.axes).reshape(6, 2)  # Γ, F, ΔF, accuracy, Hessian, NTK × (full, zoom)
    labels = [ax.get_ylabel() for ax in axes[:, 0]]
    assert labels == [
        "Γ$_i$(t)",
        "F(t)",
        "F(t) − F(t−1)",
        "train accuracy",
        "Hessian λ",
        "NTK λ$_{max}$",
    ]
    gamma = lines_of(axes[0, 0])
    assert len(gamma) == 3
    np.testing.assert_allclose(gamma["Γ$_1$"].get_ydata(), ds["gamma"][0, :, 1])
    change = axes[2, 0].get_lines()[0]
    np.testing.assert_allclose(change.get_ydata(), np.diff(ds["loss"][0]))
    hessian = lines_of(axes[4, 0])
    assert set(hessian) == {"λ$_1$", "λ$_2$", "λ$_3$", "2/η"}
    np.testing.assert_allclose(hessian["λ$_1$"].get_xdata(), np.arange(0, STEPS, 5))
    np.testing.assert_allclose(hessian["2/η"].get_ydata(), 2.0)
    zoomed = lines_of(axes[4, 1])["λ$_2$"].get_xdata()
    assert zoomed.min() == 100 and zoomed.max() == 160
    assert axes[0, 1].get_title() == "zoom: steps 100–160"
    assert axes[-1, 0].get_xlabel() == "step t"


def test_dynamics_reports_missing_data(grid_trace, curvature_trace):
    with pytest.raises(
        DlfError,
        match=r"^figure 'dynamics' needs variable lanczos_eigenvalues; "
        r"run with analyzers: \{lanczos: \{\}\}$",
    ):
        plots.dynamics(grid_trace)
    with pytest.raises(DlfError, match="member 9 does not exist; this trace has 1"):
        plots.dynamics(curvature_trace, member=9)
    with pytest.raises(DlfError, match="zoom 'auto' needs a detected instability of member 0"):
        plots.dynamics(curvature_trace, zoom="auto")


def test_dynamics_marks_detected_instabilities(edge_trace):
    ds = edge_trace
    member = int(np.flatnonzero(ds["bifurcation_count"].values)[0])
    start = int(ds["bifurcation_start"][ds["bifurcation_member"] == member][0])
    end = int(ds["bifurcation_end"][ds["bifurcation_member"] == member][0])
    fig = plots.dynamics(ds, member=member, zoom="auto")
    axes = np.array(fig.axes).reshape(5, 2)  # no NTK panel: the run had no ntk analyzer
    for ax in axes[1:, 0]:  # onsets (green) and ends (red) on every panel below Γ
        vertical = [line.get_xdata()[0] for line in ax.get_lines() if line.get_ls() == "--"]
        assert start in vertical and end in vertical
    threshold = lines_of(axes[4, 0])["mean λ$_1$ at onset"]
    assert threshold.get_ydata()[0] == float(ds["bifurcation_mean_lambda_onset"][member])
    lo, hi = (float(v) for v in axes[3, 1].get_lines()[0].get_xdata()[[0, -1]])
    assert lo <= start < end <= hi  # the zoom column spans the first instability
    assert axes[0, 1].get_title().startswith("zoom: steps ")


def test_threshold_points_are_means_per_learning_rate(edge_trace):
    ds = edge_trace
    fig = plots.threshold([ds])
    (ax,) = fig.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_xlabel() == "learning rate η" and ax.get_ylabel() == "Hessian λ$_{max}$ at onset"
    (points,) = ax.containers
    eta, mean = points.lines[0].get_data()
    assert list(eta) == [2.0, 4.0]
    onset = ds["bifurcation_mean_lambda_onset"]
    for e, value in zip(eta, mean, strict=True):
        assert value == pytest.approx(float(onset.where(ds["eta"] == e).mean()))
    edge = lines_of(ax)["2/η"]
    np.testing.assert_allclose(edge.get_ydata(), 2 / edge.get_xdata())
    assert points.get_label().startswith("fit η$^{")
    with pytest.raises(DlfError, match="needs instabilities measured at two or more learning"):
        plots.threshold([ds.isel(member=ds["eta"].values == 2.0)])


def test_threshold_from_a_threshold_study_result(edge_trace):
    from dlf.analysis.threshold import member_onsets, threshold_dataset

    result = threshold_dataset(member_onsets(edge_trace, "first"), "first")
    fig = plots.threshold([result])
    (points,) = [c for c in fig.axes[0].containers if "visible onset" in str(c.get_label())]
    eta, median = points.lines[0].get_data()
    assert list(eta) == [2.0, 4.0]
    expected = result["ratio_onset_median"].values * 2 / result["eta"].values  # the study's own
    np.testing.assert_allclose(median, expected)


def test_phase_cells_are_seed_means(grid_trace):
    ds = grid_trace
    fig = plots.phase(ds)
    heat = [ax for ax in fig.axes if ax.get_xlabel() == "period T"]
    assert [ax.get_title() for ax in heat] == ["training accuracy", "validation accuracy"]
    assert len(fig.axes) == 4  # two maps, two colour bars
    mesh = next(c for c in heat[1].collections if isinstance(c, QuadMesh))
    cells = mesh.get_array().reshape(3, 2)  # amplitudes 20, 5, 1 (top down) × periods 10, 40
    final = ds["val_accuracy"].isel(eval_step=-1)
    for i, a in enumerate([20, 5, 1]):
        for j, t in enumerate([10, 40]):
            chosen = (ds["amplitude"] == a) & (ds["period"] == t)
            assert cells[i, j] == pytest.approx(float(final.where(chosen).mean()))
    assert [t.get_text() for t in heat[0].get_yticklabels()] == ["20", "5", "1"]


def test_phase_needs_a_grid(width_traces):
    one_point = width_traces[0].isel(member=[0, 1])  # A = 1, η = 0.5, two seeds
    with pytest.raises(DlfError, match=r"needs members on a \(T, A\) grid; .* single point"):
        plots.phase(one_point)
    with pytest.raises(DlfError, match=r"needs one learning rate; this trace has η = 0\.5, 1:"):
        plots.phase(width_traces[0])


def test_width_curves_are_seed_means_per_width(width_traces):
    fig = plots.width(width_traces)
    assert len(fig.axes) == 2  # CE family at η = 0.5 and at η = 1
    ax = next(ax for ax in fig.axes if ax.get_title() == "CE family, η = 1")
    assert ax.get_xlabel() == "hidden width" and ax.get_ylabel() == "validation accuracy"
    curves = {c.get_label(): c for c in ax.containers}  # one errorbar container per loss
    assert set(curves) == {"CE", "DCE"}
    x, y = curves["DCE"].lines[0].get_data()
    assert list(x) == [3, 6, 12]
    for w, value, ds in zip(x, y, width_traces, strict=True):
        chosen = (ds["amplitude"] == 10) & (ds["eta"] == 1.0)
        expected = ds["val_accuracy"].isel(eval_step=-1).where(chosen).mean()
        assert value == pytest.approx(float(expected)), w


def test_width_needs_two_widths(width_traces):
    with pytest.raises(DlfError, match="needs at least two widths"):
        plots.width(width_traces[:1])


def test_landscape_slices_with_trajectory(curvature_trace):
    ds = curvature_trace
    fig = plots.landscape(ds)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("t = ")]
    assert [ax.get_title() for ax in panels] == ["t = 60, member 0", "t = 150, member 0"]
    for ax, i in zip(panels, range(2), strict=True):
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        assert mesh.get_array().size == 9 * 9
        np.testing.assert_allclose(
            np.sort(mesh.get_array().ravel()), np.sort(ds["landscape_loss"][i].values.ravel())
        )
        dots = ax.get_lines()[0]
        assert len(dots.get_xdata()) == 6  # the `future` steps after the slice
        np.testing.assert_allclose(dots.get_xdata(), ds["landscape_trajectory"][i, :, 0])
    assert panels[0].get_xlabel() == "a (along v$_1$)"


def test_sharpness_means_over_seeds(width_traces):
    fig = plots.sharpness(width_traces)
    loss_ax, lam_ax = fig.axes
    assert loss_ax.get_ylabel() == "mean loss F" and lam_ax.get_ylabel() == "mean Hessian λ$_{max}$"
    assert len(loss_ax.get_lines()) == 3 * 2 * 2  # widths × η × amplitudes
    curves = lines_of(lam_ax)
    ds = width_traces[1]
    chosen = (ds["eta"] == 0.5) & (ds["amplitude"] == 10)
    expected = ds["lanczos_eigenvalues"][..., 0].where(chosen).mean("member")
    np.testing.assert_allclose(curves["width 6, eta 0.5, amplitude 10"].get_ydata(), expected)
    edges = [line for line in lam_ax.get_lines() if line.get_label().startswith("_")]
    assert sorted(line.get_ydata()[0] for line in edges) == [2.0, 4.0]  # 2/η for η = 1, 0.5


def test_cli_plot_draws_what_a_directory_supports(root, width_traces, capsys):
    out = root / "sweep-figures"
    assert plots.cli_plot([root / "sweep"], None, out, "svg") == 0
    written = {p.name for p in out.iterdir()}
    assert written == {
        "width.svg",
        "sharpness.svg",
        "dynamics-width3.svg",
        "dynamics-width6.svg",
        "dynamics-width12.svg",
    }
    assert (out / "width.svg").read_text().startswith("<?xml")
    err = capsys.readouterr().err
    assert "skipped phase-width3: figure 'phase' needs one learning rate" in err
    assert "skipped landscape-width6: figure 'landscape' needs variable landscape_loss" in err


def test_cli_plot_names_figures_per_trace(root, curvature_trace, grid_trace, capsys):
    traces = [root / "curvature" / "trace.nc", root / "grid" / "trace.nc"]
    assert plots.cli_plot(traces, None, root / "pair", "png") == 0
    written = {p.name for p in (root / "pair").iterdir()}
    assert written == {"dynamics-curvature.png", "landscape-curvature.png", "phase-grid.png"}
    assert "skipped width: figure 'width' needs at least two widths" in capsys.readouterr().err


def test_cli_plot_errors_are_one_line(root, grid_trace):
    trace = root / "grid" / "trace.nc"
    with pytest.raises(DlfError, match=r"^figure 'landscape' needs variable landscape_loss; run"):
        plots.cli_plot([trace], "landscape", root / "none", "png")
    with pytest.raises(ConfigError, match="--figure: unknown figure 'phases'; allowed: dynamics"):
        plots.cli_plot([trace], "phases", None, "png")
    with pytest.raises(ConfigError, match="--format: unknown format 'jpg'; allowed: png, svg"):
        plots.cli_plot([trace], "phase", None, "jpg")
    with pytest.raises(ConfigError, match="--zoom: expected START:STOP with START < STOP or auto"):
        plots.cli_plot([trace], "dynamics", None, "png", zoom="90:10")
    with pytest.raises(DlfError, match="no such file or directory"):
        plots.cli_plot([root / "missing.nc"], None, None, "png")
    assert plots.cli_plot([trace], "phase", None, "png") == 0
    png = root / "grid" / "figures" / "phase.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_says_how_many_diverged_members_its_means_leave_out(root, capsys):
    train = {"lr": [0.5, 1e6], "diverge_above": 100.0}
    run(root / "blow-up", name="blow-up", train=train, analyzers={"lanczos": {}})
    trace = root / "blow-up" / "blow-up" / "trace.nc"
    assert plots.cli_plot([trace], "dynamics", root / "blow-up-figures", "png") == 0
    err = capsys.readouterr().err.splitlines()
    assert "blow-up: 4 of 8 members diverged, left out of the figures' means" in err
