"""Information-theoretic building blocks: a variational (information-bottleneck) encoder with its
KL term to a standard normal prior, the CLUB upper bound on mutual information, and a pair critic
with its contrastive bounds (InfoNCE below, NCE-CLUB above) evaluated over all pairs in chunks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from pyg_dhmrec.nn._checks import check_dense, check_rows, shape

#: Pair activations ``[rows, N, hidden]`` a critic materialises at most per chunk (64 MB in fp32).
PAIR_CHUNK_ELEMENTS = 1 << 24


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
    check_dense("mean", mean)
    check_dense("log_var", log_var)
    if mean.dim() == 0 or mean.numel() == 0:
        raise ValueError(f"kl_to_standard_normal needs at least one row, got shape {shape(mean)}")
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
        check_rows("x", x, self.mean.in_features, dtype=self.mean.weight.dtype)
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
        first, last = self.mean[0], self.mean[-1]
        check_rows("x", x, first.in_features, dtype=first.weight.dtype)
        check_rows("y", y, last.out_features, x.size(0), dtype=first.weight.dtype)

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


def _pair_block(
    first_x: Tensor, first_y: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], op: str
) -> Tensor:
    """Rows ``[c]`` of a reduction over ``j`` of the scores ``f(x_j, y_i)`` of one chunk of
    ``y`` rows: the ``[c, N, h]`` pair activations live only inside this call."""
    hidden = torch.relu(first_y.unsqueeze(1) + first_x.unsqueeze(0))  # [c, N, h]
    for weight, bias in zip(weights[:-1], biases):
        hidden = torch.relu(F.linear(hidden, weight, bias))
    scores = _output(hidden, weights[-1])  # [c, N]
    return torch.logsumexp(scores, dim=1) if op == "logsumexp" else scores.mean(dim=1)


def _output(hidden: Tensor, weight: Tensor) -> Tensor:
    """The critic's output layer ``[..., h] -> [...]`` (``weight``: ``[1, h]``, no bias)."""
    if hidden.size(-1) == 1:  # a width-1 critic: a product, twice as fast as a 1x1 matmul
        return hidden.squeeze(-1) * weight[0, 0]
    return F.linear(hidden, weight).squeeze(-1)


def _sorted_unit_sums(a: Tensor, b: Tensor, w: Tensor, op: str) -> Tensor:
    r"""Row reductions over ``j`` of ``s_ij = w relu(a_j + b_i)`` (a critic with one hidden
    unit; ``a``, ``b``: ``[N]``, ``w``: a scalar) in :math:`O(N \log N)`: with ``a`` sorted, row
    ``i``'s active pairs (:math:`a_j > -b_i`) are a suffix found by binary search, so its sum is
    a suffix sum plus a count times :math:`b_i`, and its log-sum-exp adds the suffix's
    log-sum-exp of :math:`w a_j` (shifted by :math:`w b_i`) to the inactive pairs' count (each
    scores 0). Exactly the dense sums; gradients flow through the sort and the cumulative sums."""
    num = a.size(0)
    a_sorted = torch.sort(a).values
    # inactive pairs of row i: a_j + b_i <= 0 (relu and its gradient are 0 there)
    inactive = torch.searchsorted(a_sorted.detach(), (-b).detach(), right=True)
    if op == "mean":
        suffix = torch.cat([a_sorted.flip(0).cumsum(0).flip(0), a.new_zeros(1)])
        return w * (suffix[inactive] + (num - inactive).to(a.dtype) * b) / num
    scaled = (w * a_sorted).flip(0)
    tail = torch.cat([torch.logcumsumexp(scaled, 0).flip(0), a.new_full((1,), float("-inf"))])
    return torch.logaddexp(inactive.to(a.dtype).log(), w * b + tail[inactive])


class ConcatCritic(torch.nn.Module):
    r"""A pair critic :math:`f(x, y) = \mathrm{MLP}([x \,;\, y])`, one score per pair (the concat
    critic of FactorCL, Liang et al., NeurIPS 2023), with its two contrastive estimates of
    :math:`I(x; y)` over ``N`` paired rows :math:`(x_i, y_i)`:

    .. math::
        \hat{I}_{NCE} = \frac{1}{N}\sum_i \Big[f(x_i, y_i)
            - \log \sum_j e^{f(x_j, y_i)}\Big] + \log N, \qquad
        \hat{I}_{NCE\text{-}CLUB} = \frac{1}{N}\sum_i f(x_i, y_i)
            - \frac{1}{N^2}\sum_{i, j} f(x_j, y_i)

    :math:`\hat{I}_{NCE} \le \log N` is the InfoNCE lower bound (van den Oord et al., 2018);
    with the critic that maximises it, :math:`\hat{I}_{NCE\text{-}CLUB}` is FactorCL's NCE-CLUB
    upper-bound estimate (CLUB of Cheng et al., ICML 2020, with :math:`f` in place of the
    log-likelihood). :meth:`info_nce_loss` is :math:`\log N - \hat{I}_{NCE} \ge 0`.

    The MLP is ``Linear(dx + dy, h) -> ReLU -> [Linear(h, h) -> ReLU] x (num_layers - 1) ->
    Linear(h, 1, bias=False)``. The output has no bias because both estimates are invariant
    to adding a constant to :math:`f` (such a bias would never receive a gradient). Weights
    start with PyTorch's default initialisation, hidden biases at zero: a ReLU unit whose
    kink no pair crosses is zero or linear on every pair, and a critic made of such units is
    constant or affine in :math:`[x; y]`, for which :math:`\hat{I}_{NCE}` ignores :math:`y`
    and :math:`\hat{I}_{NCE\text{-}CLUB} = 0` (nothing is measured, no gradient reaches the
    biases). PyTorch's default bias, :math:`U(\pm 1/\sqrt{d_x + d_y})`, is large against
    small inputs (e.g. freshly initialised embeddings) and starts critics in that state; a zero
    bias puts every kink through the data's centre.

    The sums over all :math:`N^2` pairs never build the tiled ``[N, N, dx + dy]`` input: the
    first layer is split,
    :math:`W [x_j; y_i] + b = W_x x_j + (W_y y_i + b)`, so a pair costs :math:`O(h)` after an
    :math:`O(N (dx + dy) h)` projection, and rows :math:`i` are processed ``chunk_size`` at a
    time under activation checkpointing: forward and backward hold one ``[chunk, N, h]`` block
    (by default at most :data:`PAIR_CHUNK_ELEMENTS` values; when all pairs fit in one block,
    plain autograd keeps it instead of recomputing it), with the value and gradient of the
    dense formula (sums reassociated only). A critic with one hidden unit (:math:`h = 1`, one
    layer) needs no pair at all: its row sums and log-sum-exps follow from the sorted
    :math:`W_x x_j` in :math:`O(N \log N)` (see ``_sorted_unit_sums``), again the dense values.

    Args:
        x_channels: size :math:`d_x` of ``x``.
        y_channels: size :math:`d_y` of ``y``.
        hidden_channels: width :math:`h` of the hidden layers.
        num_layers: number of hidden layers (>= 1).
    """

    def __init__(
        self, x_channels: int, y_channels: int, hidden_channels: int, num_layers: int = 1
    ) -> None:
        super().__init__()
        for name, value in (
            ("x_channels", x_channels),
            ("y_channels", y_channels),
            ("hidden_channels", hidden_channels),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.x_channels, self.y_channels = x_channels, y_channels
        layers: list[torch.nn.Module] = [
            torch.nn.Linear(x_channels + y_channels, hidden_channels),
            torch.nn.ReLU(),
        ]
        for _ in range(num_layers - 1):
            layers += [torch.nn.Linear(hidden_channels, hidden_channels), torch.nn.ReLU()]
        # no output bias: both estimates are unchanged by adding a constant to f
        layers.append(torch.nn.Linear(hidden_channels, 1, bias=False))
        #: The MLP on the concatenation ``[x ; y]`` (the dense formula applies it to pairs).
        self.mlp = torch.nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.mlp:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
                if layer.bias is not None:  # kinks through the data (see the class docstring)
                    torch.nn.init.zeros_(layer.bias)

    def _linears(self, detach: bool) -> tuple[list[Tensor], list[Tensor]]:
        linears = [layer for layer in self.mlp if isinstance(layer, torch.nn.Linear)]
        weights = [layer.weight.detach() if detach else layer.weight for layer in linears]
        biases = [layer.bias.detach() if detach else layer.bias for layer in linears[:-1]]
        return weights, biases

    def _check(self, x: Tensor, y: Tensor) -> None:
        if (
            x.dim() != 2
            or y.dim() != 2
            or x.size(0) != y.size(0)
            or x.size(1) != self.x_channels
            or y.size(1) != self.y_channels
        ):
            raise ValueError(
                f"the critic needs paired [N, {self.x_channels}] and [N, {self.y_channels}] "
                f"rows, got {list(x.shape)} and {list(y.shape)}"
            )
        dtype = self.mlp[0].weight.dtype
        check_rows("x", x, self.x_channels, dtype=dtype)
        check_rows("y", y, self.y_channels, dtype=dtype)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``[N]`` scores :math:`f(x_i, y_i)` of the paired rows."""
        self._check(x, y)
        return self.mlp(torch.cat([x, y], dim=-1)).squeeze(-1)

    def _paired_and_reduced(
        self, x: Tensor, y: Tensor, op: str, detach_parameters: bool, chunk_size: int | None
    ) -> tuple[Tensor, Tensor]:
        """``([N] f(x_i, y_i), [N] reduction over j of f(x_j, y_i))``."""
        self._check(x, y)
        weights, biases = self._linears(detach_parameters)
        first_x = F.linear(x, weights[0][:, : self.x_channels])
        first_y = F.linear(y, weights[0][:, self.x_channels :], biases[0])
        rest_w, rest_b = weights[1:], biases[1:]
        # f(x_i, y_i): the same layers on the matching rows
        hidden = torch.relu(first_x + first_y)
        for weight, bias in zip(rest_w[:-1], rest_b):
            hidden = torch.relu(F.linear(hidden, weight, bias))
        paired = _output(hidden, rest_w[-1])

        num, width = x.size(0), first_x.size(1)
        if width == 1 and len(rest_w) == 1:  # one hidden unit: sorted sums, no pair blocks
            return paired, _sorted_unit_sums(first_x[:, 0], first_y[:, 0], rest_w[0][0, 0], op)
        if chunk_size is None:
            chunk_size = max(1, PAIR_CHUNK_ELEMENTS // max(1, num * width))
        elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        # One block: plain autograd. Several: each recomputed in backward, none kept.
        recompute = torch.is_grad_enabled() and chunk_size < num
        rows = []
        for start in range(0, num, chunk_size):
            block = first_y[start : start + chunk_size]
            if recompute:
                rows.append(
                    checkpoint(_pair_block, first_x, block, rest_w, rest_b, op, use_reentrant=False)
                )
            else:
                rows.append(_pair_block(first_x, block, rest_w, rest_b, op))
        return paired, torch.cat(rows)

    def info_nce_loss(
        self, x: Tensor, y: Tensor, detach_parameters: bool = False, chunk_size: int | None = None
    ) -> Tensor:
        r""":math:`\frac{1}{N}\sum_i [\log\sum_j e^{f(x_j, y_i)} - f(x_i, y_i)]
        = \log N - \hat{I}_{NCE} \ge 0` (each row's sum contains its own pair)."""
        paired, lse = self._paired_and_reduced(x, y, "logsumexp", detach_parameters, chunk_size)
        return (lse - paired).mean()

    def info_nce(
        self, x: Tensor, y: Tensor, detach_parameters: bool = False, chunk_size: int | None = None
    ) -> Tensor:
        """:math:`\\hat{I}_{NCE}(x; y)`, the InfoNCE lower bound."""
        loss = self.info_nce_loss(x, y, detach_parameters, chunk_size)
        return math.log(x.size(0)) - loss

    def nce_club(
        self, x: Tensor, y: Tensor, detach_parameters: bool = False, chunk_size: int | None = None
    ) -> Tensor:
        """:math:`\\hat{I}_{NCE-CLUB}(x; y)`, the mean paired score minus the mean over all
        :math:`N^2` pairs."""
        paired, mean = self._paired_and_reduced(x, y, "mean", detach_parameters, chunk_size)
        return paired.mean() - mean.mean()


class NCECLUB(torch.nn.Module):
    r"""FactorCL's NCE-CLUB upper bound on :math:`I(x; y)`, trained with CLUB's recipe.

    A :class:`ConcatCritic` :math:`f` is fitted by maximising :math:`\hat{I}_{NCE}(x; y)` and
    then read as the log-density ratio in the CLUB estimate :math:`\hat{I}_{NCE\text{-}CLUB}`,
    which the encoders minimise. As in :class:`CLUB`, the two are separate losses on separate
    parameters, so their sum can be minimised by one optimiser in one step:

    * :meth:`upper_bound` sees the critic's parameters *detached*: its gradient reaches only
      ``x`` and ``y``;
    * :meth:`fit_loss` sees ``x`` and ``y`` *detached*: :math:`\log N - \hat{I}_{NCE}` (the
      InfoNCE loss, >= 0) trains only the critic.

    Args:
        x_channels, y_channels, hidden_channels, num_layers: those of the :class:`ConcatCritic`.
        chunk_size: rows per chunk of the pair sums (``None``: automatic, see
            :class:`ConcatCritic`).
    """

    def __init__(
        self,
        x_channels: int,
        y_channels: int,
        hidden_channels: int,
        num_layers: int = 1,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.critic = ConcatCritic(x_channels, y_channels, hidden_channels, num_layers)
        self.chunk_size = chunk_size

    def reset_parameters(self) -> None:
        self.critic.reset_parameters()

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(upper_bound(x, y), fit_loss(x, y))``."""
        return self.upper_bound(x, y), self.fit_loss(x, y)

    def upper_bound(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`\\hat{I}_{NCE-CLUB}(x; y)`; gradients reach ``x`` and ``y`` only."""
        return self.critic.nce_club(x, y, detach_parameters=True, chunk_size=self.chunk_size)

    def fit_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`\\log N - \\hat{I}_{NCE}(x; y)` on detached inputs; trains the critic only."""
        return self.critic.info_nce_loss(x.detach(), y.detach(), chunk_size=self.chunk_size)
