"""The notebooks run end to end on a tiny checkpoint of the quick config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from metaplastic.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["quickstart.ipynb", "interference.ipynb"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("notebook") / "run"
    args = ["meta.steps=2", "meta.meta_batch=1", "--out", str(run), "--no-progress", "--wandb", "disabled"]
    assert main(["train", str(ROOT / "experiments" / "quick_flp.yaml"), *args]) == 0
    return run


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("METAPLASTIC_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("METAPLASTIC_EPISODES", "2")
    # jupyter_client starts the "python3" kernel with sys.executable: the interpreter running the tests
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (4 if name == "interference.ipynb" else 2)
    text = "".join(o.get("text", "") for o in outputs)
    assert str(tiny_checkpoint) in text
