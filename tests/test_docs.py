"""The documentation stays true to the code: the configuration reference is regenerated from the
pydantic models and must equal the committed docs/configuration.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
