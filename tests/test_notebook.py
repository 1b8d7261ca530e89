"""The walkthrough notebook runs top to bottom on the installed package (so it cannot rot)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra (nbclient)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "placement_walkthrough.ipynb"


def test_walkthrough_notebook_executes_without_errors(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "every figure cell should draw a PNG"
