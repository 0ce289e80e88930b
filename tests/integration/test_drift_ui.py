"""Drift you can browse (issue 20): a real drift check of the monitor, its snapshot as a
headless Chromium renders it in the Evidently UI, and its report in a real MLflow server.

The stack here is only MLflow and the Evidently UI (the stack's ``evidently`` component,
``evidently ui`` on the monitor's workspace) on free ports in a temporary home. The check
is the monitor's own code path (``on_verdict`` -> ``check_window`` -> report, workspace
snapshot, MLflow upload) on synthetic windows: a reference and a window in which ten
handcrafted features are shifted. Chromium is Debian's ``chromium`` (scripts/bootstrap.sh).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from spamops_cli import stack as local_stack
from spamops_monitor.adapters import EvidentlyWorkspace, MlflowReports, project_id
from spamops_monitor.handlers import check_window
from spamops_runtime.settings import PlatformSettings
from spamops_schemas.registry import (
    MONITORING_EXPERIMENT,
    MONITORING_REPORTS_ARTIFACT,
    MONITORING_RUN_NAME,
    RUN_TAG_MONITORED_MODEL,
    RUN_TAG_MONITORED_VERSION,
)

from tests.integration.conftest import StackFactory
from tests.unit.test_monitor import (
    MODEL,
    SHIFTED,
    Clock,
    feed,
    make_deps,
    read_json,
    reference_profile,
    report_path,
    sample,
)

pytestmark = [pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def ui_stack(stack_factory: StackFactory) -> PlatformSettings:
    """MLflow and the Evidently UI, nothing else, on free ports."""
    return stack_factory(components=["mlflow", "evidently"], name="drift-ui")


def render(url: str, profile: Path, expect: Callable[[str], bool], attempts: int = 3) -> str:
    """The DOM of ``url`` once Chromium ran the page's scripts (headless; the virtual time
    budget lets the single-page app fetch its data). Retried while ``expect`` fails: on a
    busy machine the first render may still show a spinner."""
    assert CHROMIUM, "chromium is not installed: run scripts/bootstrap.sh"
    dom = ""
    for attempt in range(1, attempts + 1):
        result = subprocess.run(
            [
                CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                f"--virtual-time-budget={15_000 * attempt}", "--dump-dom", url,
            ],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"chromium failed: {result.stderr[-2000:]}"
        dom = result.stdout
        if expect(dom):
            return dom
    return dom


async def test_a_drift_check_is_browsable_in_the_evidently_ui_and_in_mlflow(
    ui_stack: PlatformSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ui = ui_stack.evidently_ui
    # The row `spamops status` shows; ready = GET /api/version answered 200.
    status = {s.name: s for s in local_stack.status(ui_stack)}["evidently"]
    assert status.running and status.ready and status.endpoint == ui

    # ------------------------------------------------ a real drift check, monitor code
    clock = Clock()
    deps, published, sink, _ = make_deps(tmp_path, lambda v: reference_profile(v), clock)
    deps.workspace = EvidentlyWorkspace(ui_stack.evidently_workspace_dir, ui, keep=10)
    uploads = MlflowReports(ui_stack.mlflow_uri)
    deps.uploads = uploads
    assert await deps.profiles.wait(1) is not None
    await feed(deps, sample(300, seed=8, shifted=True), "shift")
    event = await check_window(sink.windows[0], deps)
    assert event is not None and published == [event]
    assert {f.feature for f in event.drifted_features} == set(SHIFTED)
    project = str(project_id(MODEL))
    assert event.report_url.startswith(f"{ui}/projects/{project}/reports/")

    # ------------------------------------------------ what a person sees in a browser
    profile = tmp_path / "chromium"

    def names_the_drift(dom: str) -> bool:
        return "10 out of 25" in dom and all(feature in dom for feature in SHIFTED)

    page = render(event.report_url, profile, names_the_drift)
    assert "Dataset Drift" in page and "Drifted Columns" in page, page[-3000:]
    assert names_the_drift(page), "the report page does not name the drifted features"
    assert MODEL in page  # the project's name in the page's breadcrumbs
    listing = render(f"{ui}/projects/{project}/reports", profile, lambda d: "verdicts" in d)
    assert "v1 " in listing and "300 verdicts drift" in listing
    home = render(f"{ui}/", profile, lambda d: MODEL in d)
    assert MODEL in home

    # ------------------------------------------------ the same report in MLflow
    uploads.close(wait_s=120)
    client = mlflow.MlflowClient(ui_stack.mlflow_uri)
    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == MONITORING_RUN_NAME.format(version=1)
    assert run.info.status == "FINISHED"  # never left RUNNING
    assert run.data.tags[RUN_TAG_MONITORED_MODEL] == MODEL
    assert run.data.tags[RUN_TAG_MONITORED_VERSION] == "1"
    html = report_path(event.report_uri)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, MONITORING_REPORTS_ARTIFACT)}
    assert logged == {
        f"{MONITORING_REPORTS_ARTIFACT}/{html.name}",
        f"{MONITORING_REPORTS_ARTIFACT}/{html.with_suffix('.json').name}",
    }
    summary = read_json(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id,
                artifact_path=f"{MONITORING_REPORTS_ARTIFACT}/{html.with_suffix('.json').name}",
                dst_path=str(tmp_path / "downloaded"),
                tracking_uri=ui_stack.mlflow_uri,
            )
        )
    )
    assert summary["report_url"] == event.report_url and summary["drift"] is True
    assert run.data.metrics["drift_share"] == pytest.approx(event.drift_share)
    assert run.data.metrics["psi.body_length"] > 0.1
    # A restarted monitor finds the version's run by its tags instead of making another.
    assert MlflowReports(ui_stack.mlflow_uri).run_id(MODEL, 1) == run.info.run_id

    # ------------------------------------------------ MLflow down: the stream goes on
    local_stack.stop(ui_stack, ["mlflow"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast in this test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    clock.now += deps.settings.cooldown_s
    await feed(deps, sample(300, seed=9, shifted=True), "later", start=300)
    with caplog.at_level(logging.WARNING, logger="spamops_monitor.adapters"):
        started = time.monotonic()
        again = await check_window(sink.windows[1], deps)
        checked_in = time.monotonic() - started
        uploads.close(wait_s=120)
    assert again is not None and again.report_url.startswith(f"{ui}/projects/{project}/")
    assert report_path(again.report_uri).is_file()  # the local report stays
    assert checked_in < 60, f"the check waited for MLflow ({checked_in:.0f} s)"
    assert any(
        r.getMessage() == "cannot log the report to MLflow (kept locally)" for r in caplog.records
    )
