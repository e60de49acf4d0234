"""``torchrun tests/fail_rank.py RANK EPOCH [run.py arguments]``: ``run.py`` with
``Trainer.train_epoch`` raising on rank RANK at epoch EPOCH (a fault injected by event)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # This checkout's package, not another installed copy (as python run.py would import).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pyg_dhmrec.cli import main
    from pyg_dhmrec.train import Trainer

    rank, epoch = int(sys.argv[1]), int(sys.argv[2])
    original = Trainer.train_epoch

    def train_epoch(self: Trainer, e: int) -> dict[str, float]:
        if int(os.environ["RANK"]) == rank and e == epoch:
            raise RuntimeError(f"injected fault on rank {rank} in epoch {epoch}")
        return original(self, e)

    Trainer.train_epoch = train_epoch
    sys.exit(main(sys.argv[3:]))
