"""Test-only helpers: a tiny closed-form schedule (OU / VP with beta = 2)."""

import torch


class ExpSchedule:
    """alpha = exp(-t), sigma = sqrt(1 - exp(-2t)): the OU forward process dx = -x dt + sqrt(2) dW."""

    t_min, t_max = 1e-4, 3.0

    def alpha(self, t):
        return torch.exp(-t)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-2 * t))

    def d_alpha(self, t):
        return -torch.exp(-t)

    def d_sigma(self, t):
        return torch.exp(-2 * t) / self.sigma(t)

    def f(self, t):
        return -torch.ones_like(t)

    def g2(self, t):
        return 2 * torch.ones_like(t)


def mixture_2d():
    from flowsde.validation import GaussianMixture

    return GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5]]),
        torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]]]),
    )
