"""Attention fusion of several embedding views (DHMRec Eqs. 15-19)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pyg_dhmrec.nn._checks import check_views


class DimensionAttention(torch.nn.Module):
    r"""Positive-negative attention of one view across embedding dimensions (DHMRec Eqs. 15-18).

    With embeddings as :math:`d \times N` matrices (columns are the :math:`N = |U| + |I|` nodes),
    :math:`Q = W_q E_{fus}`, :math:`K = W_k \hat{E}`, :math:`V = W_v \hat{E}` and

    .. math::
        S = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{N}}\Big) \in \mathbb{R}^{d \times d},
        \quad O^{pos} = S V, \quad O^{neg} = (1 - S) V,

        O = \alpha_{pos} O^{pos} + \alpha_{neg} O^{neg}, \qquad
        \tilde{E} = LN\big(LN(W_o O) + \hat{E}\big)

    The :math:`d \times d` map sums over all :math:`N` nodes, which is what the
    :math:`\sqrt{N}` scale implies; the softmax runs over its last axis (standard attention).
    ``negative=False`` gives the standard-attention ablation (w/o PNF): :math:`O = S V`, and
    :math:`\alpha_{pos}, \alpha_{neg}` are not created. :math:`\alpha_{pos}, \alpha_{neg}` start
    at 1 and 0 (our choice; the paper gives no initial value): training starts from standard
    attention and learns how much of the negative branch to add. Equal values would make
    :math:`O = \alpha J V` independent of the attention map, so :math:`W_q, W_k` would get no
    gradient at the first step. Projections have no bias, as
    the equations write them; the two layer norms are separate modules.

    ``output_scale`` :math:`s` multiplies the outer layer norm's output, :math:`s\,LN(\cdot)`
    with PyTorch's initial gain 1 and bias 0: a layer norm outputs rows of norm about
    :math:`\sqrt{d}` whatever its input, which is what sets the scale of :math:`\tilde{E}`
    (Eq. 18), and a model that adds :math:`\tilde{E}` to another embedding (DHMRec's Eq. 22)
    passes that embedding's scale here so that both start comparable. :math:`s\,LN` with
    affine :math:`(\gamma, \beta)` is the layer norm with affine :math:`(s\gamma, s\beta)`,
    the family Eq. 18 writes; what the constant changes is training under Adam, whose steps
    have the same size for every parameter: started at gain :math:`s` and bias 0 directly, the
    bias (one vector shared by every node) outgrows the gain within an epoch and
    :math:`\tilde{E}` loses its content (see :class:`~pyg_dhmrec.models.DHMRec`), while
    :math:`(\gamma, \beta)` at (1, 0) move relative to a unit gain as in the paper's layer
    norm. :math:`s` is a buffer: saved with the model, never trained.

    Args:
        channels: embedding size :math:`d`.
        negative: keep the negative branch (Eq. 16-17).
        output_scale: constant :math:`s` times the outer layer norm (1.0: none).
    """

    output_scale: Tensor

    def __init__(self, channels: int, negative: bool = True, output_scale: float = 1.0) -> None:
        super().__init__()
        self.negative = negative
        self.register_buffer("output_scale", torch.tensor(1.0))
        self.set_output_scale(output_scale)
        self.query = torch.nn.Linear(channels, channels, bias=False)
        self.key = torch.nn.Linear(channels, channels, bias=False)
        self.value = torch.nn.Linear(channels, channels, bias=False)
        self.out = torch.nn.Linear(channels, channels, bias=False)
        self.inner_norm = torch.nn.LayerNorm(channels)
        self.outer_norm = torch.nn.LayerNorm(channels)
        if negative:
            self.alpha_pos = torch.nn.Parameter(torch.empty(()))
            self.alpha_neg = torch.nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.query, self.key, self.value, self.out):
            torch.nn.init.xavier_uniform_(layer.weight)
        self.inner_norm.reset_parameters()
        self.outer_norm.reset_parameters()
        if self.negative:
            torch.nn.init.constant_(self.alpha_pos, 1.0)
            torch.nn.init.constant_(self.alpha_neg, 0.0)

    def set_output_scale(self, scale: float) -> None:
        """Sets :math:`s` (a positive, finite float)."""
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"output_scale must be a finite number > 0, got {scale}")
        self.output_scale.fill_(float(scale))

    def attention_map(self, fused: Tensor, view: Tensor) -> Tensor:
        """The ``[d, d]`` map :math:`S` (rows: query dimensions)."""
        return self.map_from_cross(fused.t() @ view, view.size(0))

    def map_from_cross(self, cross: Tensor, num_nodes: int) -> Tensor:
        r""":math:`S` from the ``[d, d]`` cross product :math:`E_{fus}^\top \hat{E}` (rows as
        nodes) over ``num_nodes`` nodes: :math:`Q K^\top = W_q (E_{fus}^\top \hat{E}) W_k^\top`,
        so :math:`Q` and :math:`K` are never formed for the nodes."""
        scores = self.query.weight @ cross @ self.key.weight.t()
        return torch.softmax(scores / math.sqrt(num_nodes), dim=-1)

    def output_map(self, attn: Tensor) -> Tensor:
        r"""The ``[d, d]`` matrix :math:`M = W_o (\alpha_{pos} S + \alpha_{neg} (J - S)) W_v`
        (:math:`J` all ones), so that :math:`W_o O = M \hat{E}` (Eqs. 15-17 in the paper's
        ``d x N`` layout): value, attention and output weights folded into one map."""
        mix = attn
        if self.negative:
            mix = self.alpha_pos * attn + self.alpha_neg * (1 - attn)
        return self.out.weight @ mix @ self.value.weight

    def attend(self, view: Tensor, attn: Tensor) -> Tensor:
        """Eq. 18 for the rows of ``view`` (``[n, d]``, any subset of the nodes) under the map
        ``attn`` (:meth:`attention_map` over all nodes)."""
        out = self.outer_norm(self.inner_norm(view @ self.output_map(attn).t()) + view)
        return out * self.output_scale

    def forward(self, fused: Tensor, view: Tensor) -> Tensor:
        """``fused`` and ``view`` are ``[N, d]`` (one row per node); returns ``[N, d]``."""
        check_views(
            ("fused", "view"), [fused, view], self.query.in_features, self.query.weight.dtype
        )
        return self.attend(view, self.attention_map(fused, view))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.query.in_features}, negative={self.negative})"


class AttentionFusion(torch.nn.Module):
    r"""Fuses V views by per-view :class:`DimensionAttention` and a sum (DHMRec Eqs. 15-19).

    .. math::
        E_{fus} = W_3 [\hat{E}_1, \dots, \hat{E}_V], \qquad
        \tilde{E}_{mm} = \sum_v \mathrm{Attn}_v(E_{fus}, \hat{E}_v)

    Args:
        channels: embedding size :math:`d`.
        num_views: number of views V (3 in the paper: common, text, image).
        negative: positive-negative attention (True) or standard attention (False).
        output_scale: constant :math:`s` times every view's outer layer norm (see
            :class:`DimensionAttention`); :meth:`set_output_scale` sets a new one.
    """

    def __init__(
        self, channels: int, num_views: int, negative: bool = True, output_scale: float = 1.0
    ) -> None:
        super().__init__()
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.num_views = num_views
        self.fuse = torch.nn.Linear(num_views * channels, channels, bias=False)
        self.attentions = torch.nn.ModuleList(
            DimensionAttention(channels, negative, output_scale) for _ in range(num_views)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.fuse.weight)
        for attention in self.attentions:
            attention.reset_parameters()

    def set_output_scale(self, scale: float) -> None:
        """Sets every view's constant :math:`s` (:class:`DimensionAttention`)."""
        for attention in self.attentions:
            attention.set_output_scale(scale)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        if len(views) != self.num_views:
            raise ValueError(f"expected {self.num_views} views, got {len(views)}")
        check_views("views", views, self.fuse.out_features, self.fuse.weight.dtype)
        return self.fuse_concatenated(torch.cat(list(views), dim=-1))

    def fuse_concatenated(self, views: Tensor) -> Tensor:
        """:meth:`forward` of the views concatenated along the columns, ``[N, V d]``."""
        return self.attend(views, self.attention_maps(views))

    def attention_maps(self, views: Tensor | Sequence[Tensor]) -> list[Tensor]:
        r"""The ``V`` maps :math:`S_v` (``[d, d]`` each) over all nodes: ``views`` holds every
        node's concatenated views, ``[N, V d]``, or a sequence of blocks of such rows (e.g.
        users and items; the maps sum over all of them).

        Every map needs only :math:`E_{fus}^\top \hat{E}_v` (:meth:`DimensionAttention.
        map_from_cross`), all of them the one ``[d, V d]`` product :math:`E_{fus}^\top
        [\hat{E}_1, \dots, \hat{E}_V]`, a sum over the blocks."""
        blocks = [views] if isinstance(views, Tensor) else list(views)
        for block in blocks:
            self._check(block)
        cross = sum(self.fuse(block).t() @ block for block in blocks)
        return self.maps_from_cross(cross, sum(block.size(0) for block in blocks))

    def maps_from_cross(self, cross: Tensor, num_nodes: int) -> list[Tensor]:
        r"""The ``V`` maps of :meth:`attention_maps` from the ``[d, V d]`` product
        :math:`E_{fus}^\top [\hat{E}_1, \dots, \hat{E}_V]` over ``num_nodes`` nodes, for a
        caller that forms it more cheaply (e.g. rows that are linear maps of other rows)."""
        if cross.dim() != 2 or cross.size(1) != self.num_views * cross.size(0):
            raise ValueError(
                f"expected a [d, {self.num_views} * d] cross product, got {list(cross.shape)}"
            )
        width = cross.size(1) // self.num_views
        return [
            attention.map_from_cross(part, num_nodes)
            for attention, part in zip(self.attentions, cross.split(width, dim=1))
        ]

    def attend(self, rows: Tensor, maps: Sequence[Tensor]) -> Tensor:
        r""":math:`\tilde{E}_{mm}` (Eq. 19) of the nodes ``rows`` (``[n, V d]`` concatenated
        views, any subset of the nodes) under the maps of :meth:`attention_maps`: one ``d x d``
        map per view and node, then the layer norms (:meth:`DimensionAttention.attend`)."""
        self._check(rows)
        width = rows.size(1) // self.num_views
        out = None
        for attention, view, attn in zip(self.attentions, rows.split(width, dim=1), maps):
            part = attention.attend(view, attn)
            out = part if out is None else out + part
        return out

    def _check(self, views: Tensor) -> None:
        width = views.size(1) // self.num_views if views.dim() == 2 else 0
        if views.dim() != 2 or width * self.num_views != views.size(1) or width < 1:
            raise ValueError(
                f"expected [N, {self.num_views} * d] concatenated views, got {list(views.shape)}"
            )


class ModalityAttention(torch.nn.Module):
    r"""Per-node attention over modality views (MICRO Eqs. 8-9):

    .. math::
        \alpha^m_i = \mathrm{softmax}_m\big(q^\top \tanh(W h^m_i + b)\big), \qquad
        h_i = \sum_m \alpha^m_i h^m_i

    with :math:`W, b, q` shared by the modalities (``q`` without bias, so the score is
    shift-free across modalities). Any number of views :math:`\ge 1`; with one,
    :math:`\alpha = 1`.

    Args:
        channels: width of the views.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(channels, channels)
        self.query = torch.nn.Linear(channels, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.hidden.reset_parameters()  # PyTorch's default Linear init, as the authors' code
        self.query.reset_parameters()

    def weights(self, views: Sequence[Tensor]) -> Tensor:
        """``[N, M]`` attention weights :math:`\\alpha` of ``M`` views of ``[N, d]``."""
        scores = torch.cat([self.query(torch.tanh(self.hidden(v))) for v in views], dim=1)
        return torch.softmax(scores, dim=1)

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        if len(views) == 0:
            raise ValueError("ModalityAttention needs at least one view")
        check_views("views", views, self.hidden.in_features, self.hidden.weight.dtype)
        alpha = self.weights(views)
        return sum(alpha[:, m : m + 1] * v for m, v in enumerate(views))
