"""The MLflow UI that `ofexp ui` serves, in headless Chromium, as a user clicks through it.

A tiny study runs with the real CLI into a local store (./mlflow.db, as a new user's is);
its geometric fused model is registered; `ofexp ui` serves the store, and Selenium drives
Debian's chromium with its chromedriver from the link `ofexp ui` prints.

- The runs table lists the study by name; expanding it shows every step by name, and
  accuracy, loss and a fuse run's ratio to its parents are columns in view, without a
  column search. A step's page links its
  parents and names the study as its parent run; a fuse run's plots show; an evaluate
  run's charts are grouped by space.
- Clicking through the runs, a run, the experiment's logged models, the model registry, a
  registered model and its version, and back to the runs, no page shows MLflow 3's GenAI
  navigation (Evaluation runs, Judges, Prompts, AI Gateway, "Agent versions", the
  assistant). The same check does find it once the address asks for GenAI, so it can fail.

Every page visited is saved as a screenshot in $OFEXP_TEST_ARTIFACTS/ui (default:
test-artifacts/ui in the repository). Skipped only where Chromium or chromedriver is
absent (.ci/install-chromium.sh).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, free_port, run_cli, using_tracking_uri

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000")
TIMEOUT = 90  # seconds for the UI to render; the page loads its JS bundle from the server
SCREENSHOTS = Path(os.environ.get("OFEXP_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "ui"
# Lines of MLflow 3.17's GenAI navigation: its sidebar, the logged models page's title, the assistant panel
GENAI_LINES = ("Evaluation runs", "Judges", "Prompts", "AI Gateway", "Agent versions", "Training runs",
               "Observability", "Playground", "MLflow Assistant")
ACCURACY_COLUMN = "metrics.`prediction/accuracy`"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="Chromium or chromedriver is absent; .ci/install-chromium.sh installs them"),
]


@dataclass(frozen=True)
class ServedStudy:
    link: str  # what `ofexp ui` printed
    base: str  # the UI's address
    store: str
    experiment_id: str
    study_id: str
    registered_model: str


@pytest.fixture(scope="module")
def served_study(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("ui-store")
    experiment = "ui-study"
    store = f"sqlite:///{root / 'mlflow.db'}"
    result = run_cli(["study", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--seeds", "1",
                      "--experiment-name", experiment], tracking_uri=store, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    client = mlflow.MlflowClient(store)
    study = client.get_run(result.last_line)
    geometric = client.search_runs([study.info.experiment_id], "params.method = 'geometric' and "
                                   "tags.`ofexp.stage` = 'fuse'")[0]
    with using_tracking_uri(store):
        mlflow.register_model(f"models:/{geometric.data.tags['ofexp.logged_model_id']}", "ui-geometric")

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["MLFLOW_EXPERIMENT_NAME"] = experiment  # the link then opens this experiment's runs
    log = root / "ui.err"
    with open(log, "w") as stderr:
        ui = subprocess.Popen([str(BIN / "ofexp"), "ui", "--port", str(port)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        link = _wait_for_link(ui, log)
        yield ServedStudy(link, f"http://127.0.0.1:{port}", store, study.info.experiment_id, study.info.run_id,
                          "ui-geometric")
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)


def _wait_for_link(ui: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"open (http\S+)", log.read_text())
        if found:
            return found.group(1)
        assert ui.poll() is None, f"ofexp ui ended: {log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"ofexp ui printed no link in {timeout} s: {log.read_text()}")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")  # a new user's browser
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.5).until(condition)


def _lines(driver) -> set[str]:
    from selenium.webdriver.common.by import By

    return {line.strip() for line in driver.find_element(By.TAG_NAME, "body").text.splitlines()}


def _page(driver, name: str, ready) -> set[str]:
    """Wait until `ready(driver)`, save the page as NAME.png, and return its text's lines."""
    _wait(driver, ready)
    time.sleep(1)  # the sidebar and panels settle after the main content
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    assert (SCREENSHOTS / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return _lines(driver)


def _assert_model_training(lines: set[str], page: str) -> None:
    genai = sorted(lines & set(GENAI_LINES))
    assert not genai, f"{page}: GenAI navigation {genai} (screenshot {SCREENSHOTS / page}.png)"
    assert "Model registry" in lines, f"{page}: the model-training sidebar is missing"


def _click_link(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_element(By.XPATH, f"//a[normalize-space(.)='{text}']")).click()


def _grid_run_names(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [a.text for a in driver.find_elements(By.XPATH, "//div[@role='gridcell']//a[contains(@href, '/runs/')]")]


def _expand_first_row(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//div[contains(@class, 'ag-cell-wrapper')]//button").click()


def _accuracy_in_view(driver) -> list[str]:
    """The accuracy column's cells (header first) that lie inside the window, unscrolled."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f"div[col-id='{ACCURACY_COLUMN}']")
    width = driver.execute_script("return window.innerWidth")
    return [c.text for c in cells if c.is_displayed() and 0 <= c.rect["x"] and c.rect["x"] + c.rect["width"] <= width]


def test_study_and_its_steps_are_listed_by_name(served_study, browser):
    import mlflow
    from selenium.webdriver.common.by import By

    client = mlflow.MlflowClient(served_study.store)
    study = client.get_run(served_study.study_id)
    steps = client.search_runs([served_study.experiment_id], f"tags.mlflow.parentRunId = '{study.info.run_id}'")
    assert len(steps) == 8  # two trains, two fusions, four evaluations
    names = [r.info.run_name for r in steps]
    assert len(set(names)) == len(names), f"two steps share a name: {sorted(names)}"

    # the link `ofexp ui` printed opens the experiment's runs table; nested, only the study shows
    browser.get(served_study.link)
    _page(browser, "study", lambda d: _grid_run_names(d) == [study.info.run_name])
    _expand_first_row(browser)
    _page(browser, "study_expanded", lambda d: sorted(_grid_run_names(d)) == sorted([study.info.run_name, *names]))

    # A fuse run's page: its description links both parents, and the study is its parent run.
    base, experiment = served_study.base, served_study.experiment_id
    fuse = next(r for r in steps if r.data.tags["ofexp.stage"] == "fuse")
    browser.get(f"{base}/#/experiments/{experiment}/runs/{fuse.info.run_id}")
    _page(browser, "fuse", lambda d: "Parent run" in _lines(d))
    hrefs = {a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")}
    for parent in fuse.data.tags["ofexp.parent_run_ids"].split(","):
        assert any(h and h.endswith(f"/runs/{parent}") for h in hrefs), f"no link to parent {parent}"
    assert study.info.run_name in _lines(browser)

    # The geometric fuse run's plots: its artifact view shows the interpolation curves as an image.
    geometric = next(r for r in steps if r.data.tags["ofexp.stage"] == "fuse" and r.data.params["method"] == "geometric")
    browser.get(f"{base}/#/experiments/{experiment}/runs/{geometric.info.run_id}/artifacts/plots/interpolation.png")
    _page(browser, "plots", lambda d: next((i for i in d.find_elements(By.TAG_NAME, "img")
                                            if int(i.get_attribute("naturalWidth") or 0) > 300), None))
    image = next(i for i in browser.find_elements(By.TAG_NAME, "img") if int(i.get_attribute("naturalWidth") or 0) > 300)
    assert int(image.get_attribute("naturalHeight")) > 200, "the curves' figure, not an icon"
    parent_1 = client.get_run(fuse.data.tags["ofexp.parent_1"])
    browser.get(f"{base}/#/runs/{parent_1.info.run_id}")  # the link's target opens the parent
    _page(browser, "parent", lambda d: d.current_url.endswith(f"/runs/{parent_1.info.run_id}")
          and parent_1.info.run_name in _lines(d))

    # An evaluate run's charts: a section per space ("prediction (5)"), each chart titled by its measure.
    evaluate = next(r for r in steps if r.data.tags["ofexp.stage"] == "evaluate")
    browser.get(f"{base}/#/experiments/{experiment}/runs/{evaluate.info.run_id}/model-metrics")
    _page(browser, "metrics", lambda d: {"prediction", "accuracy", "test_loss"} <= _lines(d))


def test_clicking_through_never_lands_on_a_genai_page(served_study, browser):
    import mlflow

    client = mlflow.MlflowClient(served_study.store)
    steps = client.search_runs([served_study.experiment_id], f"tags.mlflow.parentRunId = '{served_study.study_id}'")
    geometric = next(r for r in steps if r.data.tags["ofexp.stage"] == "fuse" and r.data.params["method"] == "geometric")
    accuracies = {round(r.data.metrics["prediction/accuracy"], 4) for r in steps if "prediction/accuracy" in r.data.metrics}

    # The runs table, from the printed link: accuracy and loss are columns in view, no search needed
    browser.get(served_study.link)
    lines = _page(browser, "1_runs", lambda d: "prediction/accuracy" in _accuracy_in_view(d))
    _assert_model_training(lines, "1_runs")
    assert {"prediction/accuracy", "prediction/test_loss", "accuracy_to_parents"} <= lines
    parents = [client.get_run(r).data.metrics["prediction/accuracy"]
               for r in geometric.data.tags["ofexp.parent_run_ids"].split(",")]
    assert geometric.data.metrics["accuracy_to_parents"] == pytest.approx(
        geometric.data.metrics["prediction/accuracy"] / (sum(parents) / len(parents)))
    _expand_first_row(browser)
    _page(browser, "2_runs_expanded", lambda d: len(_grid_run_names(d)) == 9)
    shown = {round(float(v), 4) for v in _accuracy_in_view(browser) if re.fullmatch(r"[0-9.]+", v)}
    assert shown and shown <= accuracies and len(shown) >= 3, f"accuracy column shows {shown}, runs have {accuracies}"

    # A run (clicked in the table), the experiment's logged models, the registry, a model, its version
    _click_link(browser, geometric.info.run_name)
    _assert_model_training(_page(browser, "3_run", lambda d: "Parent run" in _lines(d)), "3_run")
    _click_link(browser, "Models")
    lines = _page(browser, "4_logged_models", lambda d: "Model name" in _lines(d))
    _assert_model_training(lines, "4_logged_models")
    _click_link(browser, "Model registry")
    lines = _page(browser, "5_registry", lambda d: served_study.registered_model in _lines(d))
    _assert_model_training(lines, "5_registry")
    _close_dialog(browser)  # MLflow's one-time "new Model Registry UI" notice covers the list
    _click_link(browser, served_study.registered_model)
    _assert_model_training(_page(browser, "6_registered_model", lambda d: "Version 1" in _lines(d)), "6_registered_model")
    _click_link(browser, "Version 1")
    _assert_model_training(_page(browser, "7_model_version", lambda d: "Source Run" in _lines(d)), "7_model_version")

    # Back: the browser's back button, then the sidebar's Runs
    browser.back()
    _assert_model_training(_page(browser, "8_back", lambda d: "Version 1" in _lines(d)), "8_back")
    _click_link(browser, "Runs")
    lines = _page(browser, "9_runs_again", lambda d: "prediction/accuracy" in _accuracy_in_view(d))
    _assert_model_training(lines, "9_runs_again")

    # The check is real: an address that asks for GenAI gets its navigation, and the check sees it
    browser.get(f"{served_study.base}/#/experiments/{served_study.experiment_id}?workflowType=genai")
    lines = _page(browser, "10_genai_when_asked", lambda d: "Agent versions" in _lines(d))
    with pytest.raises(AssertionError, match="GenAI navigation"):
        _assert_model_training(lines, "10_genai_when_asked")


def _close_dialog(driver) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//div[@role='dialog']//button[@aria-label='Close']"):
        if button.is_displayed():
            button.click()
    _wait(driver, lambda d: not any(b.is_displayed() for b in d.find_elements(By.XPATH, "//div[@role='dialog']")))
