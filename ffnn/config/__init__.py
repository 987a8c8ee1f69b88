"""Configuration: a TOML file, then the command-line flags, validated once, here, at the edge.

Every error names the field and the bad value, on one line. ``compare`` and ``tune`` each have their
dataclass and builder; ``checks`` has what they share.
"""

from .checks import ConfigError, dataset_name, read_toml, validate_train
from .compare import COMPARE_FLAGS, CompareConfig, build_compare_config, parse_divergence, parse_grid, parse_spec
from .tune import TUNE_FLAGS, Family, TuneConfig, build_tune_config, parse_family

__all__ = ["COMPARE_FLAGS", "TUNE_FLAGS", "CompareConfig", "ConfigError", "Family", "TuneConfig",
           "build_compare_config", "build_tune_config", "dataset_name", "parse_divergence", "parse_family",
           "parse_grid", "parse_spec", "read_toml", "validate_train"]
