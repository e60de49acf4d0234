"""``python -m pyg_dhmrec [options]``: the command line of ``run.py``, from any folder."""

import sys

from pyg_dhmrec import cli

if __name__ == "__main__":
    cli.PROG = "python -m pyg_dhmrec"
    sys.exit(cli.main())
