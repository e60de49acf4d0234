"""Our models against MMRec's own code with the same weights, graph and batch.

For each model, a patched MMRec copy (``mmrec_side_by_side.prepare``: the same dataset files,
our configuration point) builds its model on ``--dataset`` in a child process and saves its
initial weights, its first training batch, the loss of that batch with every parameter's
gradient, the full-ranking scores of ``--users`` users (``full_sort_predict``, eval mode) and
any item-item graph it built from the features. This library then builds the same model on the
same folder, copies MMRec's weights into it (table ``MODELS``: MMRec's parameter name -> ours),
and computes the same things. Printed per model: whether both read the same train
interactions, how many rows of each kNN item graph differ, the largest score difference (and
its scale), the two losses, and per parameter the largest gradient difference over the
gradient's largest entry, beside the same measure for our float32 step against our float64 one
(the rounding a gradient has in float32; a gradient that sums entries of opposite sign has
much more than 1e-7). A gradient differs when its difference exceeds both ``--tolerance`` and
four times that rounding. Where a kNN graph differs (ties between neighbours, chosen
differently), the comparison is repeated with MMRec's graph in our model, which separates the
graph from the rest of the computation.

Randomness inside a step (dropout of BM3's target views, FREEDOM's and LayerGCN's edge
sampling, LGMRec's dependency dropout and relaxation noise) draws differently in the two
libraries, so it is switched off on both sides (``mmrec_overrides``, ``our_overrides``,
``noiseless``); every other setting is the configuration point of ``mmrec_side_by_side.py``.
FREEDOM runs with ``finetune_features: true``, as its code trains the feature table; GRCN with
``num_routing: 0`` and ``confidence_activation: relu``, the code's computation (GRCN's
docstring)::

    python benchmarks/mmrec_transplant.py --mmrec ../MMRec --data-root ../shared/data \\
        --models BM3 LightGCN
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmrec_side_by_side import prepare  # noqa: E402

from pyg_dhmrec.api import make_config  # noqa: E402
from pyg_dhmrec.data.sampler import BPRBatch  # noqa: E402
from pyg_dhmrec.loader import load_data_and_model  # noqa: E402
from pyg_dhmrec.nn import FrozenSparse  # noqa: E402

#: run inside MMRec's ``src`` (its own module names: ``utils``, ``models``, ``common``)
DRIVER = r"""
import json, sys
import torch
from utils.configurator import Config
from utils.dataloader import TrainDataLoader
from utils.dataset import RecDataset
from utils.utils import get_model, init_seed

name, dataset, out, overrides, num_users, graphs, noiseless = sys.argv[1:8]
if noiseless == "1":  # the relaxation's noise off: the softmax of logits / tau
    import torch.nn.functional as F
    F.gumbel_softmax = lambda logits, tau=1.0, hard=False, eps=1e-10, dim=-1: torch.softmax(
        logits / tau, dim=dim
    )
config = Config(name, dataset, {})
for key in config["hyper_parameters"]:  # quick_start's first grid point
    if isinstance(config[key], list):
        config[key] = config[key][0]
for key, value in json.loads(overrides).items():
    config[key] = value
init_seed(config["seed"])
train, _, _ = RecDataset(config).split()
str(train)  # sets inter_num, which the loader reads (quick_start logs it first)
loader = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
loader.pretrain_setup()
model = get_model(name)(config, loader).to(config["device"])
state = {k: v.detach().clone() for k, v in model.state_dict().items()}
model.train()
if hasattr(model, "pre_epoch_processing"):
    model.pre_epoch_processing()
batch = next(iter(loader))
loss = model.calculate_loss(batch)
loss = sum(loss) if isinstance(loss, tuple) else loss
loss.backward()
grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
model.eval()
users = torch.arange(min(int(num_users), model.n_users))
with torch.no_grad():
    scores = model.full_sort_predict([users])
edges = torch.tensor(train.df[[config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]].values)
torch.save(
    {"state": state, "batch": batch.cpu(), "loss": float(loss), "grads": grads,
     "users": users, "scores": scores.cpu(), "edges": edges,
     "graphs": {g: getattr(model, g).cpu() for g in json.loads(graphs)}},
    out,
)
"""


@dataclass
class ModelMap:
    """How one MMRec model's parameters and settings map to ours."""

    ours: str
    #: MMRec parameter name -> ours (a list: MMRec's is ours concatenated along the last
    #: dimension); ``{v}``/``{t}`` stand for MMRec's vision/text modality
    params: dict[str, str | list[str]]
    #: MMRec parameters without a counterpart -> why: each starts at zero or gets no gradient
    absent: dict[str, str] = field(default_factory=dict)
    #: settings that switch off a step's randomness: (MMRec keys, our keys)
    mmrec_overrides: dict[str, object] = field(default_factory=dict)
    our_overrides: dict[str, object] = field(default_factory=dict)
    #: our settings that state MMRec's configuration point (beyond our YAML's)
    our_point: dict[str, object] = field(default_factory=dict)
    #: MMRec parameters that are ours stacked along the first dimension (a list in ``params``)
    stacked: set[str] = field(default_factory=set)
    #: MMRec parameters stored transposed to ours (``[in, out]`` matrices)
    transposed: set[str] = field(default_factory=set)
    #: switch off relaxation noise: MMRec's ``F.gumbel_softmax`` and our
    #: ``relaxed_dependencies`` become the plain tempered softmax
    noiseless: bool = False
    #: frozen item-item graphs built from the features: (MMRec's attribute, our
    #: :class:`FrozenSparse` submodule), compared, then MMRec's swapped in where they differ
    item_graphs: list[tuple[str, str]] = field(default_factory=list)


MODELS: dict[str, ModelMap] = {
    "LightGCN": ModelMap(
        "lightgcn",
        {
            "embedding_dict.user_emb": "user_embedding.weight",
            "embedding_dict.item_emb": "item_embedding.weight",
        },
    ),
    "BM3": ModelMap(
        "bm3",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "predictor.weight": "predictor.weight",
            "predictor.bias": "predictor.bias",
            "image_embedding.weight": "features.{v}",
            "image_trs.weight": "projections.{v}.weight",
            "image_trs.bias": "projections.{v}.bias",
            "text_embedding.weight": "features.{t}",
            "text_trs.weight": "projections.{t}.weight",
            "text_trs.bias": "projections.{t}.bias",
        },
        mmrec_overrides={"dropout": 0.0},
        our_overrides={"dropout": 0.0},
    ),
    "MGCN": ModelMap(
        "mgcn",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "image_embedding.weight": "features.{v}",
            "image_trs.weight": "projections.{v}.weight",
            "image_trs.bias": "projections.{v}.bias",
            "text_embedding.weight": "features.{t}",
            "text_trs.weight": "projections.{t}.weight",
            "text_trs.bias": "projections.{t}.bias",
            "gate_v.0.weight": "gates.{v}.linear.weight",
            "gate_v.0.bias": "gates.{v}.linear.bias",
            "gate_t.0.weight": "gates.{t}.linear.weight",
            "gate_t.0.bias": "gates.{t}.linear.bias",
            "query_common.0.weight": "fusion.attention_proj.weight",
            "query_common.0.bias": "fusion.attention_proj.bias",
            "query_common.2.weight": "fusion.attention_query.weight",
            # our fusion's preference gates follow the dataset's modality order (image, then
            # the other): MMRec's vision, then text
            "gate_image_prefer.0.weight": "fusion.preference.0.weight",
            "gate_image_prefer.0.bias": "fusion.preference.0.bias",
            "gate_text_prefer.0.weight": "fusion.preference.1.weight",
            "gate_text_prefer.0.bias": "fusion.preference.1.bias",
        },
        item_graphs=[
            ("image_original_adj", "item_item.{v}"),
            ("text_original_adj", "item_item.{t}"),
        ],
    ),
    "FREEDOM": ModelMap(
        "freedom",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "image_embedding.weight": "features.{v}",
            "image_trs.weight": "projections.{v}.weight",
            "text_embedding.weight": "features.{t}",
            "text_trs.weight": "projections.{t}.weight",
        },
        absent={
            "image_trs.bias": "cancels in the BPR difference (no gradient)",
            "text_trs.bias": "cancels in the BPR difference (no gradient)",
        },
        mmrec_overrides={"dropout": 0.0},
        our_overrides={"edge_dropout": 0.0},
        our_point={"finetune_features": True},
        item_graphs=[("mm_adj", "item_item")],
    ),
    "LGMRec": ModelMap(
        "lgmrec",
        {
            "user_embedding.weight": "user_embedding.weight",
            "item_id_embedding.weight": "item_embedding.weight",
            "item_image_trs": "projections.{v}.weight",
            "v_hyper": "hyperedges.{v}",
            "item_text_trs": "projections.{t}.weight",
            "t_hyper": "hyperedges.{t}",
        },
        transposed={"item_image_trs", "v_hyper", "item_text_trs", "t_hyper"},
        noiseless=True,
        mmrec_overrides={"keep_rate": 1.0},
        our_overrides={"keep_rate": 1.0},
    ),
    "GRCN": ModelMap(
        "grcn",
        {
            "id_gcn.id_embedding": ["user_embedding.weight", "item_embedding.weight"],
            "model_specific_conf": "edge_weights.confidence",
            "v_gcn.preference": "prototypes.{v}",
            "v_gcn.MLP.weight": "projections.{v}.weight",
            "v_gcn.MLP.bias": "projections.{v}.bias",
            "t_gcn.preference": "prototypes.{t}",
            "t_gcn.MLP.weight": "projections.{t}.weight",
            "t_gcn.MLP.bias": "projections.{t}.bias",
        },
        stacked={"id_gcn.id_embedding"},
        # the code's computation: prototypes that routing does not move, relu'd raw confidence
        our_point={"num_routing": 0, "confidence_activation": "relu"},
    ),
    "LayerGCN": ModelMap(
        "layergcn",
        {"user_embeddings": "user_embedding.weight", "item_embeddings": "item_embedding.weight"},
        mmrec_overrides={"dropout": 0.0},
        our_overrides={"edge_dropout": 0.0},
    ),
    "VBPR": ModelMap(
        "vbpr",
        {
            "u_embedding": "user_embedding.weight",
            "i_embedding": "item_embedding.weight",
            "item_linear.weight": ["projections.{t}.weight", "projections.{v}.weight"],
        },
        absent={"item_linear.bias": "not in the paper; only the norm penalty moves it"},
    ),
}


def mmrec_side(src: Path, model: str, args: argparse.Namespace) -> dict:
    """Run the driver in MMRec's ``src``; its saved tensors."""
    (src / "_transplant_driver.py").write_text(DRIVER)
    out = Path(args.work) / f"{model}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    paths = [str(src.parent / "stubs"), str(src.parent / "scatter_shim")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    spec = MODELS[model]
    overrides = json.dumps(spec.mmrec_overrides)
    graphs = json.dumps([theirs for theirs, _ in spec.item_graphs])
    noiseless = "1" if spec.noiseless else "0"
    command = [args.python, "_transplant_driver.py", model, args.dataset, str(out), overrides]
    done = subprocess.run(
        [*command, str(args.users), graphs, noiseless],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])
        raise RuntimeError(f"MMRec {model} failed (exit {done.returncode}): {tail}")
    return torch.load(out, weights_only=False)


def modality_names(args: argparse.Namespace) -> dict[str, str]:
    """MMRec's ``v_feat``/``t_feat`` modality names, as ``prepare`` chose the files."""
    folder = Path(args.data_root) / args.dataset
    feats = sorted(p.name for p in folder.glob("*_feat.npy"))
    vision = "image_feat.npy" if "image_feat.npy" in feats else feats[0]
    text = next(f for f in (["text_feat.npy"] + feats) if f in feats and f != vision)
    return {"v": vision.removesuffix("_feat.npy"), "t": text.removesuffix("_feat.npy")}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest entry difference over the largest entry of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def item_graph_rows(ours: torch.Tensor, theirs: torch.Tensor) -> int:
    """Rows of two ``[I, I]`` item-item graphs that differ (an entry by more than 1e-6)."""
    diff = (ours.to_dense() - theirs.coalesce().to_dense()).abs()
    return int((diff.amax(1) > 1e-6).sum())


def compare(
    model: str, mmrec: dict, args: argparse.Namespace, their_graph: bool = False
) -> list[str]:
    """The comparison's lines; ``their_graph``: with MMRec's item-item graph in ours."""
    spec = MODELS[model]
    names = modality_names(args)
    settings = {**spec.our_point, **spec.our_overrides}
    config = make_config(
        spec.ours, args.dataset, data_root=args.data_root, device="cpu", **settings
    )
    _, data, ours = load_data_and_model(config)
    edges = ours.train_edge_index(data)
    same_graph = torch.equal(
        torch.unique(edges.t(), dim=0), torch.unique(mmrec["edges"].long(), dim=0)
    )
    lines = [f"## {model} ({spec.ours}) on {args.dataset}"]
    lines.append(f"- same train interactions: {same_graph}")
    for their_name, our_name in spec.item_graphs:
        our_name = our_name.format(**names)
        theirs = mmrec["graphs"][their_name]
        rows = item_graph_rows(ours.get_submodule(our_name).matrix, theirs)
        lines.append(f"- item-item graph {our_name}: {rows} of {theirs.size(0)} rows differ")
        if their_graph:
            parent, _, leaf = our_name.rpartition(".")
            owner = ours.get_submodule(parent) if parent else ours
            setattr(owner, leaf, FrozenSparse(theirs.coalesce().to_sparse_csr()))
    if their_graph:
        lines[0] += ", with MMRec's item-item graphs"
    params = dict(ours.named_parameters())

    def counterpart(theirs: str) -> list[str]:
        target = spec.params[theirs]
        return [t.format(**names) for t in ([target] if isinstance(target, str) else target)]

    with torch.no_grad():
        for theirs, value in mmrec["state"].items():
            if theirs in spec.absent:
                grad = mmrec["grads"].get(theirs)
                moved = grad is not None and grad.abs().max() > 1e-6 * grad.new_ones(()).max()
                if value.abs().max() > 0 and moved:
                    raise ValueError(f"{model}: {theirs} has no counterpart, is not zero, trains")
                continue
            if theirs not in spec.params:
                if theirs in mmrec["grads"]:
                    raise KeyError(f"{model}: MMRec parameter {theirs} has no counterpart")
                continue  # a buffer (graphs, features)
            value = value.t() if theirs in spec.transposed else value
            targets = [params[name] for name in counterpart(theirs)]
            dim = 0 if theirs in spec.stacked else -1
            widths = [t.size(dim) for t in targets]
            blocks = value.split(widths, dim=dim) if value.size(dim) == sum(widths) else ()
            if [b.shape for b in blocks] != [t.shape for t in targets]:
                shapes = [tuple(t.shape) for t in targets]
                raise ValueError(f"{model}: {theirs} {tuple(value.shape)} -> {shapes}")
            for target, block in zip(targets, blocks):
                target.copy_(block)
    batch = mmrec["batch"]
    neg = batch[2] if batch.size(0) > 2 else batch[1]  # BM3's batch has no negatives
    batch = BPRBatch(batch[0], batch[1], neg)
    with noiseless_relaxation(spec.noiseless):
        loss, grads = step_gradients(ours, batch)
        ours.eval()
        with torch.no_grad():
            scores = ours.full_scores(mmrec["users"])
        # float32 rounding of each gradient: ours against the same step in float64
        _, exact = step_gradients(ours.double(), batch)
    lines.append(
        f"- scores of {len(mmrec['users'])} users: max |ours - MMRec| "
        f"{float((scores - mmrec['scores']).abs().max()):.3g} "
        f"(relative {relative(scores, mmrec['scores']):.3g})"
    )
    lines.append(
        f"- loss of the first batch: ours {loss:.7f}, MMRec {mmrec['loss']:.7f} "
        f"(relative difference {abs(loss - mmrec['loss']) / abs(mmrec['loss']):.3g})"
    )
    differing = []
    for theirs, grad in mmrec["grads"].items():
        grad = grad.t() if theirs in spec.transposed else grad
        if theirs in spec.absent:
            size = float(grad.abs().max())
            lines.append(
                f"  - gradient {theirs}: no counterpart, max {size:.3g} ({spec.absent[theirs]})"
            )
            continue
        targets = counterpart(theirs)
        dim = 0 if theirs in spec.stacked else -1
        mine = torch.cat([grads[n] for n in targets], dim)
        reference = torch.cat([exact[n] for n in targets], dim)
        diff = relative(mine, grad)
        rounding = relative(mine.double(), reference)
        if diff > max(args.tolerance, 4 * rounding):
            differing.append(theirs)
        lines.append(
            f"  - gradient {theirs} -> {' | '.join(targets)}: relative max difference "
            f"{diff:.3g} (ours float32 vs float64: {rounding:.3g})"
        )
    verdict = f"DIFFERENT: {', '.join(differing)}" if differing else "equal to float32 rounding"
    at = len(lines) - len(mmrec["grads"])
    lines.insert(at, f"- gradients (largest entry difference over the largest entry): {verdict}")
    return lines


@contextlib.contextmanager
def noiseless_relaxation(active: bool) -> Iterator[None]:
    """Our relaxed hyperedge dependencies without their sampled noise, while active."""
    if not active:
        yield
        return
    from pyg_dhmrec.models import lgmrec

    plain = lgmrec.relaxed_dependencies
    lgmrec.relaxed_dependencies = lambda logits, temperature, noise=False: plain(
        logits, temperature, False
    )
    try:
        yield
    finally:
        lgmrec.relaxed_dependencies = plain


def step_gradients(model: torch.nn.Module, batch: BPRBatch) -> tuple[float, dict[str, Tensor]]:
    """The summed loss of one training step on ``batch`` and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    model.train()
    model.on_train_epoch_start()
    loss = sum(model.loss(batch).values())
    loss.backward()
    grads = {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in model.named_parameters()
    }
    return float(loss.detach()), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmrec", required=True, help="an MMRec checkout (with src/main.py)")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--users", type=int, default=1024, help="users whose scores compare")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--python", default=sys.executable, help="interpreter for MMRec")
    parser.add_argument("--work", default="/tmp/mmrec-transplant")
    args = parser.parse_args()
    if not (Path(args.mmrec) / "src" / "main.py").is_file():
        parser.error(f"--mmrec {args.mmrec}: no src/main.py (an MMRec checkout expected)")
    args.accuracy, args.device = False, "cpu"  # what prepare() reads
    src = prepare(args)
    for model in args.models:
        mmrec = mmrec_side(src, model, args)
        lines = compare(model, mmrec, args)
        print("\n".join(lines), flush=True)
        if any(" rows differ" in line and ": 0 of " not in line for line in lines):
            print("\n".join(compare(model, mmrec, args, their_graph=True)), flush=True)


if __name__ == "__main__":
    main()
