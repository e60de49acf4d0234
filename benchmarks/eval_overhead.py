"""How close full-ranking evaluation is to the hardware's limit: the evaluator against the bare
score product and top-k alone, on one dataset's valid users.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/eval_overhead.py --dataset tiktok \\
        --data-root /work/shared/data --out runs/eval_overhead

With the scoring embeddings of a model (``--model``, untrained: the cost does not depend on the
values) computed once, three timings over every valid user, in the evaluator's user chunks
(``eval_batch_size``), each the median of ``--repeats`` runs after one warm-up:

* ``bare``: ``topk(users @ items.T, max(K))`` per chunk, nothing else;
* ``evaluator``: :meth:`FullRankEvaluator.evaluate` with the cached embeddings' scores (the
  train mask, top-k, hits and every metric);
* ``trainer``: :meth:`Trainer.evaluate` of the valid split, which also runs the model's
  forward pass once.

``evaluator / bare`` is the overhead of the protocol over the product and top-k. The figures
are printed and written to ``<out>/eval-overhead-<dataset>.json``; ``benchmarks/speed.py``
runs this script after its models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default="lightgcn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/eval_overhead"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from pyg_dhmrec.config import load_config
    from pyg_dhmrec.loader import load_data_and_model
    from pyg_dhmrec.train import Trainer, resolve_device, seed_everything

    device = resolve_device(args.device)
    overrides = {"progress": False, **({"data_root": args.data_root} if args.data_root else {})}
    config = load_config(args.model, args.dataset, overrides)
    seed_everything(config["seed"], device)
    _, data, model = load_data_and_model(config)
    trainer = Trainer(model, data, config, device)
    evaluator = trainer.valid_evaluator
    model.eval()
    with torch.no_grad():
        emb = model()
    user_emb, item_emb = emb.user, emb.item
    max_k = min(max(evaluator.ks), evaluator.num_items)
    chunks = [
        evaluator.users[s : s + evaluator.user_batch_size].to(device)
        for s in range(0, evaluator.num_users_evaluated, evaluator.user_batch_size)
    ]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @torch.no_grad()
    def bare() -> None:
        for users in chunks:
            torch.topk(user_emb[users] @ item_emb.t(), max_k, dim=1)
        sync()

    def evaluate() -> None:
        evaluator.evaluate(lambda users: user_emb[users.to(device)] @ item_emb.t())
        sync()

    def trainer_evaluate() -> None:
        trainer.evaluate("valid")
        sync()

    figures = {
        "dataset": config["dataset"],
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "valid_users": evaluator.num_users_evaluated,
        "items": evaluator.num_items,
        "eval_batch_size": evaluator.user_batch_size,
        "bare_ms": median_ms(bare, args.repeats),
        "evaluator_ms": median_ms(evaluate, args.repeats),
        "trainer_ms": median_ms(trainer_evaluate, args.repeats),
    }
    figures["evaluator_over_bare"] = figures["evaluator_ms"] / figures["bare_ms"]
    figures["trainer_over_bare"] = figures["trainer_ms"] / figures["bare_ms"]
    print(
        f"{figures['valid_users']} valid users x {figures['items']} items ({device}, "
        f"{figures['threads']} threads): bare product + top-{max_k} {figures['bare_ms']:.1f} ms, "
        f"evaluator {figures['evaluator_ms']:.1f} ms ({figures['evaluator_over_bare']:.2f}x), "
        f"trainer's evaluate with {args.model}'s forward {figures['trainer_ms']:.1f} ms "
        f"({figures['trainer_over_bare']:.2f}x)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"eval-overhead-{config['dataset']}.json"
    path.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
