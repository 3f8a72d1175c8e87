"""The MLflow UI, in headless Chromium, shows a study legibly.

A tiny study runs against the session's `mlflow server`; Selenium drives
Debian's chromium with its chromedriver. The runs table lists the study run by
name, and expanding it shows every nested step by name; a step's page links its
parents and names the study as its parent run; an evaluate run's charts are
grouped by space. The experiment opens on its runs table (not MLflow 3's GenAI
overview) from the link `ofexp ui` prints, and a fuse run's plots show. Screenshots are kept as test artifacts in
$OFEXP_TEST_ARTIFACTS/ui (default: test-artifacts/ui in the repository): runs.png,
fuse.png, plots.png, metrics.png.
Skipped only where Chromium or chromedriver is absent (.ci/install-chromium.sh).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli_in_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000")
TIMEOUT = 90  # seconds for the UI to render; the page loads its JS bundle from the server
SCREENSHOTS = Path(os.environ.get("OFEXP_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "ui"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="Chromium or chromedriver is absent; .ci/install-chromium.sh installs them"),
]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.5).until(condition)


def _grid_run_names(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [a.text for a in driver.find_elements(By.XPATH, "//div[@role='gridcell']//a[contains(@href, '/runs/')]")]


def test_study_and_its_steps_are_listed_by_name(mlflow_server, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    result = run_cli_in_process(["study", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--seeds", "1",
                                 "--no-log-model", "--experiment-name", experiment], mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    study_id = result.last_line
    client = MlflowClient(mlflow_server.uri)
    study = client.get_run(study_id)
    steps = client.search_runs([study.info.experiment_id], f"tags.mlflow.parentRunId = '{study_id}'")
    assert len(steps) == 8  # two trains, two fusions, four evaluations

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # the experiment's page as `ofexp ui` links it: on the runs table, not MLflow 3's GenAI overview
    from ofexp.tracking.server import experiment_page

    browser.get(experiment_page(mlflow_server.uri, study.info.experiment_id))
    link = _wait(browser, lambda d: d.find_element(By.XPATH, f"//a[normalize-space(.)='{study.info.run_name}']"))
    # Nested: only the study is listed until its row is expanded.
    assert _grid_run_names(browser) == [study.info.run_name]
    link.find_element(By.XPATH, "./ancestor::div[contains(@class, 'ag-cell-wrapper')]//button").click()
    expected = sorted([study.info.run_name] + [r.info.run_name for r in steps])
    _wait(browser, lambda d: sorted(_grid_run_names(d)) == expected)
    browser.save_screenshot(str(SCREENSHOTS / "runs.png"))
    assert (SCREENSHOTS / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [r.info.run_name for r in steps]
    assert len(set(names)) == len(names), f"two steps share a name: {sorted(names)}"

    # A fuse run's page: its description links both parents, and the study is its parent run.
    fuse = next(r for r in steps if r.data.tags["ofexp.stage"] == "fuse")
    browser.get(f"{mlflow_server.uri}/#/experiments/{study.info.experiment_id}/runs/{fuse.info.run_id}")
    _wait(browser, lambda d: "Parent run" in d.find_element(By.TAG_NAME, "body").text)
    hrefs = {a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")}
    for parent in fuse.data.tags["ofexp.parent_run_ids"].split(","):
        assert any(h and h.endswith(f"/runs/{parent}") for h in hrefs), f"no link to parent {parent}"
    assert study.info.run_name in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(SCREENSHOTS / "fuse.png"))

    # The geometric fuse run's plots: its artifact view shows the interpolation curves as an image.
    geometric = next(r for r in steps if r.data.tags["ofexp.stage"] == "fuse" and r.data.params["method"] == "geometric")
    browser.get(f"{mlflow_server.uri}/#/experiments/{study.info.experiment_id}/runs/{geometric.info.run_id}"
                "/artifacts/plots/interpolation.png")
    image = _wait(browser, lambda d: next((i for i in d.find_elements(By.TAG_NAME, "img")
                                           if i.get_attribute("naturalWidth") not in (None, "0")
                                           and int(i.get_attribute("naturalWidth")) > 300), None))
    assert int(image.get_attribute("naturalHeight")) > 200, "the curves' figure, not an icon"
    browser.save_screenshot(str(SCREENSHOTS / "plots.png"))
    parent_1 = client.get_run(fuse.data.tags["ofexp.parent_1"])
    browser.get(f"{mlflow_server.uri}/#/runs/{parent_1.info.run_id}")  # the link's target opens the parent
    _wait(browser, lambda d: d.current_url.endswith(f"/runs/{parent_1.info.run_id}")
          and parent_1.info.run_name in d.find_element(By.TAG_NAME, "body").text)

    # An evaluate run's charts: a section per space ("prediction (5)"), each chart titled by its measure.
    evaluate = next(r for r in steps if r.data.tags["ofexp.stage"] == "evaluate")
    browser.get(f"{mlflow_server.uri}/#/experiments/{study.info.experiment_id}/runs/{evaluate.info.run_id}/model-metrics")
    _wait(browser, lambda d: {"prediction", "accuracy", "test_loss"} <= set(d.find_element(By.TAG_NAME, "body").text.splitlines()))
    browser.save_screenshot(str(SCREENSHOTS / "metrics.png"))
