r"""Gaussian diffusion over interaction rows and its denoising MLP (DiffRec, Wang et al.
SIGIR 2023; DiffMM, Jiang et al. ACM MM 2024, Eqs. 1-13)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_dhmrec.nn._checks import check_dense, check_rows, shape

#: A denoiser: ``(x_t [B, I], t [B] in 1..T) -> predicted x_0 [B, I]``.
Denoiser = Callable[[Tensor, Tensor], Tensor]


#: Smallest first-step variance ``noise_scale * noise_min`` under SNR weighting: step 2's
#: weight is about its inverse, and 1e30 times a squared error stays finite in float32.
MIN_FIRST_VARIANCE = 1e-30


class GaussianDiffusion(torch.nn.Module):
    r"""The forward noising and the deterministic reverse steps of a Gaussian diffusion over
    ``[B, I]`` rows, with a denoiser that predicts :math:`x_0` (DiffMM Eqs. 1-13).

    **Schedule** (Eq. 3, linear in the noise level): for :math:`t = 1, \dots, T`,

    .. math::
        1 - \bar\gamma_t = s \left(\gamma_{\min} + \frac{t - 1}{T - 1}
        (\gamma_{\max} - \gamma_{\min})\right),
        \qquad \beta_t = 1 - \bar\gamma_t / \bar\gamma_{t-1}, \quad \bar\gamma_0 = 1

    (:math:`T = 1`: :math:`1 - \bar\gamma_1 = s \gamma_{\min}`). The reference code then
    overwrites :math:`\beta_1` with ``1e-4`` (``beta_fixed``); we keep Eq. 3.

    **Forward** (Eqs. 1-2): :math:`q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\gamma_t}\, x_0,
    (1 - \bar\gamma_t) I)`, drawn as :math:`x_t = \sqrt{\bar\gamma_t}\, x_0 +
    \sqrt{1 - \bar\gamma_t}\, \epsilon` (:meth:`q_sample`).

    **Reverse** (Eqs. 4, 7-8): :math:`p_\theta(x_{t-1} \mid x_t) = \mathcal{N}(\tilde\mu_t,
    \tilde\beta_t I)`, the posterior :math:`q(x_{t-1} \mid x_t, x_0)` with :math:`x_0` replaced
    by the denoiser's :math:`\hat{x}_0 = f_\theta(x_t, t)`:

    .. math::
        \tilde\mu_t = \frac{\beta_t \sqrt{\bar\gamma_{t-1}}}{1 - \bar\gamma_t}\, \hat{x}_0
        + \frac{(1 - \bar\gamma_{t-1}) \sqrt{1 - \beta_t}}{1 - \bar\gamma_t}\, x_t, \qquad
        \tilde\beta_t = \frac{1 - \bar\gamma_{t-1}}{1 - \bar\gamma_t}\, \beta_t

    (:meth:`p_step`; at :math:`t = 1` the mean is :math:`\hat{x}_0` itself).

    **Loss** (Eqs. 11-13): :math:`t \sim U\{1..T\}` per row and
    :math:`w_t \lVert \hat{x}_0 - x_0 \rVert^2` with :math:`w_t = \mathrm{SNR}(t-1) -
    \mathrm{SNR}(t)`, :math:`\mathrm{SNR}(t) = \bar\gamma_t / (1 - \bar\gamma_t)`, for
    :math:`t \ge 2` and :math:`w_1 = 1` (the ELBO's per-step weights, as the reference code
    and DiffRec weigh them; the Gaussian KL's factor 1/2 on the :math:`t \ge 2` terms is
    dropped there and here), or :math:`w_t = 1` with ``snr_weighting=False``. The squared norm
    is a mean over the row's coordinates (:meth:`elbo`), as in the reference code.

    Args:
        steps: :math:`T \ge 1`.
        noise_scale: :math:`s > 0`.
        noise_min, noise_max: :math:`\gamma_{\min} \le \gamma_{\max}` with
            :math:`s \gamma_{\max} < 1` (strictly increasing noise when :math:`T > 1`).
        snr_weighting: weigh each step's error by :math:`w_t` (else uniformly).
    """

    def __init__(
        self,
        steps: int,
        noise_scale: float,
        noise_min: float,
        noise_max: float,
        snr_weighting: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"diffusion steps must be an integer >= 1, got {steps!r}")
        if not 0 < noise_scale * noise_min:
            raise ValueError(
                f"noise_scale * noise_min must be > 0, got {noise_scale} * {noise_min}"
            )
        if steps > 1 and snr_weighting and noise_scale * noise_min < MIN_FIRST_VARIANCE:
            raise ValueError(
                f"noise_scale * noise_min must be >= {MIN_FIRST_VARIANCE:g} with snr_weighting "
                f"(step 2's SNR weight is about 1 / (noise_scale * noise_min) and must stay "
                f"finite in float32), got {noise_scale} * {noise_min}"
            )
        if not noise_scale * noise_max < 1:
            raise ValueError(
                f"noise_scale * noise_max must be < 1, got {noise_scale} * {noise_max}"
            )
        if steps > 1 and not noise_min < noise_max:
            raise ValueError(
                f"noise_min must be < noise_max (noise grows with the step), got {noise_min} "
                f"and {noise_max}"
            )
        self.steps, self.snr_weighting = steps, snr_weighting
        t = torch.arange(1, steps + 1, dtype=torch.float64)
        fraction = (t - 1) / (steps - 1) if steps > 1 else torch.zeros_like(t)
        variance = noise_scale * (noise_min + fraction * (noise_max - noise_min))  # Eq. 3
        gamma_bar = torch.cat([torch.ones(1, dtype=torch.float64), 1.0 - variance])
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), 1 - gamma_bar[1:] / gamma_bar[:-1]])
        # Index t = 0..T; entries at t = 0 are unused padding where undefined.
        prev = torch.cat([torch.ones(1, dtype=torch.float64), gamma_bar[:-1]])
        # 1 - gamma_bar is the variance itself: 1 - (1 - v) rounds to 0 for v below ~1e-17,
        # which made the SNR weight inf
        exact = torch.cat([torch.zeros(1, dtype=torch.float64), variance])
        one_minus = exact.clamp_min(torch.finfo(torch.float64).tiny)
        one_minus_prev = torch.cat([torch.zeros(1, dtype=torch.float64), exact[:-1]])
        mean_x0 = beta * prev.sqrt() / one_minus
        mean_xt = one_minus_prev * (1 - beta).sqrt() / one_minus
        variance_post = beta * one_minus_prev / one_minus
        snr = gamma_bar / one_minus
        weight = torch.ones_like(snr)
        weight[2:] = snr[1:-1] - snr[2:]
        for name, value in (
            ("gamma_bar", gamma_bar),
            ("beta", beta),
            ("posterior_mean_x0", mean_x0),
            ("posterior_mean_xt", mean_xt),
            ("posterior_variance", variance_post),
            ("snr_weight", weight),
        ):
            self.register_buffer(name, value.float(), persistent=False)

    def _at(self, values: Tensor, t: Tensor) -> Tensor:
        """``values[t]`` as a ``[B, 1]`` column for ``[B, I]`` rows."""
        return values[t].unsqueeze(-1)

    def _check_t(self, t: Tensor, low: int) -> None:
        if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"t must be a 1-D integer tensor of steps, got {t.dtype} {list(t.shape)}"
            )
        if t.numel() and (int(t.min()) < low or int(t.max()) > self.steps):
            raise ValueError(f"steps t must lie in [{low}, {self.steps}], got {t.tolist()}")

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        r""":math:`x_t = \sqrt{\bar\gamma_t} x_0 + \sqrt{1 - \bar\gamma_t} \epsilon` (Eq. 2)
        for each row's step ``t`` in ``0..T`` (``t = 0``: :math:`x_0`); ``noise``:
        :math:`\epsilon` (default: ``randn_like(x0)``)."""
        self._check_t(t, 0)
        if noise is None:
            noise = torch.randn_like(x0)
        gamma_bar = self._at(self.gamma_bar, t)
        return gamma_bar.sqrt() * x0 + (1 - gamma_bar).sqrt() * noise

    def p_step(
        self, denoiser: Denoiser, xt: Tensor, t: Tensor, noise: Tensor | None = None
    ) -> Tensor:
        r"""One reverse step :math:`x_t \to x_{t-1}` for steps ``t`` in ``1..T``: the mean
        :math:`\tilde\mu_t(x_t, f_\theta(x_t, t))`, plus :math:`\sqrt{\tilde\beta_t}`
        ``noise`` where ``noise`` is given and :math:`t > 1`."""
        self._check_t(t, 1)
        x0_hat = denoiser(xt, t)
        mean = (
            self._at(self.posterior_mean_x0, t) * x0_hat + self._at(self.posterior_mean_xt, t) * xt
        )
        if noise is None:
            return mean
        std = self._at(self.posterior_variance, t).sqrt() * (t > 1).unsqueeze(-1)
        return mean + std * noise

    @torch.no_grad()
    def sample(
        self, denoiser: Denoiser, x0: Tensor, start_step: int = 0, sampling_noise: bool = False
    ) -> Tensor:
        r"""DiffMM's inference: noise the rows to step :math:`T'` = ``start_step``
        (:math:`T' = 0`: no noise), then take the :math:`T` reverse steps :math:`t = T, \dots,
        1` (with posterior noise only if ``sampling_noise``); returns :math:`\hat{x}_0`."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step must lie in [0, {self.steps}], got {start_step}")
        rows = x0.size(0)
        x = x0
        if start_step > 0:
            x = self.q_sample(x0, torch.full((rows,), start_step, device=x0.device))
        if not sampling_noise and isinstance(denoiser, DenoisingMLP) and denoiser.foldable:
            return self._folded_chain(denoiser, x)
        for step in range(self.steps, 0, -1):
            t = torch.full((rows,), step, device=x0.device)
            x = self.p_step(denoiser, x, t, torch.randn_like(x) if sampling_noise else None)
        return x

    def _folded_chain(self, mlp: DenoisingMLP, x: Tensor) -> Tensor:
        r"""The deterministic reverse steps of :meth:`sample` for a one-hidden-layer
        :class:`DenoisingMLP` in eval mode, carried in its hidden space: with
        :math:`u_t = W_x x_t` (:math:`W_x` the input layer's columns of the row),
        :math:`u_{t-1} = c^{(1)}_t (W_x W_2 h_t + W_x b_2) + c^{(2)}_t u_t` is the same
        recursion as :math:`x_{t-1} = c^{(1)}_t \hat{x}_0 + c^{(2)}_t x_t`, with a
        ``[H, H]`` product per step instead of two ``[I, H]`` ones; only the last step's
        :math:`\hat{x}_0` is built (the same values up to float rounding)."""
        first, last = mlp.in_layers[0], mlp.out_layers[0]
        w_x_rows, w_t, fold, fold_bias = mlp.hidden_fold()
        # an unnoised interaction row is mostly zeros: gather its columns of W_x
        sparse = torch.count_nonzero(x) < 0.1 * x.numel()
        if sparse:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=".*Sparse CSR tensor support is in beta.*"
                )
                u = x.to_sparse_csr() @ w_x_rows
        else:
            u = x @ w_x_rows
        for step in range(self.steps, 0, -1):
            t = torch.full((x.size(0),), step, device=x.device)
            h = torch.tanh(
                u
                + mlp.time_layer(timestep_embedding(t, mlp.time_dim).to(w_t)) @ w_t.t()
                + first.bias
            )
            if step == 1:  # the mean of the last step is the prediction itself
                return last(h)
            u = (
                self.posterior_mean_x0[step] * (h @ fold.t() + fold_bias)
                + self.posterior_mean_xt[step] * u
            )
        raise AssertionError("unreachable: steps >= 1")

    def sample_steps(self, rows: int, device: torch.device | None = None) -> Tensor:
        r""":math:`t \sim U\{1, \dots, T\}` for ``rows`` rows (torch's global RNG)."""
        return torch.randint(1, self.steps + 1, (rows,), device=device)

    def elbo(self, x0: Tensor, x0_hat: Tensor, t: Tensor) -> Tensor:
        r"""``[B]`` per-row loss :math:`w_t \cdot \mathrm{mean}_i (\hat{x}_{0,i} - x_{0,i})^2`
        (Eqs. 11-13)."""
        self._check_t(t, 1)
        mse = (x0_hat - x0).pow(2).mean(-1)
        return self.snr_weight[t] * mse if self.snr_weighting else mse

    def extra_repr(self) -> str:
        return f"steps={self.steps}, snr_weighting={self.snr_weighting}"


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    r"""Sinusoidal ``[B, dim]`` embedding of the steps ``t``: :math:`[\cos(t f_k),
    \sin(t f_k)]` with :math:`f_k = \text{max\_period}^{-k / \lfloor dim/2 \rfloor}`, zero-padded
    to an odd ``dim`` (the transformer / DDPM position code)."""
    check_dense("t", t, dim=1, floating=False)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float().unsqueeze(-1) * freqs
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:  # a zero column of its own: out has none to copy at dim 1
        out = torch.cat([out, out.new_zeros(out.size(0), 1)], dim=-1)
    return out


class DenoisingMLP(torch.nn.Module):
    r"""DiffRec's denoiser :math:`f_\theta(x_t, t) \to \hat{x}_0` over ``[B, I]`` rows (DiffMM
    Eq. 4's MLP):

    .. math::
        h = [\mathrm{dropout}(x_t) \,\Vert\, W_e\, \mathrm{emb}(t) + b_e], \quad
        \text{tanh layers } I + d_t \to d_1 \to \dots \to d_L, \quad
        \text{then } d_L \to \dots \to d_1 \to I

    (tanh after every layer but the last; ``hidden_dims`` = :math:`[d_1, \dots, d_L]`, the
    reference's ``dims``, whose in-layers run them in reverse order: ``[1000]`` gives
    :math:`I + d_t \to 1000 \to I`). The input dropout acts in training only. Weights are drawn
    from :math:`\mathcal{N}(0, 2 / (\text{fan}_{in} + \text{fan}_{out}))`, biases from
    :math:`\mathcal{N}(0, 10^{-6})`, as in the reference code. ``t`` is the 1-based step of
    :class:`GaussianDiffusion` (the reference embeds its 0-based index, the same code shifted
    by one step).
    """

    def __init__(
        self,
        num_items: int,
        hidden_dims: Sequence[int] = (1000,),
        time_dim: int = 10,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        # int() would turn 2.5 into 2 and True into 1: whole sizes only
        if (
            not isinstance(hidden_dims, Sequence)
            or isinstance(hidden_dims, str)
            or not hidden_dims
            or not all(isinstance(h, Integral) and not isinstance(h, bool) for h in hidden_dims)
            or any(h < 1 for h in hidden_dims)
        ):
            raise ValueError(
                f"hidden_dims must be a non-empty list of sizes >= 1, got {hidden_dims!r}"
            )
        hidden = [int(h) for h in hidden_dims]
        if time_dim < 1:
            raise ValueError(f"time_dim must be >= 1, got {time_dim}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.time_dim = time_dim
        self.time_layer = torch.nn.Linear(time_dim, time_dim)
        sizes_in = [num_items + time_dim, *reversed(hidden)]
        sizes_out = [*hidden, num_items]
        self.in_layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(sizes_in[:-1], sizes_in[1:])
        )
        self.out_layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(sizes_out[:-1], sizes_out[1:])
        )
        self.dropout = torch.nn.Dropout(dropout)
        self._fold: tuple[Any, tuple[Tensor, ...]] | None = None  # see hidden_fold
        self.reset_parameters()

    @property
    def foldable(self) -> bool:
        """One hidden layer and no dropout (eval mode): reverse chains can run in the hidden
        space (:meth:`GaussianDiffusion.sample`)."""
        return len(self.in_layers) == 1 and len(self.out_layers) == 1 and not self.training

    @torch.no_grad()
    def hidden_fold(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For a :attr:`foldable` MLP: the input layer's row columns :math:`W_x^\top`
        (``[I, H]``, contiguous) and step columns :math:`W_t`, :math:`W_x W_2` and
        :math:`W_x b_2`; computed once per version of the weights (an optimiser step or a
        state load makes a new one)."""
        first, last = self.in_layers[0], self.out_layers[0]
        version = tuple(p._version for p in (first.weight, last.weight, last.bias))
        key = (version, first.weight.device, first.weight.data_ptr(), last.weight.data_ptr())
        if self._fold is None or self._fold[0] != key:
            num_items = last.out_features
            w_x = first.weight[:, :num_items].contiguous()
            w_t = first.weight[:, num_items:].contiguous()
            fold = (w_x.t().contiguous(), w_t, w_x @ last.weight, w_x @ last.bias)
            self._fold = (key, fold)
        return self._fold[1]

    def reset_parameters(self) -> None:
        for layer in [self.time_layer, *self.in_layers, *self.out_layers]:
            torch.nn.init.xavier_normal_(layer.weight)
            torch.nn.init.normal_(layer.bias, 0.0, 0.001)

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        first = self.in_layers[0]
        check_rows("xt", xt, self.out_layers[-1].out_features, dtype=first.weight.dtype)
        if t.shape != xt.shape[:1]:
            raise ValueError(f"t must hold one step per row of xt, [{xt.size(0)}], got {shape(t)}")
        emb = self.time_layer(timestep_embedding(t, self.time_dim).to(xt))
        # the first layer of [x || emb] as W_x x + W_t emb: no [B, I] gradient for x, which
        # needs none, and no concatenated copy of the rows
        first = self.in_layers[0]
        num_items = self.out_layers[-1].out_features
        h = F.linear(self.dropout(xt), first.weight[:, :num_items], first.bias)
        h = torch.tanh(h.addmm_(emb, first.weight[:, num_items:].t()))
        for layer in self.in_layers[1:]:
            h = torch.tanh(layer(h))
        for k, layer in enumerate(self.out_layers):
            h = layer(h)
            if k < len(self.out_layers) - 1:
                h = torch.tanh(h)
        return h
