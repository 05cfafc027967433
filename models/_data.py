"""The data of the shipped models: scikit-learn's 8x8 digits (fixed split) and 2-D toys.

Digits: ``sklearn.datasets.load_digits`` (1797 images, 64 pixels, integers 0..16, bundled
with scikit-learn: nothing downloads). Split: a permutation of the 1797 indices drawn from
``numpy.random.default_rng(0)``; the first 1500 are the training split, the last 297 the
test split. Pixels are mapped into the models' data range ``(-1, 1)`` on the grid
``lo + (hi - lo) k / 16`` (``k = 0..16``), the grid :func:`flowsde.dequantize` reads with
``levels=17``.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

from flowsde import InputError
from flowsde._internal import as_generator, as_seed

__all__ = ["digits", "toy_data", "digits_gaussian", "dequantize_digits", "DIGITS_LEVELS", "DIGITS_RANGE", "DIGITS_SPLIT_SEED", "DIGITS_N_TEST",
           "TOY_NAMES"]

DIGITS_LEVELS = 17
DIGITS_RANGE: Tuple[float, float] = (-1.0, 1.0)
DIGITS_SPLIT_SEED = 0
DIGITS_N_TEST = 297
SPLITS = ("train", "test")
TOY_NAMES = ("moons",)


def _load_digits_raw() -> np.ndarray:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError("flowsde.models.digits needs scikit-learn (pip install 'flowsde[data]').") from e
    return load_digits().data.astype(np.int64)  # (1797, 64), values 0..16


def digits(split: str = "test") -> torch.Tensor:
    """sklearn's 8x8 digits of one split, ``(N, 64)`` float64 in the models' data range.

    Arguments:
        split: ``"train"`` (1500 images) or ``"test"`` (297 images); see the module docstring
            for the fixed permutation.

    Returns:
        ``(N, 64)`` float64 tensor with values ``-1 + k/8``, ``k = 0..16`` (pixel intensity ``k``),
        on the grid that ``flowsde.dequantize(x, levels=17, data_range=(-1, 1))`` expects.
    """
    if split not in SPLITS:
        raise InputError(f"digits(split={split!r}): choose 'train' or 'test'.")
    k = _load_digits_raw()
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(k.shape[0])
    n_train = k.shape[0] - DIGITS_N_TEST
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    lo, hi = DIGITS_RANGE
    x = torch.from_numpy(k[idx]).to(torch.float64)
    return lo + (hi - lo) * x / (DIGITS_LEVELS - 1)


def dequantize_digits(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Uniform dequantization of digits on their 17-level grid: ``flowsde.dequantize(x, levels=17,
    data_range=(-1, 1))`` (``x + (U - 1/2)/8``, ``U ~ Uniform[0, 1)``; ``docs/likelihood.md``)."""
    import flowsde

    return flowsde.dequantize(x, levels=DIGITS_LEVELS, data_range=DIGITS_RANGE, generator=generator)


def digits_gaussian(copies: int = 10, *, generator=1) -> torch.distributions.MultivariateNormal:
    """The full-covariance Gaussian fitted (maximum likelihood, float64) to the dequantized training digits.

    The baseline the digits models are measured against (``docs/models.md``) and the Gaussian part
    of their network. Fitted to ``copies`` dequantizations of the 1500 training digits drawn from
    ``generator`` (an int seed, default 1, or a ``torch.Generator``) (dequantization adds ``Delta^2/12`` to each variance, so
    the constant-zero pixels get a non-singular covariance).
    """
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise InputError(f"digits_gaussian(copies={copies!r}): must be a positive int.")
    g = as_generator(generator)
    tr = digits("train")
    y = torch.cat([dequantize_digits(tr, generator=g) for _ in range(copies)])
    cov = torch.cov(y.T) * (y.shape[0] - 1) / y.shape[0]  # maximum likelihood
    return torch.distributions.MultivariateNormal(y.mean(0), covariance_matrix=cov)


def toy_data(name: str = "moons", samples: int = 1000, *, generator=0) -> torch.Tensor:
    """Samples of a 2-D toy distribution, ``(samples, 2)`` float64.

    ``"moons"``: ``sklearn.datasets.make_moons(samples, noise=0.05)`` (two interleaved half circles),
    centred and scaled to ``(x - (0.5, 0.25)) / 0.5`` (inside about ``[-3.2, 3.2] x [-1.8, 1.8]``),
    the distribution the ``moons`` model was trained on.

    Arguments:
        name: ``"moons"``.
        samples: number of samples (>= 1).
        generator: the ``random_state`` of the draw: an int seed >= 0 (default 0) or a
            ``torch.Generator`` (a seed is drawn from it).
    """
    if name not in TOY_NAMES:
        raise InputError(f"toy_data(name={name!r}): known toy distributions are {TOY_NAMES}.")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"toy_data(samples={samples!r}): samples must be a positive int.")
    if isinstance(generator, int) and not isinstance(generator, bool) and generator < 0:
        raise InputError(f"toy_data(generator={generator!r}): a seed must be an int >= 0.")
    seed = as_seed(generator, "toy_data") % 2**32
    try:
        from sklearn.datasets import make_moons
    except ImportError as e:  # pragma: no cover
        raise InputError("flowsde.models.toy_data needs scikit-learn (pip install 'flowsde[data]').") from e
    xy, _ = make_moons(n_samples=samples, noise=0.05, random_state=seed)
    x = torch.from_numpy(xy).to(torch.float64)
    return (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 0.5
