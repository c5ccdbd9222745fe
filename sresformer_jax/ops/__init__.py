"""How the model is computed on each backend, apart from what it computes (the modules of the package):
convolution lowerings (``conv``), the compiled CPU kernels (``kernels``), BatchNorm statistics
(``batch_norm``), the mixed-precision matmul (``dot``), bit-pattern scans (``scan``), and the lowering choice
(``lowering``)."""
from .batch_norm import batch_norm_train, normalize
from .conv import LOWERINGS, conv2d
from .dot import dot
from .lowering import CONV_IMPLS, conv_lowering, describe, lean_backward, resolve_conv_impl, uses_stats_kernels

__all__ = ["CONV_IMPLS", "LOWERINGS", "batch_norm_train", "conv2d", "conv_lowering", "describe", "dot", "lean_backward",
           "normalize", "resolve_conv_impl", "uses_stats_kernels"]
