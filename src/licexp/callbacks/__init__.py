"""Lightning callbacks of licexp (one job each; configs in ``conf/callbacks/``)."""

from licexp.callbacks.gaps import GapMetrics
from licexp.callbacks.last_checkpoint import LastCheckpoint
from licexp.callbacks.progress import ParameterSummary, StepProgressBar

__all__ = ["GapMetrics", "LastCheckpoint", "ParameterSummary", "StepProgressBar"]
