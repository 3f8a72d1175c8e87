"""The page `ofexp ui` serves (ofexp/tracking/ui_app.py), without a server or a browser.

tests/ui/test_browser.py checks what a user sees; these check, in a second, that the
localStorage keys the page's script sets are the ones the installed MLflow UI reads.
"""
from __future__ import annotations

import re
from pathlib import Path

import mlflow.server

from ofexp.tracking.ui_app import metric_column, page_script, with_page_script

BUNDLE = Path(mlflow.server.__file__).parent / "js" / "build" / "static" / "js"


def _bundle_text() -> str:
    return "".join(path.read_text(errors="replace") for path in BUNDLE.glob("*.js"))


def test_the_script_sets_keys_the_installed_mlflow_ui_reads():
    bundle = _bundle_text()
    # MLflow's localStorage hook stores key K, version V as "K_vV"
    for key, version in (("mlflow.workflowType", 1), ("mlflow.assistant.panelOpen", 1),
                         ("mlflow.assistant.fab.autoOpenedOnFirstLoad", 1)):
        assert f'key:"{key}",version:{version}' in bundle, f"MLflow's UI no longer reads {key} (version {version})"
        assert f"{key}_v{version}" in page_script([])
    # the runs table's persisted state: MLflowLocalStorage-<version>-ExperimentPage-<ids>-ReactComponentState
    assert 'version="1.1"' in bundle and '"ExperimentPage"' in bundle and 'reactComponentStateKey="ReactComponentState"' in bundle
    assert '"machine_learning"' in bundle and 'get("workflowType")' in bundle
    assert 'e+".`"+t+"`"' in bundle  # a column's name: <type>.`<key>`, as metric_column writes it
    assert metric_column("prediction/accuracy") == "metrics.`prediction/accuracy`"


def test_the_script_comes_first_in_the_head_and_metric_names_cannot_end_it():
    html = '<!doctype html><html><head><meta charset="utf-8"/><script defer src="main.js"></script></head></html>'
    script = page_script(["prediction/accuracy", "evil</script><script>alert(1)"])
    page = with_page_script(html, script)
    assert page.startswith("<!doctype html><html><head><script>/* ofexp ui")
    assert page.index("ofexp ui") < page.index('src="main.js"')
    assert len(re.findall(r"</script>", script, flags=re.IGNORECASE)) == 1  # its own end only
    assert '"metrics.`prediction/accuracy`"' in script
