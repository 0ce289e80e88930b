"""The real local stack: Kafka, Redis, MLflow and Triton started by ``spamops_cli.stack``."""

from __future__ import annotations

import time
import uuid

import httpx
import mlflow
import numpy as np
import pytest
import redis
import tritonclient.http as triton_http
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from spamops_cli import stack as local_stack
from spamops_runtime.settings import PlatformSettings
from spamops_runtime.triton_repo import (
    TensorSpec,
    TritonRepositoryClient,
    TritonRepositoryError,
    model_repository,
    write_python_model,
)
from spamops_schemas.topics import all_topic_names, catalogue

pytestmark = pytest.mark.integration

DOUBLER_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            out = pb_utils.Tensor("OUTPUT", (x * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def write_doubler(settings: PlatformSettings, name: str = "doubler") -> None:
    """A trivial Python-backend model: OUTPUT = INPUT * 2 (FP32, 4 per row)."""
    write_python_model(
        model_repository(settings.state_dir),
        name,
        model_py=DOUBLER_PY,
        inputs=[TensorSpec("INPUT", "TYPE_FP32", (4,))],
        outputs=[TensorSpec("OUTPUT", "TYPE_FP32", (4,))],
        max_batch_size=64,
    )


def infer_doubler(
    settings: PlatformSettings, rows: np.ndarray, name: str = "doubler"
) -> np.ndarray:
    client = triton_http.InferenceServerClient(settings.triton_http)
    try:
        tensor = triton_http.InferInput("INPUT", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer(name, [tensor])
        output = result.as_numpy("OUTPUT")
        assert output is not None
        return np.asarray(output, dtype=np.float32)
    finally:
        client.close()


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for index, value in enumerate(values):
            await producer.send_and_wait(topic, value, key=f"k{index}".encode())
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, group: str, expected: int) -> list[bytes]:
    """Read ``expected`` records as ``group`` from its committed offset, then commit."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(received) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                received += [r.value for r in records if r.value is not None]
        await consumer.commit()
    finally:
        await consumer.stop()
    return received


# ------------------------------------------------------------------ kafka
async def test_kafka_round_trip_with_consumer_group(stack: PlatformSettings) -> None:
    topic = f"it.stack.{uuid.uuid4().hex[:8]}"
    group = f"it-group-{uuid.uuid4().hex[:8]}"
    await create_topic(stack.kafka_bootstrap, topic, partitions=3)
    sent = [f"message {i}".encode() for i in range(10)]
    await produce(stack.kafka_bootstrap, topic, sent)

    assert sorted(await consume(stack.kafka_bootstrap, topic, group, 10)) == sorted(sent)

    # The group's committed offsets hold: a new member only sees what came after.
    await produce(stack.kafka_bootstrap, topic, [b"late"])
    assert await consume(stack.kafka_bootstrap, topic, group, 1) == [b"late"]


async def test_catalogue_topics_exist_with_their_partitions(stack: PlatformSettings) -> None:
    wanted = {t.name: t.partitions for t in catalogue()} | {
        t.dlq: t.partitions for t in catalogue()
    }
    assert set(wanted) == set(all_topic_names())
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(all_topic_names())
    finally:
        await admin.close()
    found = {
        info["topic"]: len(info["partitions"]) for info in described if info["error_code"] == 0
    }
    assert found == wanted


def test_ensure_topics_is_idempotent(stack: PlatformSettings) -> None:
    assert local_stack.ensure_topics(stack) == []


async def test_ensure_topics_works_inside_an_event_loop(stack: PlatformSettings) -> None:
    assert local_stack.ensure_topics(stack) == []


# ------------------------------------------------------------------ redis
def test_redis_answers_ping(stack: PlatformSettings) -> None:
    client = redis.Redis.from_url(stack.redis)
    try:
        assert client.ping() is True
    finally:
        client.close()


# ----------------------------------------------------------------- mlflow
def test_mlflow_creates_an_experiment_and_stores_artifacts(stack: PlatformSettings) -> None:
    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_uri)
    name = f"it-stack-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    assert experiment.experiment_id == experiment_id

    # Artifacts go through the server (proxied) into data/mlflow/artifacts.
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "hello", "notes/hello.txt")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
    assert any((stack.state_dir / "data" / "mlflow" / "artifacts").rglob("hello.txt"))


# ----------------------------------------------------------------- triton
def test_triton_serves_a_python_backend_model(stack: PlatformSettings) -> None:
    write_doubler(stack)
    # The repository API is restricted to holders of the stack's key (issue 17).
    for key in (None, "not-the-key"):
        with TritonRepositoryClient(stack.triton_http, key=key) as stranger:
            with pytest.raises(TritonRepositoryError, match="HTTP 403"):
                stranger.load("doubler")
            with pytest.raises(TritonRepositoryError, match="HTTP 403"):
                stranger.index()
    key = stack.triton_repository_key()
    assert key is not None
    with TritonRepositoryClient(stack.triton_http, key=key) as repo:
        repo.load("doubler")
        assert repo.is_ready("doubler")
        with TritonRepositoryClient(stack.triton_http) as anyone:
            assert anyone.is_ready("doubler")  # readiness (and inference) need no key
        assert {"name": "doubler", "version": "1", "state": "READY"} in repo.index()

        rows = np.random.default_rng(0).random((32, 4), dtype=np.float32)
        np.testing.assert_allclose(infer_doubler(stack, rows), rows * 2, rtol=1e-6)

        metrics = httpx.get(f"http://{stack.host}:{stack.triton_metrics_port}/metrics").text
        assert 'nv_inference_request_success{model="doubler",version="1"}' in metrics

        repo.unload("doubler")
        deadline = time.monotonic() + 30
        while repo.is_ready("doubler") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not repo.is_ready("doubler")


# ------------------------------------------------------------------ stack
def test_status_reports_every_component_ready(stack: PlatformSettings) -> None:
    rows = {row.name: row for row in local_stack.status(stack)}
    assert set(rows) == set(local_stack.COMPONENT_NAMES)
    # The session stack is infrastructure only: no services, no Evidently UI.
    for name in (*local_stack.SERVICE_NAMES, *local_stack.VIEWER_NAMES):
        assert not rows.pop(name).running
    for row in rows.values():
        assert row.running, row
        assert row.ready, row
        assert row.pid is not None
        assert row.rss_bytes > 0
    assert rows["kafka"].endpoint == stack.kafka_bootstrap


def test_up_twice_is_harmless(stack: PlatformSettings) -> None:
    infrastructure = local_stack.INFRASTRUCTURE_NAMES
    before = {row.name: row.pid for row in local_stack.status(stack) if row.name in infrastructure}
    began = time.monotonic()
    local_stack.up(stack, components=infrastructure)
    assert time.monotonic() - began < 15  # nothing was started again
    after = {
        row.name: (row.pid, row.ready)
        for row in local_stack.status(stack)
        if row.name in infrastructure
    }
    assert after == {name: (pid, True) for name, pid in before.items()}


def test_unknown_component_is_refused(stack: PlatformSettings) -> None:
    with pytest.raises(local_stack.StackError, match="unknown component"):
        local_stack.up(stack, components=["zookeeper"])


def test_a_busy_port_names_the_component(tmp_path, stack: PlatformSettings) -> None:
    # Another state dir whose Redis port is the session stack's: refused, not hijacked.
    clash = PlatformSettings(home=tmp_path / "clash", redis_port=stack.redis_port)
    with pytest.raises(local_stack.StackError, match=r"redis: port\(s\)"):
        local_stack.up(clash, components=["redis"])


async def test_down_then_up_keeps_the_data(stack_factory) -> None:
    # A stack of its own (about 50 s: MLflow starts twice); the session's is left alone.
    components = ["kafka", "redis", "mlflow", "triton"]
    settings = stack_factory(components=components, name="restart-stack")
    topic = "it.restart"
    await create_topic(settings.kafka_bootstrap, topic)
    await produce(settings.kafka_bootstrap, topic, [b"kept"])
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    experiment_id = client.create_experiment("kept-experiment")
    kv = redis.Redis.from_url(settings.redis)
    kv.set("kept-key", "kept-value")
    kv.close()
    write_doubler(settings)
    with TritonRepositoryClient(settings.triton_http, key=settings.triton_repository_key()) as repo:
        repo.load("doubler")

    local_stack.down(settings)
    assert not any(row.running for row in local_stack.status(settings))
    assert not list((settings.state_dir / "run").glob("*.pid"))
    local_stack.up(settings, components=components)

    group = f"it-restart-{uuid.uuid4().hex[:8]}"
    assert await consume(settings.kafka_bootstrap, topic, group, 1) == [b"kept"]
    experiment = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri).get_experiment_by_name(
        "kept-experiment"
    )
    assert experiment is not None
    assert experiment.experiment_id == experiment_id
    kv = redis.Redis.from_url(settings.redis)
    assert kv.get("kept-key") == b"kept-value"
    # The repository is reloaded at start: the model answers without a new load call.
    rows = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(infer_doubler(settings, rows), rows * 2)

    # --fresh wipes the data (Redis only here, it restarts in a blink).
    local_stack.up(settings, fresh=True, components=["redis"])
    assert kv.get("kept-key") is None
    kv.close()


def test_watch_starts_a_crashed_component_again_and_status_counts_it(stack_factory) -> None:
    """`spamops up --watch`'s round: a killed Redis is started again; a stopped one is not."""
    import os
    import signal

    from spamops_cli.stack.process import read_pid
    from spamops_cli.stack.supervisor import crashed, supervise

    settings = stack_factory(components=["redis"], name="supervised")
    [redis_status] = [s for s in local_stack.status(settings) if s.name == "redis"]
    assert redis_status.ready and redis_status.restarts == 0 and redis_status.pid
    os.killpg(redis_status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "redis" not in crashed(settings):
        assert time.monotonic() < deadline, "the killed Redis is not seen as crashed"
        time.sleep(0.1)

    done = supervise(settings)
    assert done.restarted == ["redis"] and not done.failed
    [after] = [s for s in local_stack.status(settings) if s.name == "redis"]
    assert after.ready and after.restarts == 1 and after.pid != redis_status.pid
    assert redis.Redis.from_url(settings.redis).ping()

    # Stopped on purpose (the pid file goes with it): not a crash, not restarted.
    local_stack.stop(settings, ["redis"])
    assert read_pid(local_stack.StackPaths.from_settings(settings).run / "redis.pid") is None
    assert supervise(settings).restarted == []
    [stopped] = [s for s in local_stack.status(settings) if s.name == "redis"]
    assert not stopped.running and stopped.restarts == 1
