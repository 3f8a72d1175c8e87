"""tests/fusion/quality.py --csv merges: several invocations build one file, and running a
configuration's seed again replaces its rows without losing any other row."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SPEC = importlib.util.spec_from_file_location("quality", Path(__file__).with_name("quality.py"))
quality = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quality)

CONFIG = {"arch": "mlp", "width": 0.25, "batchnorm": False, "bias": False, "epochs": 10, "lr": 0.1,
          "weight_decay": 0.0005, "parents": 2, "solver": "exact", "reg": 0.0}


def _rows(seed: int, accuracy: float) -> list[dict]:
    return [{"seed": seed, "model": "naive", "accuracy": accuracy}]


def test_invocations_merge_into_one_file_and_a_rerun_replaces_only_its_own_rows(tmp_path):
    path = tmp_path / "quality.csv"
    vgg = {**CONFIG, "arch": "vgg11"}
    quality.write_csv(path, CONFIG, _rows(1, 0.5) + _rows(2, 0.6))
    quality.write_csv(path, vgg, _rows(1, 0.7))
    quality.write_csv(path, CONFIG, _rows(2, 0.65))  # seed 2 of the MLP again
    frame = pd.read_csv(path).set_index(["arch", "seed"])["accuracy"].sort_index()
    assert frame.to_dict() == {("mlp", 1): 0.5, ("mlp", 2): 0.65, ("vgg11", 1): 0.7}
