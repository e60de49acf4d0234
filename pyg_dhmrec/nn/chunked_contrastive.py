"""Contrastive losses over all rows in chunks of anchors: memory O(chunk x N) in forward and
backward, with the value and gradient of the dense formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_dhmrec.nn._checks import check_dense

#: Largest :math:`1/\tau` for which ``exp`` of a cosine logit is taken without a max shift:
#: :math:`e^{\pm 40}` and a sum of millions of them stay finite and normal in float32.
UNSHIFTED_MAX_LOGIT = 40.0

#: Anchors per block of :func:`neighbour_contrastive_loss`'s symmetric computation: small
#: blocks make the computed triangle close to half the matrix, large ones keep products fast.
_SYMMETRIC_BLOCK_ROWS = 128


class _ChunkedInfoNCE(torch.autograd.Function):
    """Sum over anchors of ``logsumexp(row) - positive logit`` over the keys
    ``[positive; anchor]`` (``positive`` alone without in-view negatives), in one pass of
    chunks: each chunk's ``[K, chunk]`` exponentiated logits (keys-major) give its
    log-denominators and, when a gradient is wanted, at once the analytic gradient
    ``softmax(row) - onehot(positive)`` of every anchor and key (the softmax's division is
    applied to the ``[chunk, d]`` factors, not to the block). Only the two ``[N, d]``
    gradients are kept for backward, which scales them: the logits are computed once per call,
    and one ``[K, chunk]`` buffer serves every chunk."""

    @staticmethod
    def forward(ctx, anchor, positive, temperature, intra, chunk_size, want_grad):  # noqa: ANN001, ANN205
        num = anchor.size(0)
        keys = torch.cat([positive, anchor]) if intra else positive  # [K, d]
        grad_rows = torch.zeros_like(anchor) if want_grad else None
        grad_keys = torch.zeros_like(keys) if want_grad else None
        # Cosine logits lie in [-1/tau, 1/tau]: unshifted exp is exact and finite for a
        # moderate 1/tau; otherwise each row is shifted by its max, as logsumexp does.
        shift = 1.0 / temperature > UNSHIFTED_MAX_LOGIT
        total = anchor.new_zeros(())
        # the block is kept keys-major, [K, chunk]: BLAS writes it about twice as fast as
        # [chunk, K] (measured with MKL at d = 64)
        buffer = anchor.new_empty(min(chunk_size, num) * keys.size(0))
        ones = keys.new_ones(keys.size(0))
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            rows = anchor[start:end] / temperature
            block = buffer[: keys.size(0) * (end - start)].view(keys.size(0), end - start)
            logits = torch.mm(keys, rows.t(), out=block)  # [K, chunk]
            local = torch.arange(end - start, device=anchor.device)
            if intra:  # an anchor is not its own negative: exp(-inf) = 0
                logits[local + start + num, local] = float("-inf")
            positive_logit = logits[local + start, local].clone()
            if shift:
                top = logits.amax(dim=0, keepdim=True)
                logits.sub_(top)
            exp = logits.exp_()  # in place: the buffer now holds the exponents
            denominator = (ones @ exp).unsqueeze(0)  # [1, chunk]; a column sum, as a GEMV
            lse = denominator.log().squeeze(0)
            if shift:
                lse = lse + top.squeeze(0)
            total = total + (lse - positive_logit).sum()
            if want_grad:  # (softmax - onehot) @ keys and its transpose @ rows
                scale = denominator.t()
                grad_rows[start:end] = (exp.t() @ keys).div_(scale) - keys[start:end]
                grad_keys.addmm_(exp, rows / scale)
                grad_keys[start:end] -= rows
        if want_grad:
            grad_anchor = grad_rows.div_(temperature)
            grad_positive = grad_keys[:num]
            if intra:  # a_i . a_j reaches both anchors
                grad_anchor += grad_keys[num:]
            ctx.save_for_backward(grad_anchor, grad_positive)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_anchor, grad_positive = ctx.saved_tensors
        return grad * grad_anchor, grad * grad_positive, None, None, None, None


class _SymmetricInfoNCE(torch.autograd.Function):
    r""":class:`_ChunkedInfoNCE` with in-view negatives for cosine logits small enough to
    exponentiate unshifted (:math:`1/\tau \le` ``UNSHIFTED_MAX_LOGIT``), using the symmetry of
    the in-view exponents :math:`E^a_{ij} = e^{a_i^\top a_j/\tau}`: only the blocks of
    ``block_rows`` anchors on and right of the diagonal are computed. Three passes: (1) the
    triangle's row and column sums give each anchor's in-view sum; (2) chunks of ``chunk_size``
    anchors against all positives give the rest of each denominator :math:`D_i`, the value
    and the cross part of the gradient; (3) the triangle again (recomputed: as fast as keeping
    it, measured at TikTok's size, and memory one block), scaled in place to
    :math:`E^a_{ij}(1/D_i + 1/D_j)` and multiplied with the anchors in both directions. Per
    call :math:`5 N^2 d` multiply-adds instead of :math:`6 N^2 d`, and no ``[chunk, 2N]``
    block. Only the two ``[N, d]`` gradients are kept for backward."""

    @staticmethod
    def forward(ctx, anchor, positive, temperature, block_rows, chunk_size, want_grad):  # noqa: ANN001, ANN205
        num = anchor.size(0)
        scaled = anchor / temperature
        buffer = anchor.new_empty(max(min(chunk_size, num), min(block_rows, num)) * num)

        def triangle(start: int) -> Tensor:  # E^a of anchors start:end against start:N
            end = min(start + block_rows, num)
            out = buffer[: (end - start) * (num - start)].view(end - start, num - start)
            torch.mm(scaled[start:end], anchor[start:].t(), out=out).exp_()
            local = torch.arange(end - start, device=anchor.device)
            out[local, local] = 0.0  # an anchor is not its own negative
            return out

        denominator = anchor.new_zeros(num)  # pass 1: the in-view sums
        for start in range(0, num, block_rows):
            exp = triangle(start)
            end = start + exp.size(0)
            denominator[start:end] += exp.sum(1)
            denominator[end:] += exp[:, end - start :].sum(0)
        # pass 2: anchors against every positive, keys-major blocks as in _ChunkedInfoNCE
        grad_anchor = torch.zeros_like(anchor) if want_grad else None
        grad_positive = torch.zeros_like(positive) if want_grad else None
        ones = positive.new_ones(num)
        total = anchor.new_zeros(())
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            rows = scaled[start:end]
            logits = torch.mm(positive, rows.t(), out=buffer[: num * (end - start)].view(num, -1))
            local = torch.arange(end - start, device=anchor.device)
            positive_logit = logits[local + start, local].clone()
            exp = logits.exp_()
            denominator[start:end] += ones @ exp
            total = total + (denominator[start:end].log() - positive_logit).sum()
            if want_grad:
                scale = denominator[start:end].unsqueeze(1)
                grad_anchor[start:end] = (exp.t() @ positive).div_(scale) - positive[start:end]
                grad_positive.addmm_(exp, rows / scale)
                grad_positive[start:end] -= rows
        if want_grad:  # pass 3: the in-view part, sum_j E^a_ij (1/D_i + 1/D_j) a_j
            inverse = denominator.reciprocal()
            for start in range(0, num, block_rows):
                exp = triangle(start)
                end = start + exp.size(0)
                exp.mul_(inverse[start:end].unsqueeze(1) + inverse[start:].unsqueeze(0))
                grad_anchor[start:end].addmm_(exp, anchor[start:])
                grad_anchor[end:].addmm_(exp[:, end - start :].t(), anchor[start:end])
            ctx.save_for_backward(grad_anchor.div_(temperature), grad_positive)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_anchor, grad_positive = ctx.saved_tensors
        return grad * grad_anchor, grad * grad_positive, None, None, None, None


def chunked_info_nce(
    anchor: Tensor,
    positive: Tensor,
    temperature: float,
    intra_view_negatives: bool = True,
    chunk_size: int = 512,
) -> Tensor:
    r"""InfoNCE over all ``N`` rows, every other row a negative (GRACE's semi-loss, MICRO's
    contrastive modality fusion):

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_{i=1}^{N} \log
        \frac{e^{\theta(a_i, p_i)/\tau}}
             {\sum_{j=1}^{N} e^{\theta(a_i, p_j)/\tau}
              + \sum_{j \ne i} e^{\theta(a_i, a_j)/\tau}}

    with :math:`\theta` the cosine similarity. ``intra_view_negatives=False`` drops the second
    sum (then it is :func:`~pyg_dhmrec.nn.losses.info_nce` over all rows).

    Anchors are processed ``chunk_size`` rows at a time by one autograd function: one
    ``[2N, chunk]`` block of logits at a time (one product with the keys
    :math:`[p; a]`), from which the anchor's log-denominator and, when a gradient is wanted,
    the analytic gradient (softmax of the row minus the positive's one-hot) are taken at once;
    only the ``[N, d]`` gradients are kept for the backward pass. Peak memory is
    :math:`O(\text{chunk\_size} \cdot N)` instead of the :math:`O(N^2)` that autograd keeps
    for the dense formula, and the logits are computed once (not again in backward); the value
    and gradient are those of the dense formula (sums reassociated only). Computed with a
    per-row max shift (``logsumexp``), so no term overflows. The default chunk keeps the block
    small enough to be reused from the allocator's heap (a block of hundreds of MB is mapped
    afresh, and page-faulted, on every call). With in-view negatives and
    :math:`1/\tau \le 40` (no shift needed) the in-view exponents are computed from the blocks
    on and right of the diagonal of their symmetric matrix (:class:`_SymmetricInfoNCE`):
    5/6 of the products and 1.3x faster at MICRO's TikTok size (6710 x 64), same value and
    gradient.

    Args:
        anchor: ``[N, d]`` anchors :math:`a` (e.g. one modality's item representations).
        positive: ``[N, d]`` positives :math:`p` (e.g. the fused item representations).
        temperature: :math:`\tau > 0`.
        intra_view_negatives: include the anchor view's other rows as negatives.
        chunk_size: anchors per chunk (memory and speed only).
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"chunked_info_nce needs two [N, d] tensors of one shape, got "
            f"{list(anchor.shape)} and {list(positive.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    want_grad = torch.is_grad_enabled() and (anchor.requires_grad or positive.requires_grad)
    if intra_view_negatives and 1.0 / temperature <= UNSHIFTED_MAX_LOGIT:
        block_rows = min(chunk_size, _SYMMETRIC_BLOCK_ROWS)
        total = _SymmetricInfoNCE.apply(
            anchor, positive, float(temperature), block_rows, chunk_size, want_grad
        )
    else:
        total = _ChunkedInfoNCE.apply(
            anchor, positive, float(temperature), bool(intra_view_negatives), chunk_size, want_grad
        )
    return total / anchor.size(0)


def _similarity_chunk(unit: Tensor, start: int, end: int, temperature: float) -> Tensor:
    """``[chunk, P]`` logits :math:`s_{ab} / \tau` of anchors ``start:end``, the anchor's own
    entry set to 0."""
    logits = (unit[start:end] / temperature) @ unit.t()
    local = torch.arange(end - start, device=unit.device)
    logits[local, local + start] = 0.0
    return logits


def _row_logsumexp(values: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """Per-row ``logsumexp`` of sparse entries (``-inf`` for a row without entries)."""
    top = values.new_full((num_rows,), float("-inf")).scatter_reduce(
        0, rows, values, "amax", include_self=True
    )
    shifted = (values - top[rows]).exp()
    return top + values.new_zeros(num_rows).index_add_(0, rows, shifted).log()


class _NeighbourContrast(torch.autograd.Function):
    """Mean over anchors of ``logsumexp(row) - log sum_b w_ab exp(logit_ab)``, forward and
    backward in chunks of anchors (only one ``[chunk, P]`` block lives at a time): the backward
    recomputes each chunk's logits and applies the analytic gradient ``softmax(row) - q_a``,
    ``q_ab = w_ab exp(logit_ab) / sum_b' w_ab' exp(logit_ab')``."""

    @staticmethod
    def forward(ctx, unit, rows, cols, log_weight, temperature, chunk_size):  # noqa: ANN001, ANN205
        num = unit.size(0)
        lse = unit.new_empty(num)
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            lse[start:end] = torch.logsumexp(_similarity_chunk(unit, start, end, temperature), 1)
        pair = (unit[rows] * unit[cols]).sum(-1) / temperature
        pair = torch.where(rows == cols, torch.zeros_like(pair), pair)  # s_aa = 0
        positive_terms = log_weight + pair
        positive = _row_logsumexp(positive_terms, rows, num)
        share = (positive_terms - positive[rows]).exp()  # q_ab
        ctx.save_for_backward(unit, rows, cols, lse, share)
        ctx.settings = (temperature, chunk_size)
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        unit, rows, cols, lse, share = ctx.saved_tensors
        temperature, chunk_size = ctx.settings
        num = unit.size(0)
        scale = grad / (num * temperature)
        grad_unit = torch.zeros_like(unit)
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            probs = _similarity_chunk(unit, start, end, temperature)
            probs = probs.sub_(lse[start:end].unsqueeze(1)).exp_()  # softmax of each row
            local = torch.arange(end - start, device=unit.device)
            probs[local, local + start] = 0.0  # the anchor's own logit is a constant
            probs.mul_(scale)
            grad_unit[start:end] += probs @ unit
            grad_unit += probs.t() @ unit[start:end]
        coefficient = torch.where(rows == cols, torch.zeros_like(share), share) * -scale
        grad_unit.index_add_(0, rows, coefficient.unsqueeze(1) * unit[cols])
        grad_unit.index_add_(0, cols, coefficient.unsqueeze(1) * unit[rows])
        return grad_unit, None, None, None, None, None


class _SymmetricNeighbourContrast(torch.autograd.Function):
    r""":class:`_NeighbourContrast` for cosine logits small enough to exponentiate unshifted
    (:math:`1/\tau \le` ``UNSHIFTED_MAX_LOGIT``), using the symmetry :math:`E = E^\top` of
    :math:`E_{ab} = e^{s_{ab}/\tau}` (:math:`a \ne b`): only the blocks on and right of the
    diagonal, ``[chunk, P - start]`` per chunk of anchors, are computed (half the logits and
    exponents); their row and column sums give every denominator :math:`D`, the positives'
    :math:`E_{ab}` are read from them, and the gradient of the dense part,
    :math:`\sum_b E_{kb} u_b (1/D_k + 1/D_b)`, is one product of each block with
    :math:`[U, U/D]` in each direction. The blocks are kept between the two passes when
    ``store`` (about :math:`P^2/2` floats), else recomputed (memory one block). The gradient is
    computed in forward when wanted; only the ``[P, d]`` gradient is kept for backward."""

    @staticmethod
    def forward(ctx, unit, rows, cols, weight, temperature, chunk_size, store, want_grad):  # noqa: ANN001, ANN205
        num = unit.size(0)
        starts = list(range(0, num, chunk_size))
        sizes = [(min(s + chunk_size, num) - s) * (num - s) for s in starts]
        flat = unit.new_empty(sum(sizes) if store else max(sizes))
        offsets = [sum(sizes[:k]) if store else 0 for k in range(len(starts))]

        def block(k: int) -> Tensor:  # exp(s_ab / tau) of anchors start:end, keys start:P
            start = starts[k]
            end = min(start + chunk_size, num)
            out = flat[offsets[k] : offsets[k] + sizes[k]].view(end - start, num - start)
            torch.mm(unit[start:end], unit[start:].t(), out=out).div_(temperature).exp_()
            local = torch.arange(end - start, device=unit.device)
            out[local, local] = 0.0  # the anchor's own term: the constant exp(0) below
            return out

        # positive pair (a, b), a != b, is read at (min, max) in the block of min's chunk
        off_diagonal = rows != cols
        low, high = torch.minimum(rows, cols), torch.maximum(rows, cols)
        chunk_of = torch.div(low, chunk_size, rounding_mode="floor")
        pair_exp = torch.ones_like(weight)  # exp(s_aa / tau) = 1
        denominator = unit.new_ones(num)  # the anchor's own term
        blocks = []
        for k, start in enumerate(starts):
            exp = block(k)
            end = start + exp.size(0)
            denominator[start:end] += exp.sum(1)
            denominator[end:] += exp[:, end - start :].sum(0)
            picked = (off_diagonal & (chunk_of == k)).nonzero().squeeze(1)
            pair_exp[picked] = exp[low[picked] - start, high[picked] - start]
            blocks.append(exp if store else None)
        weighted = weight * pair_exp
        numerator = unit.new_zeros(num).index_add_(0, rows, weighted)
        total = (denominator.log() - numerator.log()).sum()
        if want_grad:
            keys = torch.cat([unit, unit / denominator.unsqueeze(1)], dim=1)  # [U, U / D]
            acc = torch.zeros_like(keys)
            for k, start in enumerate(starts):
                exp = blocks[k] if store else block(k)
                end = start + exp.size(0)
                acc[start:end].addmm_(exp, keys[start:])
                acc[end:].addmm_(exp[:, end - start :].t(), keys[start:end])
            del blocks, flat, exp  # freed before the positives' [pairs, d] terms
            d = unit.size(1)
            grad_unit = acc[:, :d] / denominator.unsqueeze(1) + acc[:, d:]
            # the positives: -q_ab (u_b to a, u_a to b), q_ab = w_ab E_ab / N_a, a != b
            share = torch.where(off_diagonal, weighted / numerator[rows], 0.0).unsqueeze(1)
            grad_unit.index_add_(0, rows, share * unit[cols], alpha=-1.0)
            grad_unit.index_add_(0, cols, share * unit[rows], alpha=-1.0)
            ctx.save_for_backward(grad_unit.div_(num * temperature))
        return total / num

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (grad_unit,) = ctx.saved_tensors
        return grad * grad_unit, None, None, None, None, None, None, None


def neighbour_contrastive_loss(
    x: Tensor, weight: Tensor, temperature: float, chunk_size: int = 2048
) -> Tensor:
    r"""Graph-MLP's neighbour contrastive loss (NContrast; TMLP's neighbourhood alignment) over
    the ``P`` rows of ``x``, the positives of row :math:`a` weighted by row :math:`a` of
    ``weight``:

    .. math::
        \mathcal{L} = -\frac{1}{P} \sum_{a=1}^{P} \log
        \frac{\sum_{b} w_{ab} \exp(s_{ab} / \tau)}{\sum_{b} \exp(s_{ab} / \tau)}, \qquad
        s_{ab} = \frac{x_a^\top x_b}{\lVert x_a \rVert \lVert x_b \rVert}\ (a \neq b),
        \quad s_{aa} = 0.

    The anchor's own term is kept with similarity 0 (:math:`\exp(0) = 1` in the denominator,
    :math:`w_{aa}` in the numerator), as Graph-MLP's and TMLP's code zero the diagonal of the
    similarity matrix rather than drop it.

    ``weight`` is a dense ``[P, P]`` tensor or a sparse (COO or CSR) one (only its non-zero
    entries are read). One autograd function computes the value and the analytic gradient with the
    value and gradient of the dense formula (sums reassociated only). For
    :math:`1/\tau \le 40` the symmetry of :math:`s` is used: only the blocks of 128 anchors on
    and right of the diagonal are computed (half the logits and exponents, each once), the
    gradient is taken from them at once and they are kept if that needs no more memory than two
    ``[chunk_size, P]`` blocks, else recomputed; about 2x faster than computing every row. For
    a larger :math:`1/\tau` (where ``exp`` needs a per-row shift) anchors are processed
    ``chunk_size`` rows at a time with ``logsumexp`` and the logits recomputed in backward.
    Either way peak memory is :math:`O(\text{chunk\_size} \cdot P)` plus the positive pairs
    and no term overflows.

    Args:
        x: ``[P, d]`` representations.
        weight: ``[P, P]`` non-negative positive weights :math:`w_{ab}`, every row with a
            positive entry.
        temperature: :math:`\tau > 0`.
        chunk_size: bounds the memory (see above).
    """
    if x.dim() != 2 or weight.shape != (x.size(0), x.size(0)):
        raise ValueError(
            f"neighbour_contrastive_loss needs x [P, d] and weight [P, P], got "
            f"{list(x.shape)} and {list(weight.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    check_dense("x", x)
    if weight.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        weight = weight.to_sparse_coo()  # the graphs of this library are CSR; COO is read below
    if weight.is_sparse:
        weight = weight.coalesce()
        (rows, cols), values = weight.indices(), weight.values()
    else:
        rows, cols = weight.nonzero().t()
        values = weight[rows, cols]
    # a NaN entry would pass "< 0" and then be dropped by "> 0" below, silently
    if bool(((values < 0) | ~torch.isfinite(values)).any()):
        raise ValueError("weight must be non-negative and finite (no NaN or inf)")
    rows, cols, values = rows[values > 0], cols[values > 0], values[values > 0]
    if torch.unique(rows).numel() != x.size(0):
        raise ValueError("weight needs a positive entry in every row (a positive per anchor)")
    unit = F.normalize(x, dim=-1)
    if 1.0 / temperature > UNSHIFTED_MAX_LOGIT:  # exp needs a per-row shift: no symmetry
        return _NeighbourContrast.apply(
            unit, rows, cols, values.to(unit.dtype).log(), float(temperature), chunk_size
        )
    num, block_rows = x.size(0), min(chunk_size, _SYMMETRIC_BLOCK_ROWS)
    triangle = sum((min(s + block_rows, num) - s) * (num - s) for s in range(0, num, block_rows))
    want_grad = torch.is_grad_enabled() and unit.requires_grad
    return _SymmetricNeighbourContrast.apply(
        unit,
        rows,
        cols,
        values.to(unit.dtype),
        float(temperature),
        block_rows,
        triangle <= 2 * chunk_size * num,  # keep the blocks if no larger than two chunks
        want_grad,
    )
