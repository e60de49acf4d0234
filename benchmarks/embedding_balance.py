"""Balance of a model's ranking embedding and of the BPR gradient, at initialisation and per epoch.

For any registered model: the ranking embedding is split into the parts that sum to it (a model
with a ``ranking_parts(out)`` method names them, e.g. DHMRec's ``id`` and ``mm`` of Eq. 22;
other models have one part, ``all``). On one fixed training batch it reports

* every loss part's value (the first BPR loss of a balanced model is about ln 2 = 0.693);
* per ranking part: mean L2 norm of the user and item rows, the share of the item rows that
  is one vector common to all (norm of the mean row over the mean row norm: 1 when every item
  has the same row, near 0 for rows spread around the origin), and the entropy of the users'
  score distribution over all items from that part alone (``log |I|`` = uniform);
* per loss part, the gradient norm reaching each top-level parameter group (``user_embedding``,
  ``item_embedding``, ``encoders``, ``gates``, ``fusion``, ...);

then trains ``--epochs`` epochs with the library's :class:`Trainer` and repeats the report after
each, with valid Recall@20. Prints a table per snapshot and saves everything as JSON, e.g.
``python benchmarks/embedding_balance.py --model dhmrec --dataset tiktok --data-root
/work/shared/data --epochs 3``. Extra ``--key value`` options go to the config.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks._setup import add_run_arguments, build_run, probe_batch, run_overrides  # noqa: E402
from pyg_dhmrec.config import parse_cli_overrides  # noqa: E402
from pyg_dhmrec.data.sampler import BPRBatch  # noqa: E402
from pyg_dhmrec.models.base import Embeddings, Recommender  # noqa: E402
from pyg_dhmrec.train import Trainer  # noqa: E402


def ranking_parts(model: Recommender, out: Embeddings) -> dict[str, torch.Tensor]:
    """``[U + I, d]`` summands of the ranking embedding (one part, ``all``, by default)."""
    if hasattr(model, "ranking_parts"):
        return model.ranking_parts(out)
    return {"all": torch.cat([out.user, out.item])}


def parameter_groups(model: Recommender) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters by the first component of their name."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.split(".")[0], []).append(p)
    return groups


def snapshot(model: Recommender, batch: BPRBatch) -> dict[str, Any]:
    """Loss parts, ranking-part norms and entropies, per-group gradient norms on ``batch``."""
    model.train()
    out = model()
    losses = model.loss(batch, out)
    users = torch.unique(batch.user)
    num_users = model.num_users
    parts = {}
    with torch.no_grad():
        for name, emb in ranking_parts(model, out).items():
            user, item = emb[:num_users], emb[num_users:]
            log_p = torch.log_softmax(user[users] @ item.t(), dim=-1)
            parts[name] = {
                "user_norm": user.norm(dim=-1).mean().item(),
                "item_norm": item.norm(dim=-1).mean().item(),
                "item_shared": (item.mean(0).norm() / item.norm(dim=-1).mean()).item(),
                "score_entropy": -(log_p.exp() * log_p).sum(-1).mean().item(),
            }
    groups = parameter_groups(model)
    grads: dict[str, dict[str, float]] = {}
    for part, value in losses.items():
        grads[part] = {}
        if not value.requires_grad:
            continue
        for group, params in groups.items():
            g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            sq = sum(x.pow(2).sum() for x in g if x is not None)
            grads[part][group] = float(sq) ** 0.5 if torch.is_tensor(sq) else 0.0
    return {
        "loss": {k: v.item() for k, v in losses.items()},
        "parts": parts,
        "grad_norm": grads,
        "log_num_items": math.log(model.num_items),
    }


def print_snapshot(label: str, snap: dict[str, Any]) -> None:
    print(f"\n== {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in snap["loss"].items()))
    print(f"   (ln 2 = {math.log(2):.4f}; uniform score entropy = {snap['log_num_items']:.3f})")
    print("| part | user norm | item norm | item shared | score entropy |\n|---|---|---|---|---|")
    for name, p in snap["parts"].items():
        print(
            f"| {name} | {p['user_norm']:.4g} | {p['item_norm']:.4g} | {p['item_shared']:.3f} "
            f"| {p['score_entropy']:.3f} |"
        )
    groups = sorted({g for row in snap["grad_norm"].values() for g in row})
    print("| grad of | " + " | ".join(groups) + " |\n|---|" + "---|" * len(groups))
    for part, row in snap["grad_norm"].items():
        print(f"| {part} | " + " | ".join(f"{row.get(g, 0.0):.3g}" for g in groups) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, seed=2024)
    parser.add_argument("--epochs", type=int, default=3, help="epochs after initialisation")
    parser.add_argument("--output", help="JSON path (default: runs/balance-<model>-<dataset>.json)")
    args, extra = parser.parse_known_args()
    overrides = run_overrides(args, parse_cli_overrides(extra))
    config, data, model = build_run(args.model, args.dataset, overrides)
    trainer = Trainer(model, data, config, torch.device("cpu"))
    model.on_train_epoch_start()
    probe = probe_batch(config, data, model)
    history = [{"epoch": 0, **snapshot(model, probe)}]
    print_snapshot("initialisation", history[0])
    for epoch in range(1, args.epochs + 1):
        train_loss = trainer.train_epoch(epoch)
        valid = trainer.evaluate("valid")
        snap = snapshot(model, probe)
        record = {"epoch": epoch, "train_loss": train_loss, "valid_recall@20": valid["recall@20"]}
        history.append({**record, **snap})
        print_snapshot(f"after epoch {epoch} (valid R@20 {valid['recall@20']:.4f})", snap)
    output = Path(args.output or f"runs/balance-{args.model}-{args.dataset}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool, list))}
    output.write_text(json.dumps({"config": settings, "history": history}, indent=1))
    print(f"\nwritten: {output}")


if __name__ == "__main__":
    main()
