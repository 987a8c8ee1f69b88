"""The MLflow UI and the HTML report in a real (headless) Chromium.

Needs Debian's chromium and chromium-driver (.ci/run installs them); skips with
the reason where they cannot be had. Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ffnn import cli
from ffnn.tracking import Tracker, free_port, ui_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # `make test-slow`
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="no Chromium/ChromeDriver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny compare, its report, and a tiny tune, in one temporary store."""
    from conftest import tune_toml, write_tiny_mirror

    from ffnn import data

    tmp = tmp_path_factory.mktemp("browser")
    sums = write_tiny_mirror(tmp / "mirror")
    spec = data.DatasetSpec(name="tiny", folder="TINY", sha256=sums, mirrors=(str(tmp / "mirror"),))
    data.DATASETS["tiny"] = spec
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    common = ["--dataset", "tiny", "--data-dir", str(tmp / "data"), "--tracking-uri", uri]
    assert cli.main(["compare", *common, "--experiment", "browse", "--models", "C,D", "--seeds", "2",
                     "--iters", "40", "--eval-every", "20", "--batch-size", "20", "--workers", "1",
                     "--no-report", "--log-models", "all"]) == 0  # every child run's model in the runs table
    assert cli.main(["report", "--tracking-uri", uri, "--experiment", "browse", "--out", str(tmp / "report")]) == 0
    (tmp / "tune.toml").write_text(tune_toml("browse-tune", 3, f"startup_trials = 2\nworkers = 1\n"
                                                              f"reports_dir = '{tmp / 'tune-reports'}'"))
    assert cli.main(["tune", "--config", str(tmp / "tune.toml"), *common[2:],  # the file names the dataset
                     "--storage", f"sqlite:///{tmp}/mlruns/optuna.db"]) == 0
    yield {"tmp": tmp, "uri": uri}
    data.DATASETS.pop("tiny", None)


@pytest.fixture(scope="module")
def ui(store):
    """The MLflow UI on the test store, as `ffnn ui` starts it."""
    with ui_server(store["uri"], 0, log=store["tmp"] / "ui.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> None:
    """Into the test's tmp dir, and into $FFNN_SCREENSHOTS too when set (make screenshots)."""
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("FFNN_SCREENSHOTS"):
        Path(os.environ["FFNN_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(os.environ["FFNN_SCREENSHOTS"]) / name)


def wait_for(condition, what: str, timeout: float = 45) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def wait_for_text(driver, *texts, timeout=45):
    """Until the page's text contains every one of ``texts``; returns the text."""
    deadline = time.time() + timeout
    body = ""
    while time.time() < deadline:
        body = driver.find_element("tag name", "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    missing = [t for t in texts if t not in body]
    raise AssertionError(f"page never showed {missing}; it showed: {body[:800]!r}")


def test_mlflow_ui_shows_comparison_nested_runs_params_and_chart(store, ui, browser, tmp_path):
    tracker = Tracker.open(store["uri"])
    exp = tracker.experiment_id("browse", create=False)
    parent = tracker.search(exp, "tags.`ffnn.kind` = 'comparison'")[0]
    child = next(r for r in tracker.search(exp, "tags.`ffnn.kind` = 'run'") if r.info.run_name == "D seed=1")
    url = ui
    browser.get(f"{url}/#/experiments/{exp}/runs")
    wait_for_text(browser, parent.info.run_name)
    _expand(browser, parent.info.run_name)  # child runs are nested under their comparison
    wait_for_text(browser, "C seed=0", "C seed=1", "D seed=0", "D seed=1")
    screenshot(browser, tmp_path, "mlflow_experiment.png")

    browser.get(f"{url}/#/experiments/{exp}/runs/{child.info.run_id}")
    wait_for_text(browser, "D seed=1", "hidden_sizes", "100,100", "device", "cpu", parent.info.run_name)
    screenshot(browser, tmp_path, "mlflow_run.png")

    browser.get(f"{url}/#/experiments/{exp}/runs/{child.info.run_id}/model-metrics")
    wait_for_text(browser, "test_accuracy", "train_loss")
    wait_for(lambda: len(browser.find_elements("css selector", ".js-plotly-plot")) >= 2, "metric charts drawn")
    screenshot(browser, tmp_path, "mlflow_metrics.png")


def _expand(driver, run_name: str, timeout: float = 20) -> None:
    """Click the expand toggle in the name cell of the run called ``run_name``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for el in driver.find_elements("xpath", f"//*[text()={run_name!r}]"):
            cell = el.find_elements("xpath", "./ancestor::*[.//button][1]")
            if cell:
                cell[0].find_element("tag name", "button").click()
                return
        time.sleep(0.5)
    raise AssertionError(f"no expand toggle beside run {run_name!r}")


def test_mlflow_ui_shows_a_study_with_nested_trials(store, ui, browser, tmp_path):
    tracker = Tracker.open(store["uri"])
    exp = tracker.experiment_id("browse-tune", create=False)
    study = tracker.search(exp, "tags.`ffnn.kind` = 'study'")[0]
    trials = sorted(r.info.run_name for r in tracker.search(exp, "tags.`ffnn.kind` = 'trial'"))
    assert len(trials) == 3
    url = ui
    browser.get(f"{url}/#/experiments/{exp}/runs")
    wait_for_text(browser, study.info.run_name)
    _expand(browser, study.info.run_name)
    wait_for_text(browser, *trials)
    screenshot(browser, tmp_path, "mlflow_study.png")


def test_html_report_renders_offline_with_plots(store, browser, tmp_path):
    page = Path(store["tmp"]) / "report" / "summary.html"
    browser.get(page.as_uri())
    wait_for_text(browser, "C -> D", "Answer", "Models")
    images = browser.find_elements("tag name", "img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", img) > 100 for img in images)
    assert browser.find_elements("tag name", "table")
    screenshot(browser, tmp_path, "report.png")


def test_new_user_reaches_the_comparison_runs_from_the_home_page(store, ui, browser, tmp_path):
    """Home page -> the sidebar's 'Model training' switch -> the experiment: its runs table."""
    tracker = Tracker.open(store["uri"])
    exp = tracker.experiment_id("browse", create=False)
    parent = tracker.search(exp, "tags.`ffnn.kind` = 'comparison'")[0]
    browser.get(f"{ui}/")
    browser.execute_script("window.localStorage.clear()")  # a browser that has never seen MLflow
    browser.get(f"{ui}/")
    wait_for_text(browser, "Model training", "browse")
    browser.find_element("xpath", "//*[text()='Model training']").click()
    wait_for(lambda: browser.find_elements("xpath", "//a[text()='browse']"), "the experiment's link")
    browser.find_element("xpath", "//a[text()='browse']").click()
    body = wait_for_text(browser, parent.info.run_name, "Run Name", "Made by ffnn compare")
    assert "Traces" not in body.split("Run Name")[1][:200]  # the runs table, not the traces overview
    assert f"/experiments/{exp}/runs" in browser.current_url
    screenshot(browser, tmp_path, "mlflow_home_to_runs.png")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def _proc(pid: int, name: str) -> bytes | None:
    """/proc/PID/NAME of a live process; None for one that ended since it was listed (a short-lived helper)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except (ProcessLookupError, FileNotFoundError):
        return None


def _environ(pid: int) -> dict[str, str] | None:
    if (data := _proc(pid, "environ")) is None:
        return None
    raw = data.split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


# variables under which MLflow never sends telemetry anyway: removed, so that the test sees ffnn's own switch
QUIET_ANYWAY = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
                "FFNN_TELEMETRY")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_ffnn_ui_links_open_the_runs_table_and_its_server_sends_no_telemetry(store, browser, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ANYWAY}
    proc = subprocess.Popen([sys.executable, "-m", "ffnn", "ui", "--port", "0", "--tracking-uri", store["uri"]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        lines = []
        while not any(line.startswith("  runs of browse-tune:") for line in lines):
            line = proc.stdout.readline()
            assert line, "ffnn ui ended early:\n" + "".join(lines)
            lines.append(line)
        url = lines[0].split()[3]
        links = dict(line.strip().removeprefix("runs of ").split(": ", 1) for line in lines if "runs of" in line)
        assert set(links) >= {"browse", "browse-tune"}

        envs = {pid: env for pid in _descendants(proc.pid) if (env := _environ(pid)) is not None}
        assert envs, "no mlflow server process under ffnn ui"
        for pid, env in envs.items():
            assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true", f"process {pid}"
        with urllib.request.urlopen(f"{url}/ajax-api/3.0/mlflow/ui-telemetry", timeout=10) as r:
            assert json.loads(r.read())["disable_ui_telemetry"] is True  # the UI's own events go nowhere

        tracker = Tracker.open(store["uri"])
        parent = tracker.search(tracker.experiment_id("browse", create=False),
                                "tags.`ffnn.kind` = 'comparison'")[0]
        browser.get(links["browse"])
        wait_for_text(browser, parent.info.run_name, "Run Name", "Models")
        _expand(browser, parent.info.run_name)
        body = wait_for_text(browser, "C seed=0", "D seed=1")
        # the Models column names each child run's LoggedModel (--log-models all in the store)
        assert body.splitlines().count("model") >= 4, body
        screenshot(browser, tmp_path, "mlflow_runs_link.png")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0 and "MLflow UI stopped" in out


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not shutil.which("make"), reason="no make")
def test_make_dashboard_shows_the_study_and_its_trials(store, browser, tmp_path):
    """`make dashboard` (optuna-dashboard) on the tiny study of the store fixture; telemetry off there too."""
    port = free_port()
    storage = f"sqlite:///{store['tmp']}/mlruns/optuna.db"
    # -o install: the venv is set up already; make must not reinstall it under the test
    with open(tmp_path / "dashboard.log", "w") as log:  # make writes to its own copy of the file
        proc = subprocess.Popen(["make", "-s", "-o", "install", "dashboard", f"STORAGE={storage}",
                                 f"DASHBOARD_PORT={port}", f"BIN={os.path.dirname(sys.executable)}"],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={k: v for k, v in os.environ.items() if k not in QUIET_ANYWAY},
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/api/studies", timeout=2):
                    return True
            except OSError:
                return False
        wait_for(answers, "optuna-dashboard to answer", timeout=90)
        dashboards = [p for p in _descendants(proc.pid) if b"optuna-dashboard" in (_proc(p, "cmdline") or b"")]
        envs = [env for p in dashboards if (env := _environ(p)) is not None]
        assert envs and all(env.get("MLFLOW_DISABLE_TELEMETRY") == "true" for env in envs)

        browser.get(f"{url}/dashboard")
        wait_for_text(browser, "tune-C")
        browser.find_element("xpath", "//*[text()='tune-C']").click()
        wait_for_text(browser, "History")
        screenshot(browser, tmp_path, "optuna_dashboard.png")
        browser.get(browser.current_url.rstrip("/") + "/trials")
        wait_for_text(browser, "Trial 0", "Trial 1", "Trial 2")
        screenshot(browser, tmp_path, "optuna_dashboard_trials.png")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
