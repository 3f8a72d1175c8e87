"""The MLflow UI as `ofexp ui` serves it: in model-training mode, with ofexp's metrics as columns.

MLflow 3.17's UI keeps two choices in the browser's localStorage, and neither can be
set from the server or the experiment (docs/commands.md, "What the UI remembers"):

- The sidebar's mode, GenAI or model training: key `mlflow.workflowType_v1`, GenAI when
  unset. A `?workflowType=machine_learning` address overrides it for that page only, so
  the first click on a run fell back to GenAI (Evaluation runs, Judges, Prompts, AI
  Gateway; the logged models page titled "Agent versions"). The experiment tag
  `mlflow.experimentKind` is read only where the mode switch is off, and in 3.17 it is
  always on.
- The runs table's columns: key `MLflowLocalStorage-1.1-ExperimentPage-<ids>-ReactComponentState`,
  `selectedColumns`; by default Source, Models and Dataset, no metric. A shared view
  (`?viewStateShareKey=`, stored as an experiment tag) applies only while its address is
  open and is not saved, so going back to the table lost it.

So the page's HTML gets a script that runs before MLflow's own: it stores the mode the
address asks for (model training unless the user chose otherwise in the sidebar); it
keeps the GenAI assistant panel, which a local server opens by itself on a first visit,
closed; and the first time an experiment's table state is read, it adds ofexp's metric
columns to it, next to the run names. Each is done once per browser: a user's later
changes are kept. Everything else is MLflow's own app.

`ofexp ui` runs this file by path (ofexp/tracking/ui_server.py), as one process: uvicorn
with a single worker, in the process that set up the store. Run so, it imports MLflow,
Starlette and uvicorn only, not the ofexp package (whose import takes seconds of torch).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # this file's folder: its modules must not shadow top-level ones

import argparse
import json
import logging
import os
import warnings

_PAGE_SCRIPT = """<script>/* ofexp ui: model-training mode, ofexp's metrics as columns */(function () {
  var store = window.localStorage, getItem = Storage.prototype.getItem, WORKFLOW = "mlflow.workflowType_v1";
  var PAGE = /^MLflowLocalStorage-1\\.1-ExperimentPage-(.*)-ReactComponentState$/;
  var METRICS = __COLUMNS__, DEFAULTS = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"];
  var ORDER = ["attributes.`Run Name`", "runDateAndNestInfo"].concat(METRICS,
    ["duration", "attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]);
  function once(mark, change) {  /* once per browser: the user's own later choices stay */
    if (getItem.call(store, mark) === null) { change(); store.setItem(mark, "1"); }
  }
  try {
    var asked = /[?&]workflowType=(genai|machine_learning)(&|$)/.exec(location.hash + "&" + location.search);
    if (asked) store.setItem(WORKFLOW, JSON.stringify(asked[1]));
    once("ofexp.modelTrainingMode", function () {
      if (!asked) store.setItem(WORKFLOW, JSON.stringify("machine_learning"));
    });
    once("ofexp.assistantClosed", function () {  /* a GenAI chat that opens by itself on a local server */
      store.setItem("mlflow.assistant.panelOpen_v1", "false");
      store.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
    });
  } catch (e) {}
  Storage.prototype.getItem = function (key) {
    var text = getItem.call(this, key), page = this === store && PAGE.exec(key);
    if (!page) return text;
    try {
      once("ofexp.metricColumnsAdded-" + page[1], function () {
        var state = text ? JSON.parse(text) : {}, columns = state.selectedColumns || DEFAULTS.slice();
        METRICS.forEach(function (c) { if (columns.indexOf(c) < 0) columns.push(c); });
        state.selectedColumns = columns;
        if (!state.columnOrder || !state.columnOrder.length) {
          state.columnOrder = ORDER;
          state.columnWidths = state.columnWidths || {};
          METRICS.forEach(function (c) { state.columnWidths[c] = state.columnWidths[c] || 170; });
        }
        text = JSON.stringify(state);
        store.setItem(key, text);
      });
    } catch (e) {}
    return text;
  };
})();</script>"""


def metric_column(metric_key: str) -> str:
    """The runs table's name for a metric's column (MLflow's `metrics.` + key in backquotes)."""
    return f"metrics.`{metric_key}`"


def page_script(metric_keys: list[str]) -> str:
    # "</" cannot end the script early: json.dumps leaves "/" alone, so escape it
    columns = json.dumps([metric_column(k) for k in metric_keys]).replace("</", "<\\/")
    return _PAGE_SCRIPT.replace("__COLUMNS__", columns)


def with_page_script(index_html: str, script: str) -> str:
    """MLflow's index.html with `script` first in its <head>, before MLflow's deferred bundle runs."""
    head = index_html.find("<head>")
    if head < 0:
        raise ValueError("MLflow's index.html has no <head>: is this MLflow's UI build?")
    at = head + len("<head>")
    return index_html[:at] + script + index_html[at:]


def create_app(metric_keys: list[str]):
    """MLflow's own ASGI app (mlflow.server.fastapi_app), whose page carries the script.

    The tracking server's environment (store, artifact root) must be set before this import.
    """
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    index = os.path.join(flask_app.static_folder, "index.html")
    with open(index, encoding="utf-8") as f:
        html = with_page_script(f.read(), page_script(metric_keys))

    async def page(_request) -> HTMLResponse:
        # never cached: a browser must not keep a page without the script
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    # ahead of the Flask app that MLflow mounts at "/" (and behind MLflow's security middleware)
    app.router.routes.insert(0, Route("/", page, methods=["GET", "HEAD"]))
    return app


def serve(store: str, host: str, port: int, metric_keys: list[str], verbose: bool) -> None:
    """Set up the tracking server's environment for `store`, as `mlflow ui` does, and serve until stopped."""
    if not verbose:
        warnings.simplefilter("ignore")  # Starlette's and MLflow's deprecation notices
    import mlflow
    from mlflow.server.constants import (ARTIFACT_ROOT_ENV_VAR, ARTIFACTS_DESTINATION_ENV_VAR,
                                         BACKEND_STORE_URI_ENV_VAR, REGISTRY_STORE_URI_ENV_VAR,
                                         SERVE_ARTIFACTS_ENV_VAR)
    from mlflow.server.handlers import initialize_backend_stores
    from mlflow.store.tracking import DEFAULT_ARTIFACTS_URI

    logging.getLogger(mlflow.__name__).setLevel(logging.INFO if verbose else logging.WARNING)
    # `mlflow ui`'s defaults: artifacts served by the server, new ones under ./mlartifacts
    os.environ.update({BACKEND_STORE_URI_ENV_VAR: store, REGISTRY_STORE_URI_ENV_VAR: store,
                       ARTIFACT_ROOT_ENV_VAR: DEFAULT_ARTIFACTS_URI, SERVE_ARTIFACTS_ENV_VAR: "true",
                       ARTIFACTS_DESTINATION_ENV_VAR: "./mlartifacts"})
    initialize_backend_stores(store, store, DEFAULT_ARTIFACTS_URI)
    import uvicorn

    # one worker, in this process: a stop reaches the whole server, and it starts once, not four times
    uvicorn.run(create_app(metric_keys), host=host, port=port, workers=1, timeout_graceful_shutdown=1,
                log_level="info" if verbose else "warning", access_log=verbose)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The MLflow UI in model-training mode (ofexp ui).")
    parser.add_argument("--store", required=True, help="the backend store URI, e.g. sqlite:///mlflow.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metric", action="append", default=[], help="a metric shown as a column (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="uvicorn's and MLflow's INFO lines and warnings")
    args = parser.parse_args(argv)
    serve(args.store, args.host, args.port, args.metric, args.verbose)


if __name__ == "__main__":
    main()
