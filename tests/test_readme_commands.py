"""The command line's own help, as the README quotes it: its examples work and its sub-commands
name the program they were started as."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyg_dhmrec import cli


def test_help_examples_are_keys_of_the_default_run(tmp_path: Path) -> None:
    """Every ``--key value`` the epilog gives as an example is accepted by the default model
    (``--num_layers`` was an option of DiffMM only, refused for DHMRec)."""
    epilog = cli.build_parser().epilog
    examples = re.search(r"\(e\.g\. (.*?)\);", epilog, re.S).group(1)
    pairs = re.findall(r"--(\w+) ('[^']*'|\[[^\]]*\]|[^,\s]+)", examples)
    assert [key for key, _ in pairs] == ["topk", "num_ui_layers", "modalities"]
    for key, value in pairs:
        argv = ["--data-root", str(tmp_path), f"--{key}", value.strip("'")]
        config = cli.resolve_config(*cli.build_parser().parse_known_args(argv))
        assert config["model"] == "dhmrec" and key in config
    assert not any(tmp_path.iterdir())  # the configuration alone: no data read or written


def test_seeds_help_names_what_it_writes() -> None:
    help_text = cli.build_parser().format_help()
    assert "mean and std of the test metrics (seeds.json)" in " ".join(help_text.split())


@pytest.mark.parametrize("command", ["compare", "plot", "recommend", "export"])
def test_sub_command_usage_names_the_program(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pyg-dhmrec compare --help`` says ``usage: pyg-dhmrec compare``, not ``run.py``."""
    monkeypatch.setattr(cli, "PROG", "pyg-dhmrec")
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: pyg-dhmrec {command}")
