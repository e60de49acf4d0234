"""benchmarks/mmrec_transplant.py's comparison, without MMRec: the "MMRec side" is a model of
this library whose parameters carry MMRec's names (the table inverted), so the comparison must
find it equal, and must name what a changed weight or gradient breaks."""

from __future__ import annotations

import re

import pytest
import torch
from benchmark_scripts import load_benchmark

from pyg_dhmrec.api import make_config
from pyg_dhmrec.data.cooccurrence import resample_to_k_neighbours
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.synthetic import SyntheticConfig, generate_synthetic
from pyg_dhmrec.loader import load_data_and_model

transplant = load_benchmark("mmrec_transplant")

# image and text of different widths, so that VBPR's [text | image] blocks have an order
TOY = SyntheticConfig(
    num_users=40, num_items=30, num_interactions=400, modalities={"image": 6, "text": 4}, seed=3
)


@pytest.fixture(scope="module")
def args(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root / "toy", "toy", TOY)
    return type("Args", (), {"data_root": str(root), "dataset": "toy", "users": 16})()


def _user_graph_slots(ours) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """DualGNN's saved user graph, as MMRec's ``[U, k]`` slots and weights (zero rows for
    users without a neighbour), drawn as our sampler draws."""
    count = ours.user_graph_count
    users, slots, slot_edge = resample_to_k_neighbours(
        ours.user_graph_edge_index, ours.num_users, ours.user_graph_k
    )
    full = torch.zeros(ours.num_users, ours.user_graph_k, dtype=torch.long)
    weight = torch.zeros(ours.num_users, ours.user_graph_k)
    full[users], weight[users] = slots, torch.softmax(count[slot_edge], dim=1)
    return {"epoch_user_graph": full, "user_weight_matrix": weight}


def _reference(model: str, args, seed: int) -> dict:  # noqa: ANN001
    """What the driver saves, from a model of ours under MMRec's parameter names."""
    spec = transplant.MODELS[model]
    names = transplant.modality_names(args)
    settings = transplant.our_settings(spec, names)
    config = make_config(spec.ours, args.dataset, data_root=args.data_root, **settings)
    torch.manual_seed(seed)
    _, data, ours = load_data_and_model(config)
    graphs = _user_graph_slots(ours) if "epoch_user_graph" in spec.mmrec_saved else {}
    if spec.adapt is not None:
        spec.adapt(ours, data, {"graphs": graphs})
    params = dict(ours.named_parameters())
    edges = ours.train_edge_index(data)
    batch = torch.stack([edges[0, :24], edges[1, :24], edges[1, 24:48]])
    with transplant.noiseless_relaxation(spec.noiseless):
        loss, grads = transplant.step_gradients(ours, BPRBatch(*batch))
    ours.eval()
    users = torch.arange(args.users)
    state, their_grads = {}, {}
    for theirs, target in spec.params.items():
        targets = [target] if isinstance(target, str) else target
        targets = [t.format(**names) for t in targets]
        dim = 0 if theirs in spec.stacked else -1
        state[theirs] = torch.cat([params[t].detach() for t in targets], dim)
        their_grads[theirs] = torch.cat([grads[t] for t in targets], dim) * spec.loss_scale
        if theirs in spec.transposed:
            state[theirs], their_grads[theirs] = state[theirs].t(), their_grads[theirs].t()
        if theirs in spec.reshaped:  # MMRec's shape: a size-1 dimension more
            state[theirs] = state[theirs].unsqueeze(-1)
            their_grads[theirs] = their_grads[theirs].unsqueeze(-1)
    loss *= spec.loss_scale
    for theirs, penalty in spec.penalties.items():
        value = torch.randn(5, 2, 1, requires_grad=True)
        term = penalty(value)
        term.backward()
        state[theirs], their_grads[theirs] = value.detach(), value.grad
        loss += float(term.detach())
    for theirs, (buffer, _) in spec.frozen.items():
        state[theirs] = ours.get_buffer(buffer.format(**names)).clone()
        their_grads[theirs] = torch.randn_like(state[theirs])
    for theirs, mine in spec.item_graphs:
        graphs[theirs] = transplant.our_graph(ours, mine, names).to_sparse_coo()
    with torch.no_grad():
        for theirs, mine in spec.learned_graphs:
            graphs[theirs] = mine(ours).to_sparse_coo()
        scores = ours.full_scores(users)
    return {
        "state": state,
        "grads": their_grads,
        "loss": loss,
        "batch": batch,
        "users": users,
        "scores": scores,
        "edges": edges.t(),
        "graphs": graphs,
    }


# VBPR: blocks along the last dimension; GRCN: stacked rows; LGMRec: transposed, noiseless;
# LATTICE: frozen features, buffer and learned graphs, adapted; DualGNN: reshaped, a penalty,
# a loss scale, MMRec's user graph; MMGCN: parameters added by its adaptation
@pytest.mark.parametrize(
    "model",
    ["LightGCN", "VBPR", "FREEDOM", "GRCN", "LGMRec", "LATTICE", "DualGNN", "MMGCN", "DAMRS"],
)
def test_the_same_model_under_mmrec_names_is_equal(model: str, args) -> None:  # noqa: ANN001
    args.tolerance = 1e-4
    reference = _reference(model, args, seed=1)
    lines = transplant.compare(model, reference, args)  # builds a fresh model, seed apart
    text = "\n".join(lines)
    assert "same train interactions: True" in text
    assert "equal to float32 rounding" in text, text
    loss = re.search(r"loss of the first batch: .*\(relative difference (\S+)\)", text)
    assert float(loss.group(1)) < 1e-5, text
    for line in lines:
        if " rows differ" in line:
            assert ": 0 of " in line, line


def test_a_changed_weight_or_gradient_is_named(args) -> None:  # noqa: ANN001
    args.tolerance = 1e-4
    reference = _reference("VBPR", args, seed=1)
    reference["grads"]["i_embedding"][0] += 1.0
    text = "\n".join(transplant.compare("VBPR", reference, args))
    assert "DIFFERENT: i_embedding\n" in text + "\n", text
    # VBPR's projection is MMRec's one map of [text | image]: the blocks in the other order
    # give other scores, a block too many does not fit
    reference = _reference("VBPR", args, seed=1)
    weight = reference["state"]["item_linear.weight"]
    reference["state"]["item_linear.weight"] = torch.cat([weight[:, 4:], weight[:, :4]], -1)
    text = "\n".join(transplant.compare("VBPR", reference, args))
    assert "DIFFERENT: " in text and "item_linear.weight" in text.split("DIFFERENT: ")[1], text
    reference["state"]["item_linear.weight"] = torch.cat([weight, weight[:, :1]], -1)
    shapes = r"item_linear.weight \(64, 11\) -> \[\(64, 4\), \(64, 6\)\]"
    with pytest.raises(ValueError, match=shapes):
        transplant.compare("VBPR", reference, args)


def test_mmrec_sampled_user_graph_is_the_one_used(args) -> None:  # noqa: ANN001
    # DualGNN: the comparison puts MMRec's drawn user graph into ours, and counts its rows
    # that differ from our own draw; other neighbour weights give other scores and gradients
    args.tolerance = 1e-4
    reference = _reference("DualGNN", args, seed=1)
    weight = reference["graphs"]["user_weight_matrix"]
    rows = torch.nonzero(weight.sum(1) > 0).flatten()[:3]
    weight[rows] = weight[rows].flip(1)
    text = "\n".join(transplant.compare("DualGNN", reference, args))
    assert "DIFFERENT: " in text, text
    lines = re.findall(r"user graph \(neighbour weights\): differs in (\d+) of 40", text)
    assert lines and int(lines[0]) >= len(rows), text


def test_an_unmapped_trained_parameter_is_refused(args) -> None:  # noqa: ANN001
    args.tolerance = 1e-4
    reference = _reference("LightGCN", args, seed=1)
    reference["state"]["extra"] = torch.ones(3)
    reference["grads"]["extra"] = torch.ones(3)
    with pytest.raises(KeyError, match="MMRec parameter extra has no counterpart"):
        transplant.compare("LightGCN", reference, args)


def test_graph_rows_that_differ_are_counted() -> None:
    ours = torch.eye(4).to_sparse_csr()
    theirs = torch.eye(4)
    theirs[2, 3] = 0.5
    assert transplant.item_graph_rows(ours, theirs.to_sparse_coo()) == 1
    assert transplant.item_graph_rows(ours, torch.eye(4).to_sparse_coo()) == 0
