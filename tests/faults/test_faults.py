"""Fault drills on the real platform: while emails flow, hurt one part, then count.

One stack runs everything (Kafka, Redis, MLflow, Triton and the four services);
a tiny training gives a production model. Each drill streams numbered emails,
injects one fault (kill -9 of a service, Kafka restarted, Triton or Redis
stopped, MLflow stopped while a model is registered), repairs it and checks:
every email has a verdict (duplicates allowed, loss not), nothing is left
half-done, and the hurt service logged what happened. The numbers are printed
(and appended to $SPAMOPS_FAULTS_REPORT when set).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import mlflow
import pytest
from spamops_cli import stack as local_stack
from spamops_cli.stack.paths import StackPaths
from spamops_cli.stack.process import kill_group, read_pid, wait_group_gone
from spamops_runtime.replay import consumer_lags
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import DatasetReady, ModelRegistered, ModelTrained

from tests.faults.drill import Drill
from tests.integration.conftest import StackFactory
from tests.integration.helpers import events_on, metric_sum, send, spamops

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

MODEL = "spam-detector"
ENV = {
    "SPAMOPS_TRAINER_NUM_SAMPLES": "2",
    "SPAMOPS_TRAINER_MAX_ESTIMATORS": "50",
    "SPAMOPS_TRAINER_GRACE_REPORTS": "1",
    "SPAMOPS_REGISTRY_BRIDGE_MIN_F1": "0.6",
    "SPAMOPS_REGISTRY_BRIDGE_MAX_FALSE_POSITIVE_RATE": "0.2",
    "SPAMOPS_REGISTRY_BRIDGE_CHAMPION_MARGIN": "1.0",
    # No drift window completes during the drills: no retraining in the middle.
    "SPAMOPS_MONITOR_WINDOW_SIZE": "100000",
}


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    """The drills' service settings, also for services restarted by a drill."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def platform(stack_factory: StackFactory, env: None) -> Iterator[PlatformSettings]:
    """Every component running, a small model trained, registered and in production."""
    settings = stack_factory(components=local_stack.COMPONENT_NAMES, name="faults-stack")
    result = spamops(
        settings, "ingest", "--groups", "easy-ham-2,spam-1", "--promote-first",
        "--timeout-minutes", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield settings
    local_stack.down(settings)


# ------------------------------------------------------------------ helpers
def kill_9(settings: PlatformSettings, name: str) -> int:
    """SIGKILL a component's whole process group (no goodbye, no last commit)."""
    pid = read_pid(StackPaths.from_settings(settings).pid_file(name))
    assert pid is not None, f"{name} is not running"
    kill_group(pid)
    assert wait_group_gone(pid, 10), f"{name} (pid {pid}) survived SIGKILL"
    return pid


def restart(settings: PlatformSettings, name: str) -> float:
    """Start a stopped component again and wait until it is ready; returns the seconds."""
    began = time.monotonic()
    local_stack.up(settings, components=[name])
    return round(time.monotonic() - began, 2)


def kill_and_restart(drill: Drill, settings: PlatformSettings, name: str) -> float:
    """kill -9 ``name``, start it again, record the restart; returns the repair time."""
    kill_9(settings, name)
    drill.report.notes["restart_s"] = restart(settings, name)
    return drill.repaired()


def outage(drill: Drill, settings: PlatformSettings, name: str, down_s: float) -> float:
    """Stop ``name`` for ``down_s`` seconds, start it again; returns the repair time."""
    local_stack.stop(settings, [name])
    time.sleep(down_s)
    drill.report.notes["restart_s"] = restart(settings, name)
    return drill.repaired()


def log_of(settings: PlatformSettings, name: str) -> str:
    """The component's log (every start appends to it)."""
    return StackPaths.from_settings(settings).log_file(name).read_text(errors="replace")


def assert_nothing_lost(drill: Drill) -> None:
    report = drill.finish()
    assert report.lost == 0, report
    assert report.dead_letters == 0, report
    assert report.verdicts == len(drill.keys), report


def first_event(settings: PlatformSettings, topic: str, cls: type, **fields: object) -> list:  # type: ignore[type-arg]
    def match(e: object) -> bool:
        return isinstance(e, cls) and all(getattr(e, k) == v for k, v in fields.items())

    return [e for e, _ in asyncio.run(events_on(settings, topic, match, wait_s=300))]


def model_trained(settings: PlatformSettings) -> ModelTrained:
    """The platform's first ModelTrained (the fixture's training)."""
    return first_event(settings, "models.trained", ModelTrained)[0]  # type: ignore[no-any-return]


def committed_lag(settings: PlatformSettings, group: str, topic: str) -> int:
    """Records of ``topic`` not yet committed by consumer group ``group``."""
    return asyncio.run(consumer_lags(settings, {group: (topic,)}))[group] or 0


# ------------------------------------------------------------ kill -9 services
def test_inference_killed_mid_stream_loses_nothing(platform: PlatformSettings) -> None:
    with Drill(platform, "kill-inference", count=1500, rate=60) as drill:
        drill.sleep_until(8)
        kill_and_restart(drill, platform, "inference")
    assert_nothing_lost(drill)
    # Its log shows the second start and the models it serves again.
    assert log_of(platform, "inference").count("spamops starts") >= 2


def test_one_of_two_inference_processes_killed_the_group_rebalances_and_loses_nothing(
    platform: PlatformSettings, tmp_path: Any
) -> None:
    """Two processes in the group share the 6 inbox partitions; one dies mid-stream."""
    import os
    import signal
    import subprocess
    import sys

    from tests.integration.conftest import free_ports

    metrics_port = free_ports(1)[0]
    env = {**os.environ, **platform.to_env(), "SPAMOPS_INFERENCE_METRICS_PORT": str(metrics_port)}
    log = (tmp_path / "inference-2.log").open("wb")
    second = subprocess.Popen(
        [sys.executable, "-m", "spamops_inference"], env=env, stdout=log, stderr=log,
        start_new_session=True,
    )  # fmt: skip
    try:
        # Ready (its /metrics answers once it consumes), then a moment to join the group.
        deadline = time.monotonic() + 180
        while True:
            assert second.poll() is None, "the second inference process died at start-up"
            try:
                _messages_read(metrics_port)
                break
            except OSError:
                assert time.monotonic() < deadline, "the second inference process never came up"
                time.sleep(1)
        time.sleep(5)
        with Drill(platform, "kill-one-of-two-inference", count=1500, rate=60) as drill:
            drill.sleep_until(10)
            read_by_second = _messages_read(metrics_port)
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(10)
            drill.report.notes["killed"] = "the second inference process"
            drill.repaired()
        assert_nothing_lost(drill)
        assert second.returncode == -signal.SIGKILL
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
        log.close()
    # The second process did read part of the stream (its partitions) before it died.
    assert read_by_second > 0
    drill.report.notes["read_by_the_killed_process"] = read_by_second


def _messages_read(metrics_port: int) -> float:
    """spamops_inference_messages_total of the inference process serving ``metrics_port``."""
    return metric_sum(metrics_port, "spamops_inference_messages_total")


def test_trainer_killed_mid_training_trains_once_and_closes_the_abandoned_run(
    platform: PlatformSettings,
) -> None:
    [first] = first_event(platform, "datasets.ready", DatasetReady)
    again = first.model_copy(update={"event_id": uuid.uuid4()})
    client = mlflow.MlflowClient(platform.mlflow_uri)
    query = f"tags.`spamops.source_event_id` = '{again.event_id}'"
    with Drill(platform, "kill-trainer", count=600, rate=40) as drill:
        asyncio.run(send(platform, "datasets.ready", [(again.dataset_id, again.to_bytes())]))
        # Kill only once a trial of the search has started: provably mid-training.
        deadline = time.monotonic() + 180
        while not (run := _training_run_with_a_trial(client, query)):
            assert time.monotonic() < deadline, "the training never reached its search"
            time.sleep(0.2)
        repaired_at = kill_and_restart(drill, platform, "trainer")
        assert client.get_run(run).info.status in {"RUNNING", "KILLED"}  # it never finished
        trained_events = first_event(
            platform, "models.trained", ModelTrained, causation_id=again.event_id
        )
        # A redelivered DatasetReady may republish the same ModelTrained (same event id);
        # a second training would be a second id.
        assert len({e.event_id for e in trained_events}) == 1, trained_events
        trained = trained_events[0]
        drill.report.notes["retrained_after_restart_s"] = round(time.time() - repaired_at, 1)
    assert_nothing_lost(drill)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], query)
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FINISHED", "KILLED"], statuses  # one training, the other closed
    assert trained.run_id in {r.info.run_id for r in runs if r.info.status == "FINISHED"}
    assert "previous training of this event was interrupted" in log_of(platform, "trainer")


def _training_run_with_a_trial(client: mlflow.MlflowClient, query: str) -> str | None:
    """The RUNNING training run matching ``query`` once one of its trials exists."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(experiments, query + " and attributes.status = 'RUNNING'"):
        parent = f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
        if client.search_runs(experiments, parent, max_results=1):
            return str(run.info.run_id)
    return None


def _unpublished_version(client: mlflow.MlflowClient, trained: ModelTrained) -> str | None:
    """A version registered for ``trained`` whose ModelRegistered is not out yet."""
    query = f"name = '{MODEL}' and tags.`spamops.model_trained_event_id` = '{trained.event_id}'"
    for version in client.search_model_versions(query):
        if version.tags.get("spamops.model_registered_published") != "true":
            return str(version.version)
    return None


def test_registry_bridge_killed_mid_registration_registers_once(
    platform: PlatformSettings,
) -> None:
    trained = model_trained(platform).model_copy(update={"event_id": uuid.uuid4()})
    with Drill(platform, "kill-bridge", count=600, rate=40) as drill:
        client = mlflow.MlflowClient(platform.mlflow_uri)
        asyncio.run(send(platform, "models.trained", [(trained.run_id, trained.to_bytes())]))
        # Kill once the version exists but its ModelRegistered is not out: mid-registration
        # (export, parity and the Triton load still to come).
        deadline = time.monotonic() + 120
        while not (version := _unpublished_version(client, trained)):
            assert time.monotonic() < deadline, "the registration never started"
            time.sleep(0.05)
        kill_and_restart(drill, platform, "registry-bridge")
        drill.report.notes["killed_at_version"] = version
        registered = first_event(
            platform, "models.registered", ModelRegistered, causation_id=trained.event_id
        )
    assert_nothing_lost(drill)
    assert len({e.event_id for e in registered}) == 1  # a resumed step republishes the same id
    assert_no_version_half_done(platform)


def assert_no_version_half_done(settings: PlatformSettings) -> None:
    client = mlflow.MlflowClient(settings.mlflow_uri)
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        assert version.tags.get("spamops.model_registered_published") == "true", (
            version.version,
            version.tags,
        )


def test_monitor_killed_mid_stream_catches_up(platform: PlatformSettings) -> None:
    with Drill(platform, "kill-monitor", count=600, rate=40) as drill:
        drill.sleep_until(5)
        repaired_at = kill_and_restart(drill, platform, "monitor")
    assert_nothing_lost(drill)
    # The monitor commits only past evaluated windows, and the drills' window never fills,
    # so its committed lag cannot reach 0 (the drill's old lag helper read no partitions
    # and always said 0). Caught up: since its restart it has handled every verdict past
    # its committed offsets.
    port = platform.service_ports["monitor"]
    deadline = time.monotonic() + 120
    while (
        behind := committed_lag(platform, "spamops-monitor", "emails.verdicts")
        - _verdicts_handled(port)
    ) > 0:
        assert time.monotonic() < deadline, f"monitor still {behind} verdicts behind"
        time.sleep(2)
    print(f"monitor caught up {time.time() - repaired_at:.1f}s after its restart")
    assert log_of(platform, "monitor").count("spamops starts") >= 2


def _verdicts_handled(metrics_port: int) -> float:
    """Verdicts the monitor serving ``metrics_port`` handled since it started (its /metrics)."""
    try:
        return metric_sum(metrics_port, "spamops_events_consumed_total", topic="emails.verdicts")
    except OSError:
        return 0.0  # not up yet


# ------------------------------------------------------------ infrastructure
def test_kafka_stopped_60s_mid_stream_loses_nothing(platform: PlatformSettings) -> None:
    """Longer than the clients' own retries (request timeouts of 10-30 s)."""
    with Drill(platform, "stop-kafka-60s", count=3600, rate=40) as drill:
        drill.sleep_until(8)
        outage(drill, platform, "kafka", down_s=60)
    assert_nothing_lost(drill)
    for service in local_stack.SERVICE_NAMES:  # every service survived the outage
        assert next(s for s in local_stack.status(platform) if s.name == service).ready


def test_triton_stopped_60s_delays_but_loses_nothing(platform: PlatformSettings) -> None:
    with Drill(platform, "stop-triton-60s", count=3600, rate=40) as drill:
        drill.sleep_until(8)
        outage(drill, platform, "triton", down_s=60)
    report = drill.finish()
    assert report.lost == 0 and report.dead_letters == 0, report
    assert report.longest_verdict_gap_s >= 55  # nothing was classified without Triton
    assert "triton" in log_of(platform, "inference").lower()


def test_redis_stopped_degrades_reputation_and_loses_nothing(platform: PlatformSettings) -> None:
    with Drill(platform, "stop-redis", count=800, rate=40) as drill:
        drill.sleep_until(5)
        outage(drill, platform, "redis", down_s=10)
    assert_nothing_lost(drill)
    assert "reputation" in log_of(platform, "inference").lower()


def test_mlflow_stopped_during_a_registration_finishes_it_later(
    platform: PlatformSettings,
) -> None:
    trained = model_trained(platform).model_copy(update={"event_id": uuid.uuid4()})
    with Drill(platform, "stop-mlflow-60s-registration", count=800, rate=10) as drill:
        asyncio.run(send(platform, "models.trained", [(trained.run_id, trained.to_bytes())]))
        time.sleep(2)
        repaired_at = outage(drill, platform, "mlflow", down_s=60)
        registered = first_event(
            platform, "models.registered", ModelRegistered, causation_id=trained.event_id
        )
        drill.report.notes["registered_after_repair_s"] = round(time.time() - repaired_at, 1)
    assert_nothing_lost(drill)
    assert len({e.event_id for e in registered}) == 1
    assert_no_version_half_done(platform)
    dead = first_event_or_none(platform, "models.trained.dlq", trained)
    assert dead is None, "the registration was dead-lettered instead of resumed"


def first_event_or_none(settings: PlatformSettings, topic: str, event: Any) -> object:
    async def scan() -> object:
        from spamops_runtime.replay import read_topic

        async for record in read_topic(settings, topic, idle_timeout_s=0.5):
            if str(event.event_id).encode() in record.value:
                return record
        return None

    return asyncio.run(scan())


def test_mlflow_stopped_60s_during_a_promotion_finishes_it_later(
    platform: PlatformSettings,
) -> None:
    """A PromotionApproved arrives while MLflow is away: retried, then applied once."""
    from spamops_schemas import ModelPromoted, PromotionApproved

    client = mlflow.MlflowClient(platform.mlflow_uri)
    production = int(client.get_model_version_by_alias(MODEL, "production").version)
    candidates = [
        int(v.version)
        for v in client.search_model_versions(f"name = '{MODEL}'")
        if v.tags.get("spamops.gate") == "passed" and int(v.version) != production
    ]
    assert candidates, "the drills before this one register further versions"
    approval = PromotionApproved(model_name=MODEL, version=max(candidates), approved_by="drill")
    with Drill(platform, "stop-mlflow-60s-promotion", count=800, rate=10) as drill:
        local_stack.stop(platform, ["mlflow"])
        asyncio.run(send(platform, "models.promotion-approved", [(MODEL, approval.to_bytes())]))
        time.sleep(60)
        drill.report.notes["restart_s"] = restart(platform, "mlflow")
        repaired_at = drill.repaired()
        promoted = first_event(
            platform, "models.promoted", ModelPromoted, causation_id=approval.event_id
        )
        drill.report.notes["promoted_after_repair_s"] = round(time.time() - repaired_at, 1)
    assert_nothing_lost(drill)
    assert len({e.event_id for e in promoted}) == 1
    assert promoted[0].previous_version == production
    assert int(client.get_model_version_by_alias(MODEL, "production").version) == approval.version
    dead = first_event_or_none(platform, "models.promotion-approved.dlq", approval)
    assert dead is None, "the approval was dead-lettered instead of retried"
