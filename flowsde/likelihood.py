"""The likelihood's public names, including the data checks and quantization helpers the adapters
reuse (``docs/likelihood.md``): one definition each, in :mod:`flowsde._likelihood`."""

from ._likelihood import (  # noqa: F401
    LikelihoodResult,
    bin_width,
    bits_per_dim,
    check_data,
    check_data_range,
    check_in_range,
    dequantize,
    log_likelihood,
    quantization_levels,
)

__all__ = ["LikelihoodResult", "log_likelihood", "bits_per_dim", "dequantize", "bin_width", "quantization_levels",
           "check_data", "check_data_range", "check_in_range"]
