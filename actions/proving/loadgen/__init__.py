"""fleetdeck's load generator: shapes (how much), client (how), runner (where, how long, how many processes)."""

from actions.proving.loadgen.histogram import Histogram
from actions.proving.loadgen.runner import LoadResult, LoadSpec, Progress, TargetRefused, check_target, run_load
from actions.proving.loadgen.shapes import Constant, LoadShape, Ramp, Step, Steps, parse_shape

__all__ = [
    "Constant",
    "Histogram",
    "LoadResult",
    "LoadShape",
    "LoadSpec",
    "Progress",
    "Ramp",
    "Step",
    "Steps",
    "TargetRefused",
    "check_target",
    "parse_shape",
    "run_load",
]
