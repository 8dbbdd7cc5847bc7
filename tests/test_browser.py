"""The MLflow UI in a real headless browser: a real tiny study, ``sweeper ui``, Debian's Chromium via Playwright.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (no ``playwright install``: the
system Chromium is driven through ``executable_path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_dashboard import start_ui, stop_ui

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.study.spec import parse_spec

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} absent: apt-get install -y chromium")


def test_ui_link_shows_trials_and_their_dropout_rates_without_a_click(tmp_path: Path) -> None:
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright").sync_playwright
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    api.launch(
        parse_spec(tiny_spec_dict("browser")), storage=f"sqlite:///{tmp_path}/study.db", tracking=uri, score_test=False
    )
    from mlflow import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name("browser")
    trials = {
        r.info.run_name: r.data.params
        for r in MlflowClient(uri).search_runs([exp.experiment_id])
        if r.data.tags.get("sweeper.role") == "trial"
    }
    assert sorted(trials) == ["trial-0", "trial-1", "trial-2"]

    proc, url = start_ui("browser", uri, tmp_path)
    shot = tmp_path / "mlflow_runs.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1800, "height": 800})
            page.goto(url)
            # the link `sweeper ui` prints opens the trial runs with a column per searched parameter: no clicks
            page.get_by_text("trial-0", exact=True).wait_for(timeout=90_000)
            close = page.get_by_role("button", name="Close")  # the assistant's side panel takes table width
            if close.count() == 1:
                close.click()
            for name in ("dropout.input", "dropout.hidden_1"):
                page.get_by_role("columnheader", name=name).first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
            browser.close()
    finally:
        stop_ui(proc, url)
    print(f"screenshot: {shot}")
    # the UI's Model training side (Runs, Models, Traces), not its GenAI side (Overview, Judges, Prompts, ...)
    assert "Model registry" in text and "Judges" not in text, text[:500]
    for name, params in trials.items():
        assert name in text
        for p in ("dropout.input", "dropout.hidden_1"):
            assert params[p][:6] in text, f"{name} {p}={params[p]} not on the page"
