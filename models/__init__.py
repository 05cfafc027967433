"""flowsde.models: trained models shipped with flowsde (weights inside the package, nothing downloads).

* :func:`names` / :func:`info` / :func:`load`: the registry; ``load(name)`` returns a
  :class:`flowsde.adapters.Diffusion` (``digits-unet``, a diffusers pipeline folder, through
  :func:`flowsde.adapters.from_diffusers`; it needs diffusers).
* :func:`digits` (sklearn 8x8 digits, fixed train/test split) and :func:`toy_data` (2-D toys):
  the data the models were trained on; :func:`dequantize_digits` (``flowsde.dequantize`` with
  ``levels=17``) and :func:`digits_gaussian`, the full-covariance Gaussian baseline.
* :class:`GaussianResidualMLP`: the architecture; :func:`train` trains a shipped model from scratch
  (:class:`TrainConfig` overrides its defaults; ``scripts/train_models.py`` is the command line),
  :func:`elbo_nats` / :func:`nats_to_bpd` evaluate the bound, :func:`denoising_loss` is the training loss. See ``docs/models.md``.
"""

from ._data import DIGITS_LEVELS, DIGITS_RANGE, dequantize_digits, digits, digits_gaussian, toy_data
from ._nets import GaussianResidualMLP
from ._registry import ModelInfo, info, load, names, weights_path
from ._train import TrainConfig, denoising_loss, elbo_nats, nats_to_bpd, train

__all__ = ["names", "info", "load", "ModelInfo", "weights_path", "digits", "toy_data", "digits_gaussian",
           "dequantize_digits", "DIGITS_LEVELS",
           "DIGITS_RANGE", "GaussianResidualMLP", "train", "TrainConfig", "elbo_nats", "denoising_loss", "nats_to_bpd"]
