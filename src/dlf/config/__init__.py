"""Validated run configuration: the YAML file's sections (:mod:`~dlf.config.sections`), how a
config file is read and checked (:mod:`~dlf.config.loading`), and secrets in URLs hidden
(:mod:`~dlf.config.secrets`). The names below are the package's interface; import them from here.
"""

from dlf.config.loading import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    apply_overrides,
    load_config,
    load_raw,
    parse_yaml,
    validate,
)
from dlf.config.secrets import (
    SECRET_PARAMETER,
    redact_url,
    redacted,
    url_secrets,
    with_encoded_password,
)
from dlf.config.sections import (
    MAX_NAME,
    MAX_SEEDS,
    MLP_FIELDS,
    NAME_PATTERN,
    DataConfig,
    LossConfig,
    Member,
    ModelConfig,
    OutputConfig,
    RunConfig,
    ScheduleConfig,
    Section,
    Seed,
    TrainConfig,
    members_of,
    safe_component,
    seeds_in_range,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "MAX_NAME",
    "MAX_SEEDS",
    "MLP_FIELDS",
    "NAME_PATTERN",
    "SECRET_PARAMETER",
    "DataConfig",
    "LossConfig",
    "Member",
    "ModelConfig",
    "OutputConfig",
    "RunConfig",
    "ScheduleConfig",
    "Section",
    "Seed",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "load_raw",
    "members_of",
    "parse_yaml",
    "redact_url",
    "redacted",
    "safe_component",
    "seeds_in_range",
    "url_secrets",
    "validate",
    "with_encoded_password",
]
