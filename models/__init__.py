"""flowsde.models: trained models shipped with flowsde (weights inside the package, nothing downloads).

* :func:`names` / :func:`info` / :func:`load`: the registry; ``load(name)`` returns a
  :class:`flowsde.adapters.Diffusion`.
* :func:`digits` (sklearn 8x8 digits, fixed train/test split) and :func:`toy_data` (2-D toys):
  the data the models were trained on; :func:`dequantize_digits` (``flowsde.dequantize`` with
  ``levels=17``) and :func:`digits_gaussian`, the full-covariance Gaussian baseline.
* :class:`GaussianResidualMLP`: the architecture; ``flowsde.models._train`` trains it
  (``scripts/train_models.py``). See ``docs/models.md``.
"""

from ._data import DIGITS_LEVELS, DIGITS_RANGE, dequantize_digits, digits, digits_gaussian, toy_data
from ._nets import GaussianResidualMLP
from ._registry import ModelInfo, info, load, names, weights_path

__all__ = ["names", "info", "load", "ModelInfo", "weights_path", "digits", "toy_data", "digits_gaussian",
           "dequantize_digits", "DIGITS_LEVELS",
           "DIGITS_RANGE", "GaussianResidualMLP"]
