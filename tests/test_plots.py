"""Every figure drawn from small real runs and checked for what it shows: panels, lines, cells,
points and labels, with the plotted numbers recomputed from the traces; plus the one-line errors
for missing data and ``cli_plot`` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import animation
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import QuadMesh
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

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
    for ax in axes[1:, 0]:  # onsets (dash-dotted) and ends (dotted) on every panel below Γ
        vertical = [line.get_xdata()[0] for line in ax.get_lines() if line.get_ls() in "-.:"]
        assert start in vertical and end in vertical
    threshold = lines_of(axes[4, 0])["mean λ$_1$ at onset"]
    assert threshold.get_ydata()[0] == float(ds["bifurcation_mean_lambda_onset"][member])
    lo, hi = (float(v) for v in axes[3, 1].get_lines()[0].get_xdata()[[0, -1]])
    assert lo <= start < end <= hi  # the zoom column spans the first instability
    assert axes[0, 1].get_title().startswith("zoom: steps ")
    shown = axes[0, 1].get_title().removeprefix("zoom: steps ").split("–")
    assert ds["step"].min() <= int(shown[0]) and int(shown[1]) <= ds["step"].max()  # not past


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
    heat = [ax for ax in fig.axes if ax.get_xlabel() == "period T (steps)"]
    assert [ax.get_title() for ax in heat] == ["training accuracy", "validation accuracy"]
    assert len(fig.axes) == 3  # two maps, one colour bar for both
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
    assert ax.get_xlabel() == "hidden width (units per layer)"
    assert ax.get_ylabel() == "final validation accuracy"
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
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["t = 60", "t = 150"]
    for ax, step in zip(panels, (60, 150), strict=True):  # λ1·η/2 at the slice, η = 1 here
        ratio = float(ds["landscape_eigenvalues"].where(ds["landscape_step"] == step).max()) / 2
        assert ax.get_title().endswith(f"η/2 = {ratio:.2f}")
    for ax, i in zip(panels, range(2), strict=True):
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        assert mesh.get_array().size == 9 * 9
        np.testing.assert_allclose(
            np.sort(mesh.get_array().ravel()), np.sort(ds["landscape_loss"][i].values.ravel())
        )
        dots = ax.get_lines()[0]
        assert len(dots.get_xdata()) == 1 + 6  # θ_t and the `future` steps after the slice
        np.testing.assert_allclose(dots.get_xdata()[1:], ds["landscape_trajectory"][i, :, 0])
    assert panels[0].get_xlabel() == "a (along v$_1$, parameter units)"


def test_sharpness_means_over_seeds(width_traces):
    fig = plots.sharpness(width_traces)
    loss_ax, lam_ax = fig.axes
    assert loss_ax.get_ylabel() == "mean loss F (log scale)"
    assert lam_ax.get_ylabel() == "mean Hessian λ$_{max}$"
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


# --- what a reader checks by eye, checked without eyes ---------------------------------------


@pytest.fixture(scope="session")
def movie_trace(root):
    """Slices every 2 steps over one period (steps 20–38 of T = 20), and one listed slice."""
    return run(
        root,
        name="movie",
        schedule={"amplitude": [20], "period": 20, "static_last_period": False},
        train={"steps": 60, "seeds": 1},
        analyzers={
            "landscape": {
                "steps": [10],
                "every": 2,
                "every_start": 20,
                "every_stop": 50,
                "grid": 5,
                "future": 3,
            }
        },
    )


def data_boxes(fig):
    """Display boxes of every data artist (lines, markers, meshes, bands, bars), clipped to
    their axes."""
    boxes = []
    for ax in fig.axes:
        artists = [*ax.get_lines(), *ax.collections, *ax.images, *ax.patches]
        for artist in artists:
            if not artist.get_visible():
                continue
            if isinstance(artist, Line2D) and len(artist.get_xdata()) == 0:
                continue
            box = Bbox.intersection(artist.get_window_extent(), ax.bbox)
            if box is not None and box.width > 0 and box.height > 0:
                boxes.append((artist, box))
    return boxes


def check_figure(fig):
    """Titled, and no legend covers any data artist."""
    FigureCanvasAgg(fig).draw()
    titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
    assert fig.get_suptitle(), "the figure has no title"
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends or titles
    for legend in legends:
        box = legend.get_window_extent()
        for artist, data in data_boxes(fig):
            assert not box.overlaps(data), f"legend {legend.texts[0].get_text()!r} on {artist}"


@pytest.fixture(scope="session")
def every_figure(curvature_trace, grid_trace, width_traces, edge_trace, movie_trace):
    return {
        "dynamics": plots.dynamics(curvature_trace, zoom=(100, 160)),
        "dynamics-events": plots.dynamics(edge_trace, zoom="auto"),
        "phase": plots.phase(grid_trace),
        "threshold": plots.threshold([edge_trace]),
        "width": plots.width(width_traces),
        "landscape": plots.landscape(curvature_trace),
        "landscape-cadence": plots.landscape(movie_trace),
        "sharpness": plots.sharpness(width_traces),
    }


@pytest.mark.parametrize(
    "name",
    [
        "dynamics",
        "dynamics-events",
        "phase",
        "threshold",
        "width",
        "landscape",
        "landscape-cadence",
        "sharpness",
    ],
)
def test_every_figure_is_titled_and_keeps_its_legends_off_the_data(every_figure, name):
    check_figure(every_figure[name])


def test_the_overlap_check_sees_a_legend_on_the_data():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="diagonal")
    ax.legend(loc="center")
    fig.suptitle("titled")
    with pytest.raises(AssertionError, match="legend 'diagonal'"):
        check_figure(fig)


def test_landscape_panels_share_one_colour_scale(curvature_trace, movie_trace):
    fig = plots.landscape(curvature_trace)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("t = ")]
    meshes = [next(c for c in ax.collections if isinstance(c, QuadMesh)) for ax in panels]
    losses = curvature_trace["landscape_loss"].values
    for mesh in meshes:
        assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((losses.min(), losses.max()))
    assert len(fig.axes) == len(panels) + 1  # one colour bar for all panels
    # the listed slice only: the cadence slices are the movie's
    cadence = plots.landscape(movie_trace)
    assert [ax.get_title().split("\n")[0] for ax in cadence.axes[:-1]] == ["t = 10"]


def test_error_bars_where_the_data_have_them(every_figure, width_traces):
    ax = next(ax for ax in every_figure["width"].axes if ax.get_title() == "CE family, η = 1")
    dce = next(c for c in ax.containers if c.get_label() == "DCE")
    assert dce.has_yerr
    lengths = [abs(s[1, 1] - s[0, 1]) for s in dce.lines[2][0].get_segments()]
    for length, ds in zip(lengths, width_traces, strict=True):  # ± sem of the 2 seeds
        chosen = ((ds["amplitude"] == 10) & (ds["eta"] == 1.0)).values
        final = ds["val_accuracy"].isel(eval_step=-1).values[chosen]
        assert length == pytest.approx(2 * final.std(ddof=1) / np.sqrt(2))
    (points,) = every_figure["threshold"].axes[0].containers
    assert points.has_yerr
    _, lam_ax = every_figure["sharpness"].axes
    assert len(lam_ax.collections) == len(lam_ax.get_lines()) - 2  # a band per line (not 2/η)
    band = lam_ax.collections[0].get_paths()[0].vertices[:, 1]
    assert np.ptp(band) > 0
    cells = [t.get_text() for t in every_figure["phase"].axes[0].texts]
    assert len(cells) == 6 and all("±" in c for c in cells)  # 2 seeds per cell


def test_one_colour_per_loss_in_every_figure(every_figure):
    from dlf.plots.style import loss_color

    ax = every_figure["width"].axes[0]
    for container in ax.containers:
        colour = container.lines[0].get_color()
        assert to_rgb(colour) == pytest.approx(loss_color(container.get_label()))
    assert loss_color("DCE A=5 T=10") == loss_color("dce") != loss_color("ce")
    assert loss_color("my-loss") == loss_color("MY-LOSS")  # unknown: stable


def test_landscape_movie_over_one_period(root, movie_trace):
    from PIL import Image

    movie = plots.landscape_movie(movie_trace)
    steps = list(range(20, 40, 2))  # one period T = 20 from the first cadence slice
    assert movie.frames == len(steps)
    path = root / f"movie.{movie.suffix}"
    movie.save(path)
    assert Image.open(path).n_frames == len(steps)
    assert not list(root.glob(".movie.part*"))
    (mesh,) = [c for c in movie.figure.subfigs[0].axes[0].collections if isinstance(c, QuadMesh)]
    chosen = movie_trace["landscape_cadence"] & (movie_trace["landscape_step"] < 40)
    frames = movie_trace["landscape_loss"].values[chosen.values]
    assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((frames.min(), frames.max()))
    caption = movie.figure.subfigs[0].get_suptitle()  # of the last frame drawn
    last = movie_trace.isel(
        landscape_slice=int(np.flatnonzero(movie_trace["landscape_step"] == 38)[0])
    )
    ratio = float(last["landscape_eigenvalues"][0]) / 2
    assert caption.startswith("t = 38   Γ = (") and caption.endswith(f"η/2 = {ratio:.2f}")


def test_landscape_movie_errors_are_one_line(root, curvature_trace, movie_trace, monkeypatch):
    with pytest.raises(DlfError, match=r"needs two or more slices of member 0 on a cadence; run"):
        plots.landscape_movie(curvature_trace)
    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(DlfError, match=r"needs ffmpeg \(MP4\) or Pillow \(GIF\)"):
        plots.cli_plot([root / "movie" / "trace.nc"], "landscape-movie", root / "none", "png")
    assert not (root / "none").exists()


def test_cli_plot_writes_the_movie_only_when_named(root, movie_trace, capsys):
    trace = root / "movie" / "trace.nc"
    assert plots.cli_plot([trace], None, root / "movie-all", "png") == 0
    assert "landscape-movie" not in {p.stem for p in (root / "movie-all").iterdir()}
    assert plots.cli_plot([trace], "landscape-movie", root / "movie-out", "png") == 0
    (written,) = (root / "movie-out").iterdir()
    assert written.name in {"landscape-movie.gif", "landscape-movie.mp4"}
    assert f"wrote {written}" in capsys.readouterr().out


@pytest.fixture(scope="session")
def tiny_study(root):
    """A seconds-long min-width study whose target both losses reach (w* found for both)."""
    from dlf.studies.search import run_study
    from dlf.studies.search.config import study_config_from_raw
    from tests.conftest import study_raw

    return run_study(study_config_from_raw(study_raw(root / "study", target=0.35)))


def test_width_from_a_study_marks_w_star_and_names_target_and_steps(tiny_study):
    from dlf.studies.search.results import open_study

    study = open_study(tiny_study.directory)
    fig = plots.width([study])
    check_figure(fig)
    labels = {line.get_label() for line in fig.axes[0].get_lines()}
    for kind, finding in tiny_study.findings.items():
        loss = str(study.attrs[f"{kind}_loss"]).upper()
        assert f"w* {loss} = {finding.w_star}" in labels
    assert "target 0.35" in labels
    assert "80 steps" in fig.get_suptitle() and "target 0.35" in fig.get_suptitle()
    assert fig.axes[0].get_xlabel() == "hidden width (units per layer)"


def test_width_from_a_study_draws_confirmed_rungs_from_their_fresh_seeds(tiny_study):
    """A rung's search pick is the best of several trials (biased upwards): where the rung was
    confirmed, the figure draws the fresh seeds' values; elsewhere it labels the pick selected."""
    from dlf.plots.width import SELECTED, study_table
    from dlf.studies.search.results import open_study

    study = open_study(tiny_study.directory)
    table = study_table(study)
    confirmed = study.isel(rung=np.flatnonzero(study["confirm_n"].values > 0))
    assert confirmed.sizes["rung"] > 0
    for i in range(confirmed.sizes["rung"]):
        rung = confirmed.isel(rung=i)
        kind, width = str(rung["rung_kind"].values), int(rung["rung_width"])
        loss = str(study.attrs[f"{kind}_loss"]).upper()
        first_word = table["series"].str.split(r"[ ,]", regex=True).str[0]
        rows = table[(table["width"] == width) & (first_word == loss)]
        assert set(rows["series"]) == {rows["series"].iloc[0]}
        assert rows["series"].iloc[0].endswith("fresh seeds")
        assert len(rows) == int(rung["confirm_n"])
        assert rows["val_accuracy"].mean() == pytest.approx(float(rung["confirm_mean"]))
    tried = {
        (str(k), int(w)) for k, w in zip(study["kind"].values, study["width"].values, strict=True)
    }
    unconfirmed = tried - {
        (str(k), int(w))
        for k, w in zip(confirmed["rung_kind"].values, confirmed["rung_width"].values, strict=True)
    }
    selected = table[table["series"].str.endswith(SELECTED)]
    assert len(selected.groupby(["series", "width"])) == len(unconfirmed)


def test_report_draws_the_best_trial_at_w_star_against_the_static_loss(tiny_study):
    from dlf.engine.trace import open_trace
    from dlf.studies.search.results import open_study

    report = tiny_study.report.read_text()
    assert "![training curves at w*](curves_at_w_star.png)" in report
    png = tiny_study.directory / "curves_at_w_star.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure's DCE curve is the seed mean of the best dynamical trial at w*
    study = open_study(tiny_study.directory)
    w_star = tiny_study.findings["dynamical"].w_star
    done = (study["kind"] == "dynamical") & (study["width"] == w_star)
    done &= study["state"] == "COMPLETE"
    best = study.isel(trial=int(np.nanargmax(study["value"].where(done).values)))
    trace = open_trace(tiny_study.directory / str(best["trace"].values))
    same = (trace["amplitude"] == best["amplitude"]) & (trace["period"] == best["period"])
    members = trace.isel(member=np.flatnonzero(same.values))
    fig = plots.trial_curves([plots.Trial("DCE", "dce", members)], "at w*", 0.35)
    check_figure(fig)
    (line,) = [ln for ln in fig.axes[1].get_lines() if ln.get_label().startswith("DCE")]
    np.testing.assert_allclose(line.get_ydata(), members["val_accuracy"].mean("member"))
    assert float(members["val_accuracy"].isel(eval_step=-1).mean()) == pytest.approx(
        float(best["value"])
    )


def test_landscape_movie_needs_hessian_directions(movie_trace):
    random = movie_trace.copy()
    random["landscape_loss"] = random["landscape_loss"].assign_attrs(directions="random")
    with pytest.raises(DlfError, match="needs slices along Hessian eigenvectors; set analyzers"):
        plots.landscape_movie(random)
    titles = [ax.get_title() for ax in plots.landscape(random).axes[:-1]]
    assert titles == ["t = 10"]  # no λ₁·η/2: the curvatures are not the Hessian's eigenvalues


def test_a_run_figure_asked_of_a_study_folder_points_to_its_runs(tiny_study, capsys):
    """Issue 22: plotting a study folder said sharpness 'needs variable loss; it is written by
    every dlf-study run', which a study's own result file is not."""
    from dlf.plots import cli_plot

    with pytest.raises(DlfError) as error:
        cli_plot([tiny_study.directory], "sharpness", tiny_study.directory / "fig")
    assert str(error.value) == (
        "figure 'sharpness' is drawn from run traces, and a study's result file holds none; "
        "plot the traces in the study's runs/ folder"
    )
