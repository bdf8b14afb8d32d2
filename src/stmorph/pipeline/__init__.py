"""The one-command study: ``stmorph run CONFIG.toml`` and ``stmorph demo``.

Stages (sample -> feature spaces -> evaluation -> report) are cached by content under ``<out>/stages``: a re-run
skips finished stages, a killed run resumes, and a changed parameter re-runs only what depends on it.
"""

from ._cache import StageCache, file_fingerprint, stage_key
from ._config import StudyConfig, config_from_dict, load_config
from ._run import StudyResult, load_sample_from_config, run_study
from ._spaces import SPACE_KINDS, SpaceContext, build_space, space_kind
from .report import label_colors, write_report

__all__ = [
    "StageCache",
    "file_fingerprint",
    "stage_key",
    "StudyConfig",
    "config_from_dict",
    "load_config",
    "StudyResult",
    "load_sample_from_config",
    "run_study",
    "SPACE_KINDS",
    "SpaceContext",
    "build_space",
    "space_kind",
    "label_colors",
    "write_report",
]
