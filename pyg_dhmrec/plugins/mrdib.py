"""MRdIB (Wang et al., 2025, arXiv 2509.20225): a multimodal representation-disentangled
information bottleneck, as a plug-in training objective for any multimodal recommender."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender
from pyg_dhmrec.nn import CLUB, VariationalEncoder, bpr_loss, kl_to_standard_normal

log = logging.getLogger(__name__)

#: The four objectives, each switched by ``<name>`` and weighted by ``<name>_weight``.
OBJECTIVES = ("kl", "unique", "redundant", "synergy")


def _margin(users: Tensor, items: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Per-pair score margin :math:`e_u^\\top (x_{i^+} - x_{i^-})`."""
    return (users * (items[pos] - items[neg])).sum(-1)


def _check_arguments(
    switches: Mapping[str, Any], weights: Mapping[str, Any], club_hidden: Any
) -> None:
    """Raise ``ValueError`` naming the argument and its key for an option out of range."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise ValueError(f"MRdIB: {name} (mrdib_{name}) must be true or false, got {value!r}")
    for name, value in weights.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"MRdIB: {name}_weight (mrdib_{name}_weight) must be a finite number >= 0, "
                f"got {value!r}"
            )
    if (
        isinstance(club_hidden, bool)
        or not isinstance(club_hidden, int)
        or not 1 <= club_hidden <= 65536
    ):
        raise ValueError(
            f"MRdIB: club_hidden (mrdib_club_hidden) must be an integer in [1, 65536], got "
            f"{club_hidden!r}"
        )
    if not any(switches.values()):  # the run would be the base model under another name
        raise ValueError(
            "MRdIB: mrdib_kl, mrdib_unique, mrdib_redundant and mrdib_synergy are all false, "
            "so the plug-in adds nothing; switch one on, or train without --plugin"
        )


class MRdIB(Recommender):
    r"""MRdIB wrapped around a multimodal ``base`` model; only the abstract of the paper is
    available, so the formulas below are ours (reasons in ``docs/mrdib.md``).

    The base exposes, from one pass (its :class:`Embeddings`), user embeddings
    :math:`e_u`, fused item embeddings :math:`e_i` and per-modality item representations
    :math:`h^m_i` in the scoring space. The plug-in adds four loss parts on the batch's
    distinct items :math:`\mathcal{I}_B` (positives and negatives) and pairs
    :math:`(u, i^+, i^-)`; ranking stays the base's :math:`e_u^\top e_i`.

    **(1) Multimodal information bottleneck.** Per modality a :class:`VariationalEncoder`:
    :math:`z^m_i = \mu^m(h^m_i) + \sigma^m(h^m_i) \odot \epsilon` in training, :math:`\mu^m`
    in evaluation, and

    .. math::
        \mathcal{L}_{kl} = \frac{1}{M} \sum_m \frac{1}{|\mathcal{I}_B|}
            \sum_{i \in \mathcal{I}_B} KL\big(q(z^m_i \mid h^m_i) \,\|\, \mathcal{N}(0, I)\big)

    **(2) Unique information.** Each compressed modality alone must rank the pair:
    :math:`\mathcal{L}_{uni} = \frac{1}{M} \sum_m \mathrm{BPR}(e_u^\top z^m_{i^+},
    e_u^\top z^m_{i^-})`, a lower bound on :math:`I(z^m; y)` per modality. *Choice*: what
    makes the kept signal *unique* is term (3), which removes what the modalities share; a
    BPR conditioned on the other modalities' (detached) scores has exactly the gradient of
    one BPR on their sum (an additive late fusion), so it would not keep each modality
    predictive on its own.

    **(3) Redundant information.** For every pair of modalities :math:`m < n` (dataset order)
    the :class:`CLUB` upper bound :math:`\hat{I}(z^m; z^n)` with its own network
    :math:`q_{mn}(z^n \mid z^m)`:
    :math:`\mathcal{L}_{red} = \mathrm{mean}_{m<n} \hat{I}(z^m; z^n)` trains the encoders
    (and the base) with :math:`q` frozen, while ``mrdib_club_fit`` (the Gaussian negative
    log-likelihood of :math:`q_{mn}` on detached codes, unweighted: Adam is invariant to its
    scale) trains only :math:`q`. One modality: no pair, the part is 0.

    **(4) Synergistic information.** The base's fused representation must rank the pair
    better than the best single modality does:

    .. math::
        \mathcal{L}_{syn} = \mathrm{BPR}\big(\Delta^{f}, \max_m \mathrm{sg}(\Delta^m)\big)
        = \mathrm{softplus}\big(\max_m \mathrm{sg}(\Delta^m) - \Delta^f\big), \quad
        \Delta^f = e_u^\top (e_{i^+} - e_{i^-}), \;
        \Delta^m = e_u^\top (\mu^m_{i^+} - \mu^m_{i^-})

    i.e. the fusion's margin beyond the unimodal ones. *Choices*: the unimodal margins are
    detached (the target is not to lower them, which would undo term 2) and use the posterior
    means (a point estimate, as at evaluation; noise would only inflate the max).

    **Loss.** The base's own parts plus ``mrdib_kl`` (:math:`\beta_{kl}\mathcal{L}_{kl}`),
    ``mrdib_unique``, ``mrdib_redundant`` with ``mrdib_club_fit``, ``mrdib_synergy``, each
    already weighted; a switched-off objective's part is absent and computed not at all.
    The trainer runs one forward pass per step; the base's loss and the plug-in's terms both
    read it (:meth:`loss` gets it as ``out``).

    The plug-in's parameters are created after the base model is built, so the base's
    initialisation is the same with or without it; :meth:`reset_parameters` resets only them.

    Args:
        base: the model to wrap; its :class:`Embeddings` must carry ``modalities``.
        kl, unique, redundant, synergy: switch each objective on or off.
        kl_weight, unique_weight, redundant_weight, synergy_weight: their weights (>= 0).
        club_hidden: hidden width of the CLUB networks :math:`q_{mn}`.
    """

    uses_modalities = True
    exposes_modalities = True

    def __init__(
        self,
        base: Recommender,
        kl: bool = True,
        kl_weight: float = 1e-3,
        unique: bool = True,
        unique_weight: float = 0.1,
        redundant: bool = True,
        redundant_weight: float = 0.01,
        synergy: bool = True,
        synergy_weight: float = 0.1,
        club_hidden: int = 64,
    ) -> None:
        torch.nn.Module.__init__(self)  # Recommender.__init__ reads a graph; the base has it
        if not isinstance(base, Recommender) or not base.exposes_modalities:
            raise ValueError(
                f"MRdIB wraps a model that exposes per-modality item representations "
                f"(Embeddings.modalities); {type(base).__name__} does not"
            )
        switches = {"kl": kl, "unique": unique, "redundant": redundant, "synergy": synergy}
        weights = {
            "kl": kl_weight,
            "unique": unique_weight,
            "redundant": redundant_weight,
            "synergy": synergy_weight,
        }
        _check_arguments(switches, weights, club_hidden)
        self.switches = switches
        self.weights = {k: float(v) for k, v in weights.items()}
        self.num_users, self.num_items = base.num_users, base.num_items
        self._eval_embeddings = None
        self.base = base
        self.phase_loss_parts = base.phase_loss_parts

        probe = self._probe()
        self.modalities = list(probe.modalities)
        dim = probe.user.size(1)
        self.encoders = torch.nn.ModuleDict(
            {m: VariationalEncoder(dim, dim) for m in self.modalities}
        )
        self.pairs = [
            (m, n) for j, m in enumerate(self.modalities) for n in self.modalities[j + 1 :]
        ]
        if redundant and not self.pairs:  # documented, but a switched-on term doing nothing
            log.warning(
                "MRdIB: one modality (%s): the redundant term has no pair of modalities and is "
                "0; mrdib_redundant false leaves it out",
                self.modalities[0],
            )
        for name in OBJECTIVES:
            if switches[name] and self.weights[name] == 0:
                log.warning(
                    "MRdIB: mrdib_%s_weight is 0: the %s term is computed and logged but does "
                    "not train; mrdib_%s false leaves it out",
                    name,
                    name,
                    name,
                )
        if redundant:
            self.club = torch.nn.ModuleDict(
                {self._pair_key(m, n): CLUB(dim, dim, club_hidden) for m, n in self.pairs}
            )

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> None:
        """Check the ``mrdib_*`` options of a merged configuration before any data or model is
        built (the command line, every point of a grid, every seed): the constructor's checks,
        with the constructor's defaults for keys the configuration lacks."""
        defaults = {
            k: p.default
            for k, p in inspect.signature(cls.__init__).parameters.items()
            if k not in ("self", "base")
        }
        args = {k: config.get(f"mrdib_{k}", v) for k, v in defaults.items()}
        _check_arguments(
            {k: args[k] for k in OBJECTIVES},
            {k: args[f"{k}_weight"] for k in OBJECTIVES},
            args["club_hidden"],
        )

    @staticmethod
    def _pair_key(m: str, n: str) -> str:
        return f"{m}__{n}"

    @torch.no_grad()
    def _probe(self) -> Embeddings:
        """One evaluation pass of the base (no randomness): the modalities and their width."""
        was_training = self.base.training
        # A model's eval pass may fill buffers (DiffMM's generated graphs): probing leaves none
        buffers = {name: b.clone() for name, b in self.base.named_buffers()}
        self.base.eval()
        out = self.base()
        self.base.train(was_training)
        for name, value in buffers.items():
            module, _, attr = name.rpartition(".")
            setattr(self.base.get_submodule(module), attr, value)
        name = type(self.base).__name__
        if not out.modalities:
            raise ValueError(f"MRdIB: {name}.forward() returned no modality")
        expected = (self.num_items, out.user.size(1))
        bad = {m: list(x.shape) for m, x in out.modalities.items() if tuple(x.shape) != expected}
        if bad:
            raise ValueError(
                f"MRdIB: {name}.forward() must give modalities of [num_items, d] = "
                f"{list(expected)} per modality (d of the user embeddings), got {bad}"
            )
        return out

    def reset_parameters(self) -> None:
        """Re-initialise the plug-in's own parameters (never the base's)."""
        for module in [*self.encoders.values(), *getattr(self, "club", {}).values()]:
            module.reset_parameters()

    def on_train_epoch_start(self) -> None:
        self.base.on_train_epoch_start()

    def phase_parameters(self) -> list[torch.nn.Parameter]:
        return self.base.phase_parameters()

    def phase_optimizer(self) -> torch.optim.Optimizer | None:
        return self.base.phase_optimizer()

    def train_phase(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        return self.base.train_phase(epoch, optimizer)

    def forward(self) -> Embeddings:
        return self.base()

    @torch.no_grad()
    def full_scores(self, users: Tensor) -> Tensor:
        return self.base.full_scores(users)

    @torch.no_grad()
    def item_representations(self) -> dict[str, Tensor]:
        """The base's parts plus ``mrdib_<m>``: each modality's compressed code (its mean)."""
        out = self.base.item_representations()
        was_training = self.training
        self.eval()
        modalities = self.base().modalities
        for m in self.modalities:
            out[f"mrdib_{m}"] = self.encoders[m](modalities[m])[1].detach().cpu()
        self.train(was_training)
        return out

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        parts = dict(self.base.loss(batch, out))
        if set(out.modalities) != set(self.modalities):
            raise ValueError(
                f"MRdIB was built for modalities {self.modalities}, the base model now gives "
                f"{list(out.modalities)}"
            )
        clash = sorted(k for k in parts if k.startswith("mrdib_"))
        if clash:
            raise ValueError(f"the base model's loss parts {clash} clash with MRdIB's names")

        if not any(self.switches.values()):
            return parts
        # Codes of the batch's distinct items; one noise draw per item and step.
        items, rows = torch.unique(torch.cat([batch.pos_item, batch.neg_item]), return_inverse=True)
        pos, neg = rows[: batch.pos_item.numel()], rows[batch.pos_item.numel() :]
        codes, means, log_vars = {}, {}, {}
        for m in self.modalities:
            codes[m], means[m], log_vars[m] = self.encoders[m](out.modalities[m][items])
        users = out.user_rows(batch.user)
        w, on = self.weights, self.switches

        if on["kl"]:
            kl = sum(kl_to_standard_normal(means[m], log_vars[m]) for m in self.modalities)
            parts["mrdib_kl"] = w["kl"] * kl / len(self.modalities)
        if on["unique"]:
            unique = sum(
                bpr_loss((users * codes[m][pos]).sum(-1), (users * codes[m][neg]).sum(-1))
                for m in self.modalities
            )
            parts["mrdib_unique"] = w["unique"] * unique / len(self.modalities)
        if on["redundant"]:
            bound = fit = users.new_zeros(())
            for m, n in self.pairs:
                pair_bound, pair_fit = self.club[self._pair_key(m, n)](codes[m], codes[n])
                bound, fit = bound + pair_bound, fit + pair_fit
            num_pairs = max(len(self.pairs), 1)
            parts["mrdib_redundant"] = w["redundant"] * bound / num_pairs
            parts["mrdib_club_fit"] = fit / num_pairs
        if on["synergy"]:
            fused = _margin(users, out.item, batch.pos_item, batch.neg_item)
            with torch.no_grad():
                best = torch.stack([_margin(users, means[m], pos, neg) for m in self.modalities])
            parts["mrdib_synergy"] = w["synergy"] * bpr_loss(fused, best.amax(0))
        return parts
