"""Lightning callbacks of licexp (one job each; configs in ``conf/callbacks/``)."""

from licexp.callbacks.gaps import GapMetrics

__all__ = ["GapMetrics"]
