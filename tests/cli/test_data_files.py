"""Fashion-MNIST files through `ofexp train` (issue #27, item 9): one error line naming the file or
folder, exit 1, no run; never "error: interrupted" (exit 130) when no signal was sent.

A truncated .gz raised EOFError, which click takes for Ctrl-D and turns into Abort: the command
said "interrupted" and exited 130.
"""
from __future__ import annotations

import os
import shutil

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import run_cli_in_process
from ofexp.data import fashion_mnist as fm

pytestmark = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(fm.PACKAGE_DIR, n)) for n in fm.GZ_NAMES),
    reason=f"Fashion-MNIST is not installed: apt-get install {fm.PACKAGE}",
)


def _train(tmp_path, capsys, data_dir: str):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli_in_process(["train", "--dataset", "fashion_mnist", "--data-dir", data_dir, "--epochs", "1",
                                 "--device", "cpu", "--no-log-model", "--experiment-name", "data-files"], uri, capsys)
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL) if experiments else []
    assert runs == [], "a run was created before the data was checked"
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def test_a_truncated_gz_is_an_error_naming_the_file_not_an_interrupt(tmp_path, capsys):
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in fm.GZ_NAMES:
        shutil.copy(os.path.join(fm.PACKAGE_DIR, name), folder / name)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1_000_000])
    line = _train(tmp_path, capsys, str(folder))
    assert "interrupted" not in line
    assert f"Fashion-MNIST file {path} ends before its gzip stream does" in line


def test_a_data_dir_that_is_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    line = _train(tmp_path, capsys, str(file))
    assert f"--data-dir {file} is a file, not a folder" in line


def test_an_end_of_file_anywhere_is_an_error_not_an_interrupt(tmp_path, capsys, monkeypatch):
    # click turns EOFError into Abort as it does Ctrl-C: ofexp reports it as the error it is
    import ofexp.pipeline.steps.train as train

    def cut_short(cfg):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(train, "load_dataset", cut_short)
    line = _train(tmp_path, capsys, str(tmp_path))
    assert line.startswith("error: unexpected EOFError: Compressed file ended") and "interrupted" not in line
