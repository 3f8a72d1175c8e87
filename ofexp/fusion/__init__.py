"""Model fusion: naive averaging and geometric (optimal-transport) alignment, docs/design.md §4."""

from ofexp.fusion.batchnorm import recompute_batchnorm_stats
from ofexp.fusion.diagnostics import alignment_diagnostics
from ofexp.fusion.geometric import ALIGNMENTS, GeometricFusion, geometric_fuse
from ofexp.fusion.groups import AlignmentSpec, check_covers, permute_model
from ofexp.fusion.invariance import check_alignment_spec
from ofexp.fusion.naive import naive_fuse
from ofexp.fusion.repair import repair_geometric, repair_statistics
from ofexp.fusion.trace import UntraceableModelError, alignment_spec, trace_alignment
from ofexp.fusion.transport import SOLVERS, solve_transport

__all__ = [
    "ALIGNMENTS",
    "SOLVERS",
    "AlignmentSpec",
    "UntraceableModelError",
    "GeometricFusion",
    "alignment_diagnostics",
    "alignment_spec",
    "check_alignment_spec",
    "check_covers",
    "geometric_fuse",
    "naive_fuse",
    "permute_model",
    "recompute_batchnorm_stats",
    "repair_geometric",
    "repair_statistics",
    "solve_transport",
    "trace_alignment",
]
