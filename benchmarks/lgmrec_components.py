"""Which part of a trained LGMRec decides its ranking: each summand of Eq. 12 ranked alone.

    python benchmarks/lgmrec_components.py runs/tiktok/baselines/lgmrec-tiktok/default

Loads the run's ``best.pt`` (``--weights checkpoint.pt`` for an unfinished run) and ranks all
items with the inner product of: the full fused embedding ``E*``; the collaborative part ``E_c``
alone; the local part ``E_c + sum_m NORM(E_m)``; each modality's ``NORM(E_m)``; the global part
``alpha NORM(E_ghe)``. Prints Recall@20 / NDCG@20 on valid and test and the mean row norm of
each part: a part with unit rows beside ID rows of norm 0.1 decides the ranking by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from pyg_dhmrec.data.dataset import RATES, load_dataset  # noqa: E402
from pyg_dhmrec.experiment import ExperimentError, run_config  # noqa: E402
from pyg_dhmrec.metrics import FullRankEvaluator  # noqa: E402
from pyg_dhmrec.models import LGMRec, build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="run folder of an LGMRec run")
    parser.add_argument("--weights", default="best.pt", help="weights file inside the run folder")
    args = parser.parse_args()
    config = run_config(args.run)
    if config["model"] != "lgmrec":
        raise SystemExit(f"{args.run}: a '{config['model']}' run, expected an lgmrec run")
    data = load_dataset(config)[0]
    model = build_model("lgmrec", data, config)
    assert isinstance(model, LGMRec)
    weights = torch.load(args.run / args.weights, map_location="cpu", weights_only=False)
    if "model" in weights and "version" in weights:  # a checkpoint.pt, not a bare state dict
        weights = weights["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ExperimentError(f"{args.run / args.weights}: not an LGMRec state ({e})") from None
    model.eval()

    num_users = model.num_users
    with torch.no_grad():
        ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        collab = model.ui_propagation(ego, model.adj)
        modality = {
            m: F.normalize(model._modality_graph_embedding(m), dim=-1) for m in model.modalities
        }
        out = model.forward_modalities()
        full = torch.cat([out.user, out.item])
    local = collab + sum(modality.values())
    parts = {"full E*": full, "collaborative E_c": collab, "local E_c + sum NORM(E_m)": local}
    parts |= {f"modality NORM(E_{m})": e for m, e in modality.items()}
    parts["global alpha NORM(E_ghe)"] = full - local

    store = data[RATES]
    evaluators = {
        split: FullRankEvaluator(
            store.edge_index,
            store[f"{split}_edge_index"],
            num_users,
            model.num_items,
            ks=[20],
            metrics=["recall", "ndcg"],
        )
        for split in ("valid", "test")
    }
    print(f"{args.run / args.weights}")
    print("| part | valid R@20 | valid N@20 | test R@20 | test N@20 | user norm | item norm |")
    print("|---|---|---|---|---|---|---|")
    for name, emb in parts.items():
        users, items = emb[:num_users], emb[num_users:]

        def score(u: torch.Tensor, users=users, items=items) -> torch.Tensor:
            return users[u] @ items.t()

        scores = {s: ev.evaluate(score) for s, ev in evaluators.items()}
        print(
            f"| {name} | {scores['valid']['recall@20']:.4f} | {scores['valid']['ndcg@20']:.4f} "
            f"| {scores['test']['recall@20']:.4f} | {scores['test']['ndcg@20']:.4f} "
            f"| {users.norm(dim=1).mean():.3f} | {items.norm(dim=1).mean():.3f} |"
        )


if __name__ == "__main__":
    main()
