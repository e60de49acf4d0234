"""Train and evaluate a recommender: ``python run.py --model lightgcn --dataset baby``."""

import sys

from pyg_dhmrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
