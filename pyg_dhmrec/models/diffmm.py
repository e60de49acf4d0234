"""DiffMM (Jiang et al., ACM MM 2024, arXiv 2406.11781): multi-modal diffusion model for
recommendation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import (
    csr_row_positions,
    normalized_adjacency,
    symmetric_normalize,
    to_csr,
)
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import (
    MAX_DIFFUSION_STEPS,
    MAX_LAYERS,
    MAX_WIDTH,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_int_list,
    check_nonnegative,
    check_positive,
)
from pyg_dhmrec.nn import (
    DenoisingMLP,
    FrozenSparse,
    GaussianDiffusion,
    LightPropagation,
    bpr_loss,
    info_nce_all_negatives,
    symmetric_spmm,
)

FEATURE_TRANSFORMS = ("linear", "leaky_relu")
CONTRAST_ANCHORS = ("modality", "main")


@dataclass
class DiffMMEmbeddings(Embeddings):
    """DiffMM's pass: the final embeddings, each modality's item part of Eq. 20 and the
    contrastive views :math:`\\hat{z}^m` (Eq. 17) of users and items."""

    user_views: dict[str, Tensor] = field(default_factory=dict)
    item_views: dict[str, Tensor] = field(default_factory=dict)


class DiffMM(Recommender):
    r"""DiffMM: per-modality graph diffusion generating modality-aware user-item graphs,
    cross-modal contrastive augmentation over them, and multi-modal graph aggregation.

    Notation: :math:`\tilde{A}` the normalised train graph, :math:`E_u, E_i` the ID
    embeddings, :math:`F^m` the raw features of modality :math:`m`. Equation numbers are those
    of arXiv 2406.11781v1 as public summaries of the paper transcribe them (its full text was
    not at hand when this was written); the reference code settled the details they leave
    open.

    **Diffusion** (Eqs. 1-13, :class:`~pyg_dhmrec.nn.GaussianDiffusion`): a user's train
    interaction row :math:`\alpha_0 = a_u \in \{0,1\}^{|I|}` is noised in closed form,
    :math:`\alpha_t = \sqrt{\bar\gamma_t}\alpha_0 + \sqrt{1-\bar\gamma_t}\epsilon`, with the
    linear schedule of Eq. 3; one :class:`~pyg_dhmrec.nn.DenoisingMLP` per modality predicts
    :math:`\hat\alpha_0 = f^m_\theta(\alpha_t, t)`.

    **Diffusion objective** (Eq. 24): :math:`\mathcal{L}^m_{dm} = \mathcal{L}_{elbo} +
    \lambda_0 \mathcal{L}^m_{msi}`, with the ELBO of Eqs. 11-13 (``snr_weighting``) and the
    modality-aware signal injection (Eq. 14)
    :math:`\mathcal{L}^m_{msi} = \lVert \hat\alpha_0 e^m - \alpha_0 E_i \rVert^2`, which pulls
    the user's modality view of its generated row (:math:`e^m` of Eq. 15) to its collaborative
    view of the observed row. Both squared norms are means over their coordinates (items,
    embedding dimensions), as in the reference code, so that the published :math:`\lambda_0`
    keeps its balance. :math:`e^m` and :math:`E_i` are read detached: the diffusion phase trains
    the denoisers only. It is the model's phase (:meth:`train_phase`): every epoch, before the
    BPR batches, one pass over all users in random chunks of ``diffusion_batch_size`` rows,
    with its own Adam optimiser (:meth:`phase_optimizer`); all modalities share each chunk.

    **Modality-aware graphs** (the inference of the diffusion): every epoch
    (:meth:`on_train_epoch_start`, after the phase), each user's row is noised to step
    :math:`T'` (``sampling_steps``; :math:`T' = 0`: not noised) and denoised by the :math:`T`
    deterministic reverse steps; its top ``generated_k`` items become the user's edges of
    :math:`A^m` (the top-k over all items, train items included, as in the reference code).
    Users are processed in chunks of ``diffusion_batch_size`` rows, so no users x items matrix
    exists; :math:`A^m` is kept as the ``[M, U, k]`` persistent buffer ``generated_items`` (in
    checkpoints and in the best epoch's state; a new model's, from its initial denoisers, is
    generated on first use) and as sparse matrices. Eq. 16 normalises it as
    :math:`\tilde{A}^m_{ui} = 1/\sqrt{|N^m_u||N^m_i|}`. In training each epoch keeps every
    generated edge with probability ``generated_keep_rate`` and scales the kept ones by its
    inverse (the reference's ``keepRate``); evaluation uses the whole graph.

    **Cross-modal contrastive augmentation** (Eqs. 15-19):
    :math:`e^m = \mathrm{Norm}(\mathrm{Trans}(F^m))` (Eq. 15; ``feature_transform``:
    ``linear`` :math:`F^m W + b`, or ``leaky_relu`` :math:`\mathrm{LeakyReLU}_{0.2}(F^m W)`, the
    reference's ``trans`` 1 and 0); :math:`z^m = \tilde{A}^m [E_u; e^m]` (Eq. 16: users gather
    their generated items' modality features, items their generated users' ID embeddings);
    :math:`\hat{z}^m = \sum_{l=0}^{L} \tilde{A}^l z^m` (Eq. 17). InfoNCE on cosine similarity
    with every user (item) as a negative (:func:`~pyg_dhmrec.nn.info_nce_all_negatives`), over
    the batch's users and positive items: ``contrast_anchor="modality"`` (Eq. 18) sums it over
    the ordered pairs :math:`m_1 \ne m_2` of modalities (anchor :math:`\hat{z}^{m_1}`);
    ``"main"`` (Eq. 19) over the modalities with the final embedding :math:`\tilde{H}` as anchor.

    **Multi-modal graph aggregation** (Eqs. 20-23): per modality
    :math:`X^m = \tilde{A}[E_u; e^m]`,
    :math:`\tilde{Z}^m = X^m + \tilde{A}[X^m_u; E_i] + \lambda_{adj}\tilde{A}^m[E_u; E_i]`
    (Eq. 20, ``generated_graph_weight`` :math:`\lambda_{adj}`); :math:`h = \sum_m \kappa_m
    \tilde{Z}^m` with :math:`\kappa = \mathrm{softmax}(w)` learned (Eq. 21, :math:`w` starts
    uniform); :math:`H_{l+1} = \tilde{A} H_l`, :math:`H_0 = h` (Eq. 22);
    :math:`\tilde{H} = \sum_{l=0}^{L} H_l + \omega\, \mathrm{Norm}(H_0)` (Eq. 23,
    ``residual_weight`` :math:`\omega`); score :math:`\tilde{h}_u^\top \tilde{h}_i`.

    **Loss** (Eqs. 25-26): ``bpr`` (mean over the batch), ``cl`` :math:`\lambda_1
    \mathcal{L}_{cl}` and ``reg`` :math:`\lambda_2 (\lVert E_u \rVert^2 + \lVert E_i \rVert^2)`
    over the whole ID tables (the reference regularises these, not every parameter).
    :attr:`Embeddings.modalities`: each modality's item part of :math:`\tilde{Z}^m` (Eq. 20).

    Any number of modalities >= 1 (one modality: :math:`\kappa = 1`, and Eq. 18 has no pair,
    so ``cl`` is 0 with the ``modality`` anchor).

    Where the reference code (github.com/HKUDS/DiffMM) differs and what we follow:

    * it selects the best epoch on **test** recall; here the trainer selects on valid;
    * it reads a custom pickle format; this model runs on any MMRec-format folder;
    * it builds a dense users x items matrix of all rows (3.6 GB on Clothing); here rows are
      built per chunk from the sparse train graph;
    * its graphs (train and generated) carry self-loops, :math:`D^{-1/2}(A + I)D^{-1/2}`;
      we follow the paper's normalisation without them;
    * it overwrites :math:`\beta_1` with ``1e-4`` (Eq. 3 gives :math:`s \gamma_{\min}`);
    * its MSI term uses :math:`\mathrm{Trans}(F^m)` before the norm of Eq. 15; we use
      :math:`e^m` of Eq. 15;
    * Eq. 18 over unordered pairs :math:`m_1 < m_2` only (one anchor per pair); we sum the
      ordered pairs of the equation;
    * it drops the entries of the generated matrix one by one (the two directions of an edge
      independently) and also evaluates on the dropped graph; we drop edges (both directions
      together) in training only.

    Args:
        data: graph with train edges and item features.
        embedding_dim: size ``d``.
        num_layers: :math:`L` of Eqs. 17 and 22 (the reference's ``gnn_layer``).
        feature_transform: ``linear`` or ``leaky_relu`` (Trans of Eq. 15).
        generated_graph_weight: :math:`\lambda_{adj}` of Eq. 20 (``ris_adj_lambda``).
        residual_weight: :math:`\omega` of Eq. 23 (``ris_lambda``).
        cl_weight: :math:`\lambda_1` (``ssl_reg``).
        temperature: :math:`\tau` of Eqs. 18-19.
        contrast_anchor: ``modality`` (Eq. 18) or ``main`` (Eq. 19) (``cl_method`` 0 / 1).
        reg_weight: :math:`\lambda_2` (``reg``).
        diffusion_steps: :math:`T`.
        noise_scale, noise_min, noise_max: :math:`s, \gamma_{\min}, \gamma_{\max}` (Eq. 3).
        sampling_steps: :math:`T'` of the inference.
        sampling_noise: draw the reverse steps' posterior noise at inference.
        snr_weighting: the ELBO's per-step weights (else a uniform MSE).
        denoiser_dims: hidden sizes of the denoising MLPs (``dims``), ints in [1, 65536].
        time_embedding_dim: size of their step embedding (``d_emb_size``).
        denoiser_dropout: dropout on their input rows in training.
        msi_weight: :math:`\lambda_0` (``e_loss``).
        generated_k: edges per user in :math:`A^m` (``rebuild_k``).
        generated_keep_rate: fraction of generated edges kept per training epoch
            (``keepRate``).
        diffusion_batch_size: user rows per chunk of the diffusion phase and of the
            generation.
        diffusion_learning_rate: Adam step size of the diffusion phase.
    """

    loss_parts = ("bpr", "cl", "reg")
    phase_loss_parts = ("elbo", "msi")
    uses_modalities = True
    exposes_modalities = True

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_layers: int = 1,
        feature_transform: str = "leaky_relu",
        generated_graph_weight: float = 0.2,
        residual_weight: float = 0.5,
        cl_weight: float = 1e-2,
        temperature: float = 0.5,
        contrast_anchor: str = "modality",
        reg_weight: float = 1e-5,
        diffusion_steps: int = 5,
        noise_scale: float = 0.1,
        noise_min: float = 1e-4,
        noise_max: float = 0.02,
        sampling_steps: int = 0,
        sampling_noise: bool = False,
        snr_weighting: bool = True,
        denoiser_dims: Sequence[int] = (1000,),
        time_embedding_dim: int = 10,
        denoiser_dropout: float = 0.5,
        msi_weight: float = 0.1,
        generated_k: int = 1,
        generated_keep_rate: float = 0.5,
        diffusion_batch_size: int = 1024,
        diffusion_learning_rate: float = 1e-3,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        check_int("num_layers", num_layers, 0, MAX_LAYERS)
        check_choice("feature_transform", feature_transform, FEATURE_TRANSFORMS)
        check_choice("contrast_anchor", contrast_anchor, CONTRAST_ANCHORS)
        for name, value in (
            ("generated_graph_weight", generated_graph_weight),
            ("residual_weight", residual_weight),
            ("cl_weight", cl_weight),
            ("reg_weight", reg_weight),
            ("msi_weight", msi_weight),
        ):
            check_nonnegative(name, value)
        check_positive("temperature", temperature)
        check_int("diffusion_steps", diffusion_steps, 1, MAX_DIFFUSION_STEPS)
        for name, value in (
            ("noise_scale", noise_scale),
            ("noise_min", noise_min),
            ("noise_max", noise_max),
        ):
            check_positive(name, value)
        check_fraction("denoiser_dropout", denoiser_dropout, include_1=False)
        if not 1 <= check_int("generated_k", generated_k, 1) <= self.num_items:
            raise ValueError(
                f"generated_k must be in [1, {self.num_items}] (the items), got {generated_k}"
            )
        check_fraction("generated_keep_rate", generated_keep_rate, include_0=False)
        if not 0 <= check_int("sampling_steps", sampling_steps, 0) <= diffusion_steps:
            raise ValueError(
                f"sampling_steps must be in [0, diffusion_steps = {diffusion_steps}], got "
                f"{sampling_steps}"
            )
        check_bool("sampling_noise", sampling_noise)
        check_bool("snr_weighting", snr_weighting)
        check_int("diffusion_batch_size", diffusion_batch_size, 1)
        check_int("time_embedding_dim", time_embedding_dim, 1, MAX_WIDTH)
        # [2.5] or [true] would run as [2] or [1]: whole sizes only
        denoiser_dims = check_int_list("denoiser_dims", denoiser_dims, 1, MAX_WIDTH)
        check_positive("diffusion_learning_rate", diffusion_learning_rate)
        self.feature_transform = feature_transform
        self.generated_graph_weight, self.residual_weight = generated_graph_weight, residual_weight
        self.cl_weight, self.temperature = cl_weight, temperature
        self.contrast_anchor, self.reg_weight = contrast_anchor, reg_weight
        self.sampling_steps, self.sampling_noise = sampling_steps, sampling_noise
        self.msi_weight, self.generated_k = msi_weight, generated_k
        self.generated_keep_rate = generated_keep_rate
        self.diffusion_batch_size = diffusion_batch_size
        self.diffusion_learning_rate = diffusion_learning_rate
        features = self.register_item_features(data)

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.transforms = torch.nn.ModuleDict(
            {
                m: torch.nn.Linear(x.size(1), embedding_dim, bias=feature_transform == "linear")
                for m, x in features.items()
            }
        )
        # Eq. 21's kappa = softmax(w); one modality needs no weight (kappa = 1)
        self.modality_logits = (
            torch.nn.Parameter(torch.empty(len(self.modalities)))
            if len(self.modalities) > 1
            else None
        )

        train = self.train_edge_index(data)
        self.train_graph = FrozenSparse(
            normalized_adjacency(train, self.num_users, self.num_items), symmetric=True
        )
        self.propagation = LightPropagation(num_layers, mode="sum", symmetric=True)
        # the train rows as CSR indices: dense rows are built per chunk of users
        order = torch.argsort(train[0] * self.num_items + train[1])
        users, items = train[0, order], train[1, order]
        crow = torch.zeros(self.num_users + 1, dtype=torch.long)
        crow[1:] = torch.cumsum(torch.bincount(users, minlength=self.num_users), 0)
        self.register_buffer("row_pointer", crow, persistent=False)
        self.register_buffer("row_items", items.long(), persistent=False)

        self.diffusion = GaussianDiffusion(
            diffusion_steps, noise_scale, noise_min, noise_max, snr_weighting=snr_weighting
        )
        self.denoisers = torch.nn.ModuleDict(
            {
                m: DenoisingMLP(self.num_items, denoiser_dims, time_embedding_dim, denoiser_dropout)
                for m in self.modalities
            }
        )
        # A^m as each user's top-k items; -1: not generated yet (see _ensure_generated)
        self.register_buffer(
            "generated_items",
            torch.full((len(self.modalities), self.num_users, generated_k), -1, dtype=torch.long),
        )
        self._graphs: dict[str, tuple[Tensor, Tensor]] | None = None  # full (edges, weights)
        self._train_graphs: dict[str, Tensor] | None = None  # this epoch's kept edges
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget_graphs())
        # a state read before any use holds the graphs of the current denoisers too
        self.register_state_dict_pre_hook(lambda module, *args: module._ensure_generated())
        self.reset_parameters()

    # ----- parameters and state -----
    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for transform in self.transforms.values():
            if self.feature_transform == "linear":
                transform.reset_parameters()  # PyTorch's default Linear initialisation
            else:
                torch.nn.init.xavier_uniform_(transform.weight)
        if self.modality_logits is not None:
            torch.nn.init.constant_(self.modality_logits, 1.0 / len(self.modalities))
        for denoiser in self.denoisers.values():
            denoiser.reset_parameters()
        self.generated_items.fill_(-1)
        self._forget_graphs()

    def _forget_graphs(self) -> None:
        self._graphs, self._train_graphs = None, None

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DiffMM:
        self._forget_graphs()  # rebuilt on the new device from generated_items
        return super()._apply(fn, *args, **kwargs)

    def phase_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.denoisers.parameters())

    def phase_optimizer(self) -> torch.optim.Optimizer:
        # foreach, not pyg_dhmrec.optim.adam's fused kernel: with it a killed and resumed run
        # drifted from the uninterrupted one at 1e-6 (tests/test_reliable_runs.py), cause open
        return torch.optim.Adam(
            self.denoisers.parameters(), lr=self.diffusion_learning_rate, foreach=True
        )

    # ----- diffusion -----
    def interaction_rows(self, users: Tensor) -> Tensor:
        """The dense ``[len(users), I]`` 0/1 train rows :math:`\\alpha_0` of ``users``."""
        rows, position = csr_row_positions(self.row_pointer, users)
        cols = self.row_items[position]
        dtype = self.item_embedding.weight.dtype  # float64 after .double()
        x = torch.zeros(len(users), self.num_items, device=users.device, dtype=dtype)
        x[rows, cols] = 1.0
        return x

    def modality_features(self) -> dict[str, Tensor]:
        r""":math:`e^m = \mathrm{Norm}(\mathrm{Trans}(F^m))` of every item (Eq. 15)."""
        out = {}
        for m in self.modalities:
            x = self.transforms[m](self.feature(m))
            if self.feature_transform == "leaky_relu":
                x = F.leaky_relu(x, 0.2)
            out[m] = F.normalize(x, dim=-1)
        return out

    def diffusion_losses(self, x0: Tensor, features: dict[str, Tensor]) -> dict[str, Tensor]:
        r"""Per modality, the batch means of :math:`\mathcal{L}_{elbo}` and
        :math:`\lambda_0 \mathcal{L}^m_{msi}` (Eqs. 13-14) on the rows ``x0``; ``features``:
        the (detached) :math:`e^m`. Draws each modality's steps and noise in turn."""
        collaborative = x0 @ self.item_embedding.weight.detach()  # alpha_0 E_i
        out = {}
        for m in self.modalities:
            t = self.diffusion.sample_steps(x0.size(0), x0.device)
            xt = self.diffusion.q_sample(x0, t)
            x0_hat = self.denoisers[m](xt, t)
            elbo = self.diffusion.elbo(x0, x0_hat, t).mean()
            msi = (x0_hat @ features[m] - collaborative).pow(2).mean(-1).mean()
            out[m] = torch.stack([elbo, self.msi_weight * msi])
        return out

    def train_phase(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One pass of the diffusion objective (Eq. 24) over all users in random chunks."""
        self.denoisers.train()
        device = self.row_pointer.device
        with torch.no_grad():
            features = self.modality_features()
        totals = torch.zeros(2, device=device)
        chunks = torch.randperm(self.num_users, device=device).split(self.diffusion_batch_size)
        for users in chunks:
            losses = self.diffusion_losses(self.interaction_rows(users), features)
            total = torch.stack(list(losses.values())).sum(0)  # [elbo, msi] over modalities
            optimizer.zero_grad(set_to_none=True)
            total.sum().backward()
            optimizer.step()
            totals += total.detach()
        elbo, msi = (totals / len(chunks)).tolist()
        return {"elbo": elbo, "msi": msi}

    @torch.no_grad()
    def generate_graphs(self, chunk_size: int | None = None) -> Tensor:
        """``[M, U, k]``: each user's top ``generated_k`` items of each modality's denoised
        row (the diffusion's inference), users taken ``chunk_size`` rows at a time (default
        ``diffusion_batch_size``)."""
        chunk_size = chunk_size or self.diffusion_batch_size
        device = self.row_pointer.device
        modes = {m: d.training for m, d in self.denoisers.items()}
        self.denoisers.eval()  # no input dropout at inference
        out = torch.empty(
            len(self.modalities), self.num_users, self.generated_k, dtype=torch.long, device=device
        )
        for users in torch.arange(self.num_users, device=device).split(chunk_size):
            x0 = self.interaction_rows(users)
            for k, m in enumerate(self.modalities):
                denoised = self.diffusion.sample(
                    self.denoisers[m], x0, self.sampling_steps, self.sampling_noise
                )
                out[k, users] = denoised.topk(self.generated_k, dim=-1).indices
        for m, mode in modes.items():
            self.denoisers[m].train(mode)
        return out

    def _ensure_generated(self) -> None:
        """Generate :math:`A^m` from the current denoisers if it never was (a new model)."""
        if bool((self.generated_items < 0).any()):
            self.generated_items.copy_(self.generate_graphs())

    def on_train_epoch_start(self) -> None:
        """Rebuild :math:`A^m` from the denoisers (trained by this epoch's phase) and draw the
        epoch's kept edges."""
        self.generated_items.copy_(self.generate_graphs())
        self._forget_graphs()
        self._draw_train_graphs()

    # ----- generated graphs -----
    def _full_graphs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per modality, the edges of :math:`A^m` in both directions on the ``U + I`` nodes
        and their weights :math:`1/\\sqrt{|N^m_u||N^m_i|}` (Eq. 16)."""
        if self._graphs is None:
            self._ensure_generated()
            num_nodes = self.num_users + self.num_items
            users = torch.arange(self.num_users, device=self.generated_items.device)
            users = users.repeat_interleave(self.generated_k)
            self._graphs = {}
            for k, m in enumerate(self.modalities):
                items = self.generated_items[k].reshape(-1) + self.num_users
                edges = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
                self._graphs[m] = symmetric_normalize(edges, num_nodes)
        return self._graphs

    def _draw_train_graphs(self) -> None:
        """This epoch's generated graphs: each edge kept with probability
        ``generated_keep_rate``, both directions together, kept weights scaled by its inverse."""
        num_nodes = self.num_users + self.num_items
        self._train_graphs = {}
        for m, (edges, weight) in self._full_graphs().items():
            if self.generated_keep_rate < 1:
                half = edges.size(1) // 2
                keep = torch.rand(half, device=edges.device) < self.generated_keep_rate
                keep = torch.cat([keep, keep])
                edges, weight = edges[:, keep], weight[keep] / self.generated_keep_rate
            self._train_graphs[m] = to_csr(edges, weight, num_nodes, num_nodes)

    def generated_graph(self, modality: str) -> Tensor:
        r""":math:`\tilde{A}^m` as ``[U + I, U + I]`` CSR: this epoch's kept edges in training,
        the whole graph in evaluation."""
        if self.training:
            if self._train_graphs is None:
                self._draw_train_graphs()
            return self._train_graphs[modality]
        edges, weight = self._full_graphs()[modality]
        num_nodes = self.num_users + self.num_items
        return to_csr(edges, weight, num_nodes, num_nodes)

    # ----- forward and loss -----
    def forward(self) -> DiffMMEmbeddings:
        ids = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users = self.user_embedding.weight
        features = self.modality_features()
        # built in float32; a no-op then, float64 after .double()
        graphs = {m: self.generated_graph(m).to(ids.dtype) for m in self.modalities}
        parts = {}
        for m in self.modalities:  # Eq. 20
            first = self.train_graph(torch.cat([users, features[m]]))
            second = self.train_graph(
                torch.cat([first[: self.num_users], self.item_embedding.weight])
            )
            generated = symmetric_spmm(graphs[m], ids)
            parts[m] = first + second + self.generated_graph_weight * generated
        if self.modality_logits is None:
            h = parts[self.modalities[0]]
        else:
            kappa = torch.softmax(self.modality_logits, dim=0)  # Eq. 21
            h = sum(kappa[k] * parts[m] for k, m in enumerate(self.modalities))
        final = self.propagation(h, self.train_graph) + self.residual_weight * F.normalize(
            h, dim=-1
        )
        out = DiffMMEmbeddings(
            final[: self.num_users],
            final[self.num_users :],
            {m: z[self.num_users :] for m, z in parts.items()},
        )
        for m in self.modalities:  # Eqs. 16-17, the contrastive views
            view = self.propagation(
                symmetric_spmm(graphs[m], torch.cat([users, features[m]])), self.train_graph
            )
            out.user_views[m], out.item_views[m] = view[: self.num_users], view[self.num_users :]
        return out

    def contrastive_loss(self, out: DiffMMEmbeddings, batch: BPRBatch) -> Tensor:
        """:math:`\\mathcal{L}_{cl}` of Eq. 18 (``modality``) or Eq. 19 (``main``) on the
        batch's users and positive items."""
        pairs = []
        for m in self.modalities:
            if self.contrast_anchor == "main":
                pairs.append(((out.user, out.item), m))
            else:
                pairs += [
                    ((out.user_views[a], out.item_views[a]), m) for a in self.modalities if a != m
                ]
        total = out.user.new_zeros(())
        for (anchor_users, anchor_items), m in pairs:
            total = total + info_nce_all_negatives(
                anchor_users, out.user_views[m], batch.user, self.temperature
            )
            total = total + info_nce_all_negatives(
                anchor_items, out.item_views[m], batch.pos_item, self.temperature
            )
        return total

    def loss(self, batch: BPRBatch, out: DiffMMEmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        penalty = self.user_embedding.weight.pow(2).sum() + self.item_embedding.weight.pow(2).sum()
        return {
            "bpr": bpr_loss(pos, neg),
            "cl": self.cl_weight * self.contrastive_loss(out, batch),
            "reg": self.reg_weight * penalty,
        }
