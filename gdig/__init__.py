"""G-DIG Studio: choose instruction-tuning data by its measured influence on a model (Pan et al., ACL 2024)."""

from gdig.config import DataConfig, ScoreConfig

__version__ = "0.1.0"

__all__ = ["DataConfig", "ScoreConfig", "score", "__version__"]


def score(cfg: ScoreConfig, **kwargs):
    """Run `gdig score` as a function; see gdig.run.score."""
    from gdig.run import score as _score

    return _score(cfg, **kwargs)
