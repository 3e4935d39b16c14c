"""pixelreg_core: the compact regularized trainer. Torch only; one TrialConfig in, Parquet rows out."""

from pixelreg_core.config import ConfigError, TrialConfig

__all__ = ["ConfigError", "TrialConfig"]
