"""The documentation stays true to the code: the configuration reference is regenerated from the
pydantic models and must equal the committed docs/configuration.md, and the plain-PyTorch example
of dlf.DynamicalLoss runs as written."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", DOCS / "gen_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_up_to_date():
    generated = load_generator().render()
    committed = (DOCS / "configuration.md").read_text()
    assert committed == generated, (
        "docs/configuration.md is stale: run python docs/gen_config_reference.py"
    )


def test_reference_lists_every_key_of_every_section():
    from dlf.config import RunConfig

    text = (DOCS / "configuration.md").read_text()
    for name, field in RunConfig.model_fields.items():
        section = getattr(field.annotation, "model_fields", {})
        keys = [f"{name}.{key}" for key in section] or [name]
        for key in keys:
            assert f"| `{key}` |" in text, key
    for key in ("analyzers.lanczos.k", "analyzers.bifurcation.lambda_jump", "search.target"):
        assert f"| `{key}` |" in text, key


def python_block(page: str, heading: str) -> str:
    """The first ```python block after ``heading`` in ``docs/page``."""
    text = (DOCS / page).read_text().split(f"\n{heading}\n", 1)[1]
    return text.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_own_training_loop_example_runs(monkeypatch, capsys):
    """The plain-PyTorch loop of concepts.md, as written, with a stand-in for torchvision (not
    installable beside this torch) and a three-batch loader: it trains, and Γ is as printed."""
    import types

    import torch

    def resnet18(num_classes: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes))

    monkeypatch.setitem(
        sys.modules,
        "torchvision",
        types.SimpleNamespace(models=types.SimpleNamespace(resnet18=resnet18)),
    )
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.rand(4, 3, 8, 8, generator=generator), torch.arange(4)) for _ in range(3)]
    namespace: dict = {"loader": loader}
    exec(python_block("concepts.md", "### In your own training loop"), namespace)
    model, loss_fn = namespace["model"], namespace["loss_fn"]
    assert namespace["step"] == len(loader) - 1  # one optimiser step per batch
    assert model[1].weight.grad is not None and torch.isfinite(namespace["loss"])
    gamma = loss_fn.gamma(150)
    assert gamma.shape == (10,) and float(gamma.sum()) == pytest.approx(10)
    assert capsys.readouterr().out.startswith("tensor([")


def test_the_shortest_analyzer_and_its_test_run_as_written(dlf_tester):
    """plugins.md opens with an analyzer and its test through dlf.testing: both, as written."""
    heading = "## The shortest analyzer, and its test"
    text = (DOCS / "plugins.md").read_text().split(f"\n{heading}\n", 1)[1]
    analyzer, test = (block.split("\n```", 1)[0] for block in text.split("```python\n")[1:3])
    namespace: dict = {}
    exec(compile(analyzer + "\n" + test, "plugins.md", "exec"), namespace)
    namespace["test_spread_is_the_loss_range_over_members"](dlf_tester)
