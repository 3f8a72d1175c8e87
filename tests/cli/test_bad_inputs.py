"""Bad input that used to get through (issue #15): one line on stderr, a non-zero exit, no
traceback, no RUNNING run; options the config checks are refused before any run exists, and
`--csv` never overwrites a file without --force, nor leaves half a file.

Every case runs the real entry point in this process against a SQLite store of its own:
two tiny parents (trained once for the module) and a study run made with the MLflow client
(whose evaluate runs carry logged metrics only), so that no case trains a model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import fake_model_steps, run_cli_in_process, sqlite_store_with_parents

REFUSED = "refused-before-any-run"  # the experiment the (before) cases name; it must never appear
# a tiny study, for the study cases: were the bad value let through, it would still end in seconds
TINY_STUDY = ["study", "--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model", "--device", "cpu",
              "--measures", "prediction", "--preset", "quick", "--experiment-name", REFUSED]


@dataclass
class Store:
    uri: str
    parents: tuple[str, str]  # FINISHED train runs with weights
    study: str  # a FINISHED study run with a step index, which `ofexp report` reads
    compared: tuple[str, str]  # two runs for `ofexp compare`

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    uri, parents, _, _ = sqlite_store_with_parents(tmp_path_factory.mktemp("bad-inputs-store"), "bad-inputs")
    return Store(uri, parents, _fake_study(MlflowClient(uri)), parents)


def _fake_study(client: MlflowClient) -> str:
    """A study run indexing 2 seeds x 2 kinds of evaluate runs in its steps.csv, as `ofexp study` does."""
    experiment_id = client.create_experiment("fake-study")
    rows = []
    for seed in (1, 2):
        model_rows, models = fake_model_steps(client, experiment_id, seed, ("naive_fused",))
        rows += [",".join(map(str, row)) for row in model_rows]
        for i, kind in enumerate(("parent_1", "naive_fused")):
            run_id = client.create_run(experiment_id, tags={"ofexp.stage": "evaluate"}).info.run_id
            client.log_param(run_id, "model_run", models[kind])
            client.log_metric(run_id, "prediction/accuracy", 0.5 + 0.1 * seed + 0.01 * i)
            client.log_metric(run_id, "prediction/test_loss", 1.0 - 0.1 * seed - 0.02 * i)
            client.set_terminated(run_id, "FINISHED")
            rows.append(f"{seed},{kind},evaluate,{run_id},False")
    study = client.create_run(experiment_id, tags={"ofexp.stage": "study",
                                                    "ofexp.kinds": "parent_1,naive_fused"}).info.run_id
    client.log_text(study, "\n".join(["seed,kind,stage,run_id,reused", *rows]) + "\n", "steps.csv")
    client.log_param(study, "accuracy_metric", "accuracy")
    client.set_terminated(study, "FINISHED")
    return study


def _all_runs(client: MlflowClient) -> dict[str, str]:
    """{run ID: status} of every run of every experiment, deleted ones included."""
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return {r.info.run_id: r.info.status for r in client.search_runs(experiments, run_view_type=ViewType.ALL)}


def _error_line(result) -> str:
    """The one `error: <what is wrong>; <how to fix it>` line of a failed command."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "; " in lines[0], f"no fix named: {lines[0]}"
    return lines[0]


def _refused_before_any_run(store: Store, args: list[str], capsys) -> str:
    """Run a command that must be refused before any run exists; return its error line."""
    client = store.client()
    before = _all_runs(client)
    result = run_cli_in_process(args, store.uri, capsys)
    line = _error_line(result)
    assert result.stdout.strip() == ""
    assert _all_runs(client) == before, "a run was created (or changed) before the refusal"
    assert client.get_experiment_by_name(REFUSED) is None
    return line


def _no_run_left_running(store: Store) -> None:
    assert "RUNNING" not in _all_runs(store.client()).values()


# --- 1. --csv: never overwrite without --force, never half a file -------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


REPORT_FILES = ("results.csv", "results.prediction.csv", "results.summary.csv", "results.correlations.csv")


@pytest.mark.parametrize("existing", REPORT_FILES)
def test_report_csv_refuses_to_overwrite_any_file_it_would_write(store, tmp_path, capsys, existing):
    (tmp_path / existing).write_bytes(b"my own notes,\n1,2\n")
    line = _error_line(run_cli_in_process(["report", store.study, "--csv", str(tmp_path / "results.csv")],
                                          store.uri, capsys))
    assert str(tmp_path / existing) in line and "--force" in line
    assert _files(tmp_path) == {existing: b"my own notes,\n1,2\n"}, "the old file, byte for byte, and nothing else"
    _no_run_left_running(store)


def test_report_csv_force_replaces_all_four_files_whole(store, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    ok = run_cli_in_process(["report", store.study, "--csv", str(fresh / "results.csv")], store.uri, capsys)
    assert ok.returncode == 0, ok.stderr
    assert set(_files(fresh)) == set(REPORT_FILES)
    old = tmp_path / "old"
    old.mkdir()
    for name in REPORT_FILES:
        (old / name).write_text("stale\n")
    forced = run_cli_in_process(["report", store.study, "--csv", str(old / "results.csv"), "--force"],
                                store.uri, capsys)
    assert forced.returncode == 0, forced.stderr
    assert _files(old) == _files(fresh), "the new tables, and no temporary file left beside them"
    assert oct((old / "results.csv").stat().st_mode & 0o777) == oct((fresh / "results.csv").stat().st_mode & 0o777)


def test_report_csv_interrupted_while_writing_keeps_the_old_files(store, tmp_path, capsys, monkeypatch):
    for name in REPORT_FILES:
        (tmp_path / name).write_text(f"old {name}\n")
    real_replace = os.replace

    def interrupted(src, dst, *args, **kwargs):
        if Path(dst).parent == tmp_path:
            raise KeyboardInterrupt  # Ctrl-C after the tables were written to temporary files
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", interrupted)
    result = run_cli_in_process(["report", store.study, "--csv", str(tmp_path / "results.csv"), "--force"],
                                store.uri, capsys)
    monkeypatch.undo()
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert _files(tmp_path) == {name: f"old {name}\n".encode() for name in REPORT_FILES}


def test_csv_write_failure_is_one_line_and_leaves_nothing(store, tmp_path, capsys, monkeypatch):
    import tempfile

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    line = _error_line(run_cli_in_process(["report", store.study, "--csv", str(tmp_path / "results.csv")],
                                          store.uri, capsys))
    monkeypatch.undo()
    assert "--csv" in line and "No space left on device" in line
    assert _files(tmp_path) == {}


@pytest.mark.parametrize("command", ["report", "compare"])
def test_csv_into_a_missing_folder_is_the_same_one_line_error(store, tmp_path, capsys, command):
    target = tmp_path / "missing" / "results.csv"
    ids = [store.study] if command == "report" else list(store.compared)
    line = _error_line(run_cli_in_process([command, *ids, "--csv", str(target)], store.uri, capsys))
    assert line == f"error: --csv {target}: folder {target.parent} does not exist; create it or pick another path"
    assert _files(tmp_path) == {}
    _no_run_left_running(store)


@pytest.mark.parametrize("command", ["report", "compare"])
def test_csv_path_that_is_a_folder_is_refused(store, tmp_path, capsys, command):
    folder = tmp_path / "results.csv"
    folder.mkdir()
    ids = [store.study] if command == "report" else list(store.compared)
    for force in ([], ["--force"]):
        line = _error_line(run_cli_in_process([command, *ids, "--csv", str(folder), *force], store.uri, capsys))
        assert f"--csv {folder} is a folder" in line
        assert list(tmp_path.iterdir()) == [folder]
        assert list(folder.iterdir()) == []


def test_report_csv_refuses_a_side_file_path_that_is_a_folder(store, tmp_path, capsys):
    (tmp_path / "results.summary.csv").mkdir()
    line = _error_line(run_cli_in_process(["report", store.study, "--csv", str(tmp_path / "results.csv"), "--force"],
                                          store.uri, capsys))
    assert str(tmp_path / "results.summary.csv") in line and "folder" in line
    assert [p.name for p in tmp_path.iterdir()] == ["results.summary.csv"]


def test_compare_csv_refuses_to_overwrite_and_force_replaces(store, tmp_path, capsys):
    target = tmp_path / "compare.csv"
    target.write_bytes(b"precious\r\n")
    args = ["compare", *store.compared, "--csv", str(target)]
    line = _error_line(run_cli_in_process(args, store.uri, capsys))
    assert str(target) in line and "--force" in line
    assert _files(tmp_path) == {"compare.csv": b"precious\r\n"}
    forced = run_cli_in_process([*args, "--force"], store.uri, capsys)
    assert forced.returncode == 0, forced.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["compare.csv"], "no temporary file left"
    header = target.read_text().splitlines()[0].split(",")
    assert header[1:] == list(store.compared)
    _no_run_left_running(store)


# --- 2. study --seeds: every seed an integer ≥ 1, in both forms -----------------------------------

@pytest.mark.parametrize("seeds,named", [("0,-1", "0"), ("2,0", "0"), ("1,-3", "-3"), ("1,,2", "1,,2"),
                                         ("1,", "1,"), ("1,1.5", "1.5"), ("1,x", "x"), ("one", "one")])
def test_study_seed_list_is_refused_before_any_run(store, capsys, seeds, named):
    line = _refused_before_any_run(store, [*TINY_STUDY, f"--seeds={seeds}"], capsys)
    assert "--seeds" in line and named in line


# --- --reg too small for Sinkhorn to converge in bounded time (reg 1e-12 ran 8 minutes) -------

@pytest.mark.parametrize("reg", ["1e-12", "5e-5"])
def test_fuse_sinkhorn_reg_too_small_is_refused_before_any_run(store, capsys, reg):
    args = ["fuse", "--parents", ",".join(store.parents), "--solver", "sinkhorn", "--reg", reg, "--method",
            "geometric", "--device", "cpu", "--experiment-name", REFUSED]
    line = _refused_before_any_run(store, args, capsys)
    assert "--reg" in line and "below 0.0001" in line and "--solver exact" in line


REPEATED = [(["--method", "naive", "--method", "geometric"], "--method given 2 times", "--method both runs each"),
            (["--repair", "--no_repair"], "--repair and --no-repair given 2 times", "give --repair once"),
            (["--reg=0.1", "--reg", "0.2"], "--reg given 2 times", "only the last would count")]


@pytest.mark.parametrize("options,named,fix", REPEATED, ids=[o[0] for o, _, _ in REPEATED])
def test_an_option_given_twice_is_refused_before_any_run(store, capsys, options, named, fix):
    """click keeps the last of two values silently: `--method naive --method geometric` made one run."""
    args = ["fuse", "--parents", ",".join(store.parents), *options, "--device", "cpu", "--experiment-name", REFUSED]
    line = _refused_before_any_run(store, args, capsys)
    assert named in line and fix in line


# --- 3. --fusion-weights: non-negative finite numbers with a positive sum -----------------------

BAD_WEIGHTS = [("nan,1", "nan"), ("-1,2", "-1"), ("0,0", "sums to 0"), ("inf,1", "inf"), ("1,-inf", "-inf"),
               ("1e308,1e308", "sums to inf"), ("1,,", "empty"), ("half,half", "half")]


@pytest.mark.parametrize("weights,named", BAD_WEIGHTS, ids=[w for w, _ in BAD_WEIGHTS])
def test_fuse_weights_are_refused_before_any_run(store, capsys, weights, named):
    args = ["fuse", "--parents", ",".join(store.parents), f"--fusion-weights={weights}", "--method", "naive",
            "--device", "cpu", "--experiment-name", REFUSED]
    line = _refused_before_any_run(store, args, capsys)
    assert "--fusion-weights" in line and named in line and "0.5,0.5" in line


@pytest.mark.parametrize("weights,named", BAD_WEIGHTS[:4], ids=[w for w, _ in BAD_WEIGHTS[:4]])
def test_study_weights_are_refused_before_any_run(store, capsys, weights, named):
    line = _refused_before_any_run(store, [*TINY_STUDY, f"--fusion-weights={weights}", "--seeds", "1"], capsys)
    assert "--fusion-weights" in line and named in line and "0.5,0.5" in line


# The study built its FuseConfig only inside each seed, after the parents trained: every
# fusion option it checks came too late for a study, not only --fusion-weights.
STUDY_FUSION_OPTIONS = [(["--fusion-weights", "1,2,3"], "--fusion-weights"), (["--target", "2"], "--target"),
                        (["--activation-samples", "1"], "--activation-samples"),
                        (["--curve-samples", "1"], "--curve-samples"),
                        (["--solver", "sinkhorn", "--reg", "0"], "--reg")]


@pytest.mark.parametrize("options,named", STUDY_FUSION_OPTIONS, ids=[o[0] for o, _ in STUDY_FUSION_OPTIONS])
def test_study_fusion_options_are_refused_before_any_run(store, capsys, options, named):
    line = _refused_before_any_run(store, [*TINY_STUDY, *options, "--seeds", "1"], capsys)
    assert named in line


def test_good_weights_still_fuse(store, capsys):
    result = run_cli_in_process(["fuse", "--parents", ",".join(store.parents), "--fusion-weights", "0,1",
                                 "--method", "naive", "--device", "cpu", "--experiment-name", "good-weights"],
                                store.uri, capsys)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    method, run_id = line.split()
    run = store.client().get_run(run_id)
    assert method == "naive" and run.info.status == "FINISHED" and run.data.params["fusion_weights"] == "0.0,1.0"


# --- 4. the input of models given by URI (--channels, --pixels), and evaluate's --seed ----------

BAD_MODEL_INPUT = [(["--channels", "0"], "--channels 0 is out of range; pass an integer from 1 to 64"),
                   (["--channels", "65"], "--channels 65 is out of range"),
                   (["--channels", "three"], "--channels 'three' is not a number of channels; pass an integer")]


@pytest.mark.parametrize("command", ["fuse", "evaluate"])
@pytest.mark.parametrize("options,named", BAD_MODEL_INPUT, ids=[" ".join(o) for o, _ in BAD_MODEL_INPUT])
def test_a_bad_input_of_models_by_uri_is_refused_before_any_run(store, capsys, command, options, named):
    uris = [f"runs:/{run_id}/model" for run_id in store.parents]
    models = ["--parents", ",".join(uris)] if command == "fuse" else ["--model-run", uris[0]]
    line = _refused_before_any_run(store, [command, *models, "--dataset", "digits", *options, "--device", "cpu",
                                           "--experiment-name", REFUSED], capsys)
    assert named in line


@pytest.mark.parametrize("command", ["fuse", "evaluate"])
def test_a_bad_pixels_value_is_refused_naming_the_allowed_ones(store, capsys, command):
    """--pixels is a choice: click's one line names the option and the values it takes (that is the fix)."""
    uri = f"runs:/{store.parents[0]}/model"
    models = ["--parents", f"{uri},{uri}"] if command == "fuse" else ["--model-run", uri]
    before = _all_runs(store.client())
    result = run_cli_in_process([command, *models, "--dataset", "digits", "--pixels", "bytes",
                                 "--experiment-name", REFUSED], store.uri, capsys)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr == "error: Invalid value for '--pixels': 'bytes' is not one of 'unit', 'normalized'.\n"
    assert _all_runs(store.client()) == before


@pytest.mark.parametrize("seed", [str(2**64), str(-2**63 - 1)])
def test_evaluates_seed_beyond_torchs_seeds_is_refused_before_any_run(store, capsys, seed):
    line = _refused_before_any_run(store, ["evaluate", "--model-run", store.parents[0], "--seed", seed,
                                           "--measures", "all", "--experiment-name", REFUSED], capsys)
    assert line.startswith("error: --seed ") and "is outside the seeds torch takes; pass an integer from" in line
