"""Information-theoretic building blocks: a variational (information-bottleneck) encoder with its
KL term to a standard normal prior, and the CLUB upper bound on mutual information."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call


def kl_to_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    r"""KL divergence of diagonal Gaussians to the standard normal prior, mean over rows.

    .. math::
        KL\big(\mathcal{N}(\mu, \mathrm{diag}\,\sigma^2) \,\|\, \mathcal{N}(0, I)\big)
        = \frac{1}{2} \sum_k \big(\mu_k^2 + \sigma_k^2 - \log \sigma_k^2 - 1\big)

    Summed over the ``d`` dimensions (nats per row), averaged over the ``N`` rows.
    """
    if mean.shape != log_var.shape:
        raise ValueError(
            f"mean and log_var must have one shape, got {list(mean.shape)} and "
            f"{list(log_var.shape)}"
        )
    return 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1.0).sum(-1).mean()


class VariationalEncoder(torch.nn.Module):
    r"""Gaussian posterior :math:`q(z \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}\,\sigma^2(x))`
    with the reparameterisation trick (a variational information bottleneck).

    .. math::
        \mu = W_\mu x + b_\mu, \qquad \log \sigma^2 = W_\sigma x + b_\sigma, \qquad
        z = \mu + \sigma \odot \epsilon, \; \epsilon \sim \mathcal{N}(0, I)

    In training mode :meth:`forward` draws ``z``; in eval mode it returns the mean
    (``z = mu``), so evaluation is deterministic. Weights are Xavier-initialised, biases zero
    (so :math:`\sigma \approx 1` at the start, the prior's scale).

    Args:
        in_channels: size of ``x``.
        out_channels: size of ``z``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.mean = torch.nn.Linear(in_channels, out_channels)
        self.log_var = torch.nn.Linear(in_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.mean, self.log_var):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(z, mean, log_var)``, each ``[N, out_channels]``."""
        mean, log_var = self.mean(x), self.log_var(x)
        if not self.training:
            return mean, mean, log_var
        return mean + torch.randn_like(mean) * (0.5 * log_var).exp(), mean, log_var


class CLUB(torch.nn.Module):
    r"""Contrastive log-ratio upper bound on :math:`I(x; y)` (Cheng et al., ICML 2020).

    A variational network :math:`q_\theta(y \mid x) = \mathcal{N}(\mu_\theta(x),
    \mathrm{diag}\,\sigma^2_\theta(x))` (two-layer MLPs; the log-variance ends in ``tanh``, so
    :math:`\sigma^2 \in [e^{-1}, e]` and the likelihood cannot diverge) gives, over ``N``
    paired rows,

    .. math::
        \hat{I}_{CLUB} = \frac{1}{N} \sum_i \Big[ \log q(y_i \mid x_i)
            - \frac{1}{N} \sum_j \log q(y_j \mid x_i) \Big]
        = \frac{1}{N} \sum_i \sum_k \frac{(\mu_{ik} - \bar{y}_k)^2 + s_k
            - (\mu_{ik} - y_{ik})^2}{2 \sigma^2_{ik}}

    with :math:`\bar{y}, s` the column mean and (population) variance of ``y``: the average
    over all :math:`N^2` pairs is exact in :math:`O(N d)`. It is an upper bound when
    :math:`q` fits :math:`p(y \mid x)` well, so the two are trained on different losses:

    * :meth:`upper_bound` sees :math:`q`'s parameters *detached*: its gradient reaches only
      ``x`` and ``y`` (the encoders minimise the bound);
    * :meth:`fit_loss` sees ``x`` and ``y`` *detached*: the negative log-likelihood
      :math:`\frac{1}{2}[(y - \mu)^2 / \sigma^2 + \log \sigma^2]` (mean over rows and
      dimensions) trains only :math:`q`.

    Their sum can therefore be minimised by one optimiser in one step: each parameter gets
    exactly the gradient of its own objective.

    Args:
        x_channels: size of ``x``.
        y_channels: size of ``y``.
        hidden_channels: width of the hidden layers of :math:`\mu_\theta, \log\sigma^2_\theta`.
    """

    def __init__(self, x_channels: int, y_channels: int, hidden_channels: int) -> None:
        super().__init__()
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        self.mean = torch.nn.Sequential(
            torch.nn.Linear(x_channels, hidden_channels),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden_channels, y_channels),
        )
        self.log_var = torch.nn.Sequential(
            torch.nn.Linear(x_channels, hidden_channels),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden_channels, y_channels),
            torch.nn.Tanh(),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for net in (self.mean, self.log_var):
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()  # PyTorch's default Linear initialisation

    def conditional(self, x: Tensor, detach_parameters: bool = False) -> tuple[Tensor, Tensor]:
        """``(mean, log_var)`` of :math:`q(y \\mid x)`; optionally with frozen parameters."""
        if not detach_parameters:
            return self.mean(x), self.log_var(x)
        return tuple(
            functional_call(net, {k: p.detach() for k, p in net.named_parameters()}, (x,))
            for net in (self.mean, self.log_var)
        )

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(upper_bound(x, y), fit_loss(x, y))``."""
        return self.upper_bound(x, y), self.fit_loss(x, y)

    def _check(self, x: Tensor, y: Tensor) -> None:
        if x.dim() != 2 or y.dim() != 2 or x.size(0) != y.size(0):
            raise ValueError(
                f"CLUB needs paired [N, dx] and [N, dy] rows, got {list(x.shape)} and "
                f"{list(y.shape)}"
            )

    def upper_bound(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`\\hat{I}_{CLUB}(x; y)`; gradients reach ``x`` and ``y`` only."""
        self._check(x, y)
        mean, log_var = self.conditional(x, detach_parameters=True)
        inv_var = (-log_var).exp()
        y_mean = y.mean(0, keepdim=True)
        y_var = (y - y_mean).pow(2).mean(0, keepdim=True)
        positive = (mean - y).pow(2)
        negative = (mean - y_mean).pow(2) + y_var  # mean over j of (mean_i - y_j)^2
        return (0.5 * (negative - positive) * inv_var).sum(-1).mean()

    def fit_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Negative log-likelihood of ``y`` under :math:`q(\\cdot \\mid x)`; trains ``q`` only."""
        self._check(x, y)
        x, y = x.detach(), y.detach()
        mean, log_var = self.conditional(x)
        return 0.5 * ((y - mean).pow(2) * (-log_var).exp() + log_var).mean()
