"""The ``spamops`` command line: the local stack, ingestion and the user commands.

Every user command has a plain-Kafka equivalent (see the README's kcat lines);
the CLI is a convenience, never the only way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from spamops_runtime.settings import PlatformSettings

if TYPE_CHECKING:
    from spamops_schemas import Event, PromotionApproved

    from spamops_cli.stack import ComponentStatus

E = TypeVar("E", bound="Event")
R = TypeVar("R")

app = typer.Typer(
    name="spamops",
    help="spamops: train, register, deploy, serve and monitor a spam classifier on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
]


class _Output:
    """Whether the user asked for JSON (``spamops --json CMD`` or ``CMD --json``)."""

    json = False


@app.callback()
def _global_options(as_json: JsonFlag = False) -> None:
    """spamops: train, register, deploy, serve and monitor a spam classifier on Kafka."""
    _json_mode(as_json)


def _json_mode(asked: bool) -> bool:
    """JSON mode on when asked here or globally: the human output then goes to stderr,
    so stdout carries exactly one JSON document for scripts."""
    if asked and not _Output.json:
        _Output.json = True
        out.file = sys.stderr
    return _Output.json


def _result(data: Any) -> None:
    """The command's result as JSON on stdout (JSON mode only)."""
    if _Output.json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")


def _platform(secure: bool | None = None) -> PlatformSettings:
    """The environment's settings; SASL on when asked or when the local stack is secure.

    ``secure``: True/False from ``up --secure/--no-secure``; None keeps what the
    environment (SPAMOPS_KAFKA_SECURITY_PROTOCOL) or the state directory says.
    """
    from spamops_cli.stack.secrets import is_secure_state

    settings = PlatformSettings()
    if secure is True or (
        secure is None
        and not settings.kafka_secure
        and "SPAMOPS_KAFKA_SECURITY_PROTOCOL" not in os.environ
        and is_secure_state(settings)
    ):
        settings = settings.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT"})
    elif secure is False:
        settings = settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    return settings


def _settings() -> PlatformSettings:
    """Settings of the user commands: Kafka credentials come from the environment."""
    settings = _platform()
    if settings.kafka_secure and not settings.kafka_sasl_username:
        from spamops_cli.stack.secrets import password_file

        raise _fail(
            "Kafka needs SASL credentials: set SPAMOPS_KAFKA_SASL_USERNAME and "
            "SPAMOPS_KAFKA_SASL_PASSWORD_FILE (or SPAMOPS_KAFKA_SASL_PASSWORD); on the local "
            "secure stack e.g. operator and "
            f"{password_file(settings, 'operator')} (approver for `spamops approve`)",
            2,
        )
    return settings


def _run(coro: Coroutine[Any, Any, R]) -> R:
    """Run a Kafka client coroutine; a refusal by Kafka's ACLs is an error message."""
    from aiokafka.errors import (
        GroupAuthorizationFailedError,
        KafkaConnectionError,
        KafkaTimeoutError,
        NoBrokersAvailable,
        TopicAuthorizationFailedError,
    )

    try:
        return asyncio.run(coro)
    except (TopicAuthorizationFailedError, GroupAuthorizationFailedError) as exc:
        user = os.environ.get("SPAMOPS_KAFKA_SASL_USERNAME", "this user")
        raise _fail(f"Kafka refused {user}: {exc} (see the ACL table, README 'Security')") from exc
    except (KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable) as exc:
        raise _fail(_kafka_unreachable(exc)) from exc


def _kafka_unreachable(exc: BaseException) -> str:
    """One line for every command when Kafka cannot be reached."""
    settings = PlatformSettings()
    return (
        f"Kafka at {settings.kafka_bootstrap} is not reachable ({type(exc).__name__}); "
        "is the stack up (`spamops status`), are the credentials right?"
    )


def _admin_settings(secure: bool | None = None) -> PlatformSettings:
    """Settings of the stack and overview commands: the local admin when secure.

    Credentials from the environment win; else the secure local stack's admin.
    """
    from spamops_runtime.acl import ADMIN

    from spamops_cli.stack.secrets import as_local_user, password_file

    settings = _platform(secure)
    if (
        settings.kafka_secure
        and not settings.kafka_sasl_username
        and password_file(settings, ADMIN).is_file()
    ):
        settings = as_local_user(settings, ADMIN)
    return settings


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


# --------------------------------------------------------------------- stack
@app.command()
def up(
    fresh: Annotated[bool, typer.Option(help="Wipe the stack's data first.")] = False,
    only: Annotated[
        list[str] | None, typer.Option(help="Start only these components (repeatable).")
    ] = None,
    secure: Annotated[
        bool | None,
        typer.Option(
            "--secure/--no-secure",
            help="Kafka with SASL/SCRAM users and ACLs (one principal per service); "
            "default: as this state directory was last started (plain for a new one).",
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Stay in the foreground: start again what crashes, rotate the logs "
            "(Ctrl-C leaves the stack running).",
        ),
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between --watch rounds.")] = 5.0,
    as_json: JsonFlag = False,
) -> None:
    """Install what is missing and start Kafka, Redis, MLflow, Triton, the Evidently UI and the
    services."""
    _json_mode(as_json)
    from spamops_cli import stack
    from spamops_cli.stack.kafka_broker import Kafka
    from spamops_cli.stack.secrets import password_file, set_secure_state

    settings = _admin_settings(secure)
    kafka = Kafka(settings, stack.StackPaths.from_settings(settings))
    running = kafka.running_secure()
    if running is not None and running != settings.kafka_secure:
        mode = "with SASL/ACLs" if running else "plain"
        raise _fail(f"Kafka is running {mode}: `spamops down` first to switch modes")
    if secure is False:
        set_secure_state(settings, False)
    try:
        stack.up(settings, fresh=fresh, components=only)
    except stack.StackError as exc:
        raise _fail(str(exc)) from exc
    components = _print_status(settings)
    _result({"components": [dataclasses.asdict(item) for item in components]})
    if settings.kafka_secure:
        console.print(
            "Kafka: SASL/SCRAM and ACLs on. User commands take credentials from the "
            "environment, e.g.\n"
            f"  export SPAMOPS_KAFKA_SASL_USERNAME=operator "
            f"SPAMOPS_KAFKA_SASL_PASSWORD_FILE={password_file(settings, 'operator')}\n"
            f"  (approver: {password_file(settings, 'approver')}; "
            f"admin: {password_file(settings, 'admin')})"
        )
    if watch:
        _supervise(settings, interval)


def _supervise(settings: PlatformSettings, interval: float) -> None:
    """``up --watch``: a supervision round every ``interval`` seconds until Ctrl-C."""
    import time

    from spamops_cli.stack.supervisor import supervise

    console.print(f"watching the stack every {interval:.0f} s (Ctrl-C stops watching)")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            done = supervise(settings)
            for name in done.restarted:
                console.print(f"[yellow]{name} had crashed: started it again[/]", soft_wrap=True)
            for name, error in done.failed.items():
                console.print(f"[red]{name} crashed and did not start again: {error}[/]")
            for path in done.rotated:
                console.print(f"rotated {path}")
            time.sleep(interval)


@app.command()
def down(as_json: JsonFlag = False) -> None:
    """Stop what `spamops up` started (data is kept)."""
    from spamops_cli import stack

    _json_mode(as_json)
    stack.down(_admin_settings())
    console.print("stack stopped")
    _result({"stopped": True})


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the overview as JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Live view, refreshed every 2 s (Ctrl-C).")
    ] = False,
) -> None:
    """One screen: components, model versions and aliases, Triton, lag, dead letters, events."""
    from spamops_cli.overview import overview

    settings = _admin_settings()
    if _json_mode(as_json):
        print(json.dumps(overview(settings).as_dict(), indent=2, default=str))
        return
    healthy = all(item.ready for item in _print_status(settings))
    if watch:
        _watch(settings, interval=2.0)
        return
    out.print(_overview_renderable(overview(settings)))
    if not healthy:
        raise typer.Exit(1)


def _overview_renderable(view: Any, rate: float | None = None) -> Any:
    from rich.console import Group
    from rich.text import Text

    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(view.aliases.items())) or "none"
    lines = [
        Text.from_markup(f"[bold]models[/]: versions {view.versions or 'none'}; aliases {aliases}"),
        Text.from_markup(f"[bold]triton ready[/]: {', '.join(view.triton) or 'nothing loaded'}"),
        Text.from_markup(
            f"[bold]verdicts[/]: {view.verdicts_total}"
            + (f"  ({rate:.0f}/s)" if rate is not None else "")
        ),
    ]
    table = Table(title="consumer lag / dead letters / last events")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for group, lag in view.lag.items():
        table.add_row(f"lag {group}", str(lag))
    for topic, count in view.dead_letters.items():
        table.add_row(f"dead letters {topic}", str(count))
    for event_type, summary in view.last_events.items():
        table.add_row(f"last {event_type}", summary)
    for version, metrics in (view.quality.get("versions") or {}).items():
        table.add_row(f"live quality v{version}", json.dumps(metrics))
    for part, error in view.errors.items():
        table.add_row(f"[red]{part} unreadable[/]", error)
    return Group(*lines, table)


def _watch(settings: PlatformSettings, interval: float) -> None:
    """Refresh the overview until Ctrl-C, with the verdict rate between refreshes."""
    import time

    from rich.live import Live

    from spamops_cli.overview import overview

    previous: tuple[float, int] | None = None
    with contextlib.suppress(KeyboardInterrupt), Live(console=out, auto_refresh=False) as live:
        while True:
            view = overview(settings)
            now = time.monotonic()
            rate = None
            if previous is not None and now > previous[0]:
                rate = (view.verdicts_total - previous[1]) / (now - previous[0])
            previous = (now, view.verdicts_total)
            live.update(_overview_renderable(view, rate), refresh=True)
            time.sleep(interval)


def _print_status(settings: PlatformSettings) -> list[ComponentStatus]:
    """Print the component table; the components' status, read once."""
    from spamops_cli import stack

    table = Table(title=f"spamops stack ({settings.state_dir})")
    for column in ("component", "running", "ready", "pid", "restarts", "endpoint", "detail"):
        table.add_column(column)
    components = stack.status(settings)
    for item in components:
        table.add_row(
            item.name,
            "yes" if item.running else "no",
            "[green]yes[/]" if item.ready else "[red]no[/]",
            str(item.pid or ""),
            str(item.restarts or ""),
            item.endpoint,
            item.detail,
        )
    out.print(table)
    return components


# ----------------------------------------------------------------- ingestion
@app.command()
def ingest(
    groups: Annotated[
        str | None,
        typer.Option(help="Comma-separated corpus groups, e.g. easy-ham-1,hard-ham-1,spam-1."),
    ] = None,
    path: Annotated[
        Path | None, typer.Option(help="Ingest your own .eml folder / maildir / mbox instead.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="CSV key,label for --path (label: spam or ham).")
    ] = None,
    reason: Annotated[str, typer.Option(help="initial, drift or manual.")] = "initial",
    seed: Annotated[int, typer.Option(help="Seed of the stratified split.")] = 42,
    publish: Annotated[bool, typer.Option(help="Publish DatasetReady.")] = True,
    wait_trained: Annotated[
        bool, typer.Option(help="Wait for the trainer's ModelTrained and print its metrics.")
    ] = False,
    wait_registered: Annotated[
        bool, typer.Option(help="Also wait for ModelRegistered (staging, served by Triton).")
    ] = False,
    promote_first: Annotated[
        bool,
        typer.Option(
            help="When no production model exists, approve this one in your name "
            "(SPAMOPS_AUTO_PROMOTE=false turns it off)."
        ),
    ] = False,
    timeout_minutes: Annotated[float, typer.Option(help="How long each wait lasts.")] = 30,
    as_json: JsonFlag = False,
) -> None:
    """Build a content-addressed snapshot of the corpus and publish DatasetReady."""
    from spamops_cli.ingest import IngestError, run_ingest

    _json_mode(as_json)
    settings = _settings()
    try:
        event = run_ingest(
            settings,
            groups=set(groups.split(",")) if groups else None,
            path=path,
            labels=labels,
            reason=reason,
            seed=seed,
        )
    except IngestError as exc:
        raise _fail(str(exc)) from exc
    table = Table(title=f"dataset {event.dataset_id} ({event.rows} messages)")
    table.add_column("group")
    table.add_column("messages", justify="right")
    for group, count in sorted(event.counts_by_group.items()):
        table.add_row(group, str(count))
    for label, count in sorted(event.counts_by_label.items()):
        table.add_row(f"label={label}", str(count))
    out.print(table)
    out.print(f"snapshot: {event.uri}")
    if publish:
        from spamops_cli.kafka_io import send_events

        _run(send_events(settings, [event]))
        out.print(f"published DatasetReady {event.event_id} to datasets.ready")
        if wait_trained or wait_registered or promote_first:
            _follow_lifecycle(
                settings,
                str(event.event_id),
                timeout_minutes * 60,
                registered=wait_registered or promote_first,
                promote_first=promote_first,
            )
    _result({"published": publish, "event": event.model_dump(mode="json")})


def _first_event(
    settings: PlatformSettings, topic: str, cls: type[E], caused_by: str, timeout_s: float
) -> E | None:
    """The first ``cls`` event on ``topic`` caused by ``caused_by`` (None after the timeout)."""
    from spamops_runtime.replay import read_topic
    from spamops_schemas import EventDecodeError, decode_event

    async def first_match() -> E | None:
        async for record in read_topic(settings, topic, follow=True):
            try:
                event = decode_event(record.value, cls)
            except EventDecodeError:
                continue
            if str(event.causation_id) == caused_by:
                return event
        return None

    async def bounded() -> E | None:
        try:
            return await asyncio.wait_for(first_match(), timeout_s)
        except TimeoutError:
            return None

    return asyncio.run(bounded())


def _follow_lifecycle(
    settings: PlatformSettings,
    dataset_event_id: str,
    timeout_s: float,
    *,
    registered: bool,
    promote_first: bool,
) -> None:
    """Follow DatasetReady -> ModelTrained [-> ModelRegistered [-> ModelPromoted]] and report."""
    from spamops_schemas import ModelPromoted, ModelRegistered, ModelRejected, ModelTrained

    logs = settings.state_dir / "logs"
    trained = _with_trial_progress(
        settings,
        dataset_event_id,
        lambda: _first_event(settings, "models.trained", ModelTrained, dataset_event_id, timeout_s),
    )
    if trained is None:
        raise _fail(f"no ModelTrained within {timeout_s / 60:.0f} min; see {logs / 'trainer.log'}")
    m = trained.metrics
    out.print(
        f"ModelTrained: run {trained.run_id}  F1 {m.f1:.4f}  precision {m.precision:.4f}  "
        f"recall {m.recall:.4f}  FPR {m.false_positive_rate:.4f}  threshold {trained.threshold}  "
        f"({trained.training_seconds:.0f} s)"
    )
    out.print(f"MLflow: {settings.mlflow_uri}  model: {trained.model_uri}")
    if not registered:
        return
    with console.status("gate, registry, ONNX export, Triton staging ..."):
        outcome = _first_registration(settings, str(trained.event_id), timeout_s)
    if isinstance(outcome, ModelRejected):
        gates = ", ".join(
            f"{f.gate} {f.actual:.4f} (limit {f.threshold})" for f in outcome.failures
        )
        raise _fail(f"ModelRejected by the gate: {gates}")
    if not isinstance(outcome, ModelRegistered):
        raise _fail(f"no ModelRegistered in time; see {logs / 'registry-bridge.log'}")
    out.print(
        f"ModelRegistered: {outcome.model_name} v{outcome.version} (alias staging), Triton "
        f"{outcome.triton_model} v{outcome.triton_version}, ONNX parity "
        f"{outcome.parity_max_abs_diff:.1e}"
    )
    if not promote_first:
        return
    if os.environ.get("SPAMOPS_AUTO_PROMOTE", "true").lower() in {"0", "false", "no"}:
        out.print("SPAMOPS_AUTO_PROMOTE=false: not promoting; `spamops approve` does it")
        return
    if _production_version(settings, outcome.model_name) is not None:
        out.print("a production model exists: promotion is left to a reviewer (spamops approve)")
        return
    user = os.environ.get("USER") or "local-user"
    approval = _approval(outcome.model_name, outcome.version, user, "first model: make up")
    out.print(f"no production model yet: sending PromotionApproved in the name of {user!r}")
    from spamops_cli.kafka_io import send_events

    _run(send_events(settings, [approval]))
    with console.status("Triton production, alias production ..."):
        promoted = _first_event(
            settings, "models.promoted", ModelPromoted, str(approval.event_id), timeout_s
        )
    if promoted is None:
        raise _fail(f"no ModelPromoted in time; see {logs / 'registry-bridge.log'}")
    out.print(
        f"ModelPromoted: {promoted.model_name} v{promoted.version} serves production "
        f"(Triton {promoted.triton_model})"
    )


def _with_trial_progress(settings: PlatformSettings, dataset_event_id: str, wait: Any) -> Any:
    """Run ``wait()`` while a progress bar follows the training's Ray Tune trials in MLflow."""
    import threading

    import mlflow
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from spamops_schemas.registry import RUN_TAG_PROGRESS

    stop = threading.Event()

    def poll(progress: Progress, task: Any) -> None:
        client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
        while not stop.wait(2.0):
            try:
                experiments = [e.experiment_id for e in client.search_experiments()]
                runs = client.search_runs(
                    experiments,
                    filter_string=f"tags.`spamops.source_event_id` = '{dataset_event_id}'",
                    max_results=1,
                )
            except Exception as exc:  # MLflow busy: the bar just waits
                logging.getLogger(__name__).debug("progress poll failed: %s", exc)
                continue
            tag = runs[0].data.tags.get(RUN_TAG_PROGRESS) if runs else None
            if tag and "/" in tag:
                done, total = (int(x) for x in tag.split("/", 1))
                label = "Ray Tune trials" if done < total else "final model, MLflow logging"
                progress.update(task, completed=done, total=total, description=label)

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("features, then Ray Tune trials", total=None)
        poller = threading.Thread(target=poll, args=(progress, task), daemon=True)
        poller.start()
        try:
            return wait()
        finally:
            stop.set()
            poller.join(timeout=5)


def _first_registration(settings: PlatformSettings, trained_id: str, timeout_s: float) -> object:
    """ModelRegistered or ModelRejected caused by a ModelTrained, whichever comes."""
    from spamops_runtime.replay import read_topic
    from spamops_schemas import EventDecodeError, decode_event

    async def watch(topic: str) -> object:
        async for record in read_topic(settings, topic, follow=True):
            try:
                event = decode_event(record.value)
            except EventDecodeError:
                continue
            if str(event.causation_id) == trained_id:
                return event
        return None

    async def race() -> object:
        tasks = [asyncio.create_task(watch(t)) for t in ("models.registered", "models.rejected")]
        done, pending = await asyncio.wait(
            tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return next(iter(done)).result() if done else None

    return asyncio.run(race())


def _production_version(settings: PlatformSettings, model_name: str) -> int | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    try:
        return int(client.get_model_version_by_alias(model_name, "production").version)
    except MlflowException:
        return None


# ------------------------------------------------------------ user commands
@app.command(name="publish")
def publish_emails(
    paths: Annotated[list[Path], typer.Argument(help=".eml files, folders, maildirs, mbox.")],
    environment: Annotated[
        str, typer.Option(help="x-environment header: staging or production.")
    ] = "production",
    topic: Annotated[str, typer.Option(help="Target topic.")] = "emails.inbox",
    as_json: JsonFlag = False,
) -> None:
    """Send raw messages to emails.inbox (key: Message-ID or a hash of the bytes)."""
    _json_mode(as_json)
    from rich.progress import Progress
    from spamops_features.mail import MailParseError, message_key, parse_email

    from spamops_cli.kafka_io import RawRecord, send_raw
    from spamops_cli.mailbox_io import iter_raw_messages

    if environment not in {"staging", "production"}:
        raise _fail("--environment must be staging or production", 2)
    records: list[RawRecord] = []
    for path in paths:
        try:
            for _name, raw in iter_raw_messages(path):
                try:
                    key = message_key(raw, parse_email(raw))
                except MailParseError:
                    key = message_key(raw, None)
                records.append(
                    RawRecord(topic, raw, key=key, headers={"x-environment": environment})
                )
        except FileNotFoundError as exc:
            raise _fail(str(exc), 2) from exc
    if not records:
        raise _fail("no messages found", 2)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("publishing", total=len(records))
        sent = _run(send_raw(_settings(), records, on_sent=lambda n: progress.advance(task, n)))
    out.print(f"published {sent} message(s) to {topic} ({environment})")
    for record in records[:20]:
        out.print(f"  {record.key}")
    _result({"topic": topic, "environment": environment, "keys": [r.key for r in records]})


@app.command()
def score(
    path: Annotated[
        Path,
        typer.Argument(help="An mbox, a maildir, a folder of .eml files, or a snapshot parquet."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The verdicts, one parquet file.")
    ] = Path("verdicts.parquet"),
    version: Annotated[
        int | None, typer.Option(help="Score with this model version (default: --alias).")
    ] = None,
    alias: Annotated[str, typer.Option(help="Score with the version of this alias.")] = (
        "production"
    ),
    num_cpus: Annotated[
        int,
        typer.Option(
            envvar="SPAMOPS_BATCH_NUM_CPUS",
            help="CPUs of the in-process Ray (one scoring actor each); RAY_ADDRESS: a cluster.",
        ),
    ] = 2,
    reputation: Annotated[
        str,
        typer.Option(
            help="auto: the online store (as serving) when Redis answers, else the "
            "unseen-domain defaults; online: always the store; defaults: never."
        ),
    ] = "auto",
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="Also publish the verdicts to emails.verdicts (producer spamops-batch, "
            "note 'batch').",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Batch inference over Ray Data: verdicts of a mailbox or snapshot to a parquet file."""
    _json_mode(as_json)
    from mlflow.exceptions import MlflowException

    from spamops_cli.batch import verdict_events
    from spamops_cli.batch_job import BatchError, job_id, run

    if reputation not in {"auto", "online", "defaults"}:
        raise _fail("--reputation must be auto, online or defaults", 2)
    if not path.exists():
        raise _fail(f"no such file or folder: {path}", 2)
    if num_cpus < 1:
        raise _fail("--num-cpus must be at least 1", 2)
    settings = _settings()
    try:
        result = run(
            settings,
            path,
            output=output,
            alias=None if version is not None else alias,
            version=version,
            num_cpus=num_cpus,
            reputation=reputation,  # type: ignore[arg-type]
            on_phase=lambda text: console.print(f"[dim]{text}[/]"),
        )
    except (BatchError, MlflowException, FileNotFoundError) as exc:
        raise _fail(str(exc)[:300]) from exc
    summary = result.summary()
    if publish:
        from spamops_cli.kafka_io import send_events

        correlation = job_id()
        environment = "staging" if version is None and alias == "staging" else "production"
        events = verdict_events(result.table, environment=environment, correlation_id=correlation)
        summary["published"] = _run(send_events(settings, events, in_flight=500))
        summary["correlation_id"] = correlation
        summary["environment"] = environment
    out.print(
        f"{summary['messages']} message(s): {summary['spam']} spam, {summary['ham']} ham, "
        f"{summary['errors']} error(s) {summary['errors_by_reason'] or ''}"
    )
    out.print(
        f"model {summary['model_name']} v{summary['model_version']} "
        f"(threshold {summary['threshold']:.4f}); reputation: {summary['reputation']}"
    )
    out.print(
        f"{summary['emails_per_s']} emails/s over {summary['seconds_scoring']} s of scoring "
        f"({summary['seconds']} s in all, Ray {summary['ray']})"
    )
    out.print(f"verdicts: {output}")
    if publish:
        out.print(
            f"published {summary['published']} verdict(s) to emails.verdicts "
            f"(correlation id {summary['correlation_id']})"
        )
    _result(summary)


def _follow_events(
    topic: str,
    follow: bool,
    as_json: bool,
    *,
    from_end: int | None = None,
    key: str | None = None,
    limit: int | None = None,
) -> None:
    """Print a topic's events (JSON lines in JSON mode), optionally one key's, at most ``limit``."""
    from spamops_runtime.replay import read_topic, topic_partitions
    from spamops_schemas import EventDecodeError, decode_event

    from spamops_cli.lookup import partition_of

    as_json = _json_mode(as_json)
    settings = _settings()

    async def run() -> None:
        partitions = None
        if key is not None:  # the catalogue keys these topics: one partition holds the key
            partitions = [partition_of(key, await topic_partitions(settings, topic) or [0])]
        shown = 0
        async for record in read_topic(
            settings, topic, follow=follow, last_n=from_end, partitions=partitions
        ):
            if key is not None and record.key != key:
                continue
            if limit is not None and shown >= limit:
                return
            shown += 1
            if as_json:
                sys.stdout.write(record.value.decode("utf-8", "replace").strip() + "\n")
                continue
            try:
                event = decode_event(record.value)
            except EventDecodeError as exc:
                out.print(f"[red]{record.partition}:{record.offset} undecodable: {exc}[/]")
                continue
            out.print(_summarize(event))

    with contextlib.suppress(KeyboardInterrupt):
        _run(run())


def _summarize(event: object) -> str:
    from spamops_schemas import DriftDetected, EmailClassified

    if isinstance(event, EmailClassified):
        return (
            f"{event.message_key}  {event.verdict:4}  p={event.spam_probability:.3f}  "
            f"{event.model_name} v{event.model_version} ({event.environment})"
        )
    if isinstance(event, DriftDetected):
        features = ", ".join(f.feature for f in event.drifted_features[:8])
        return (
            f"{event.occurred_at:%Y-%m-%d %H:%M:%S}  {event.model_name} v{event.model_version}  "
            f"{event.kind} drift share={event.drift_share:.2f} severity={event.severity}  "
            f"[{features}]  {event.report_url or event.report_uri}"
        )
    return str(event)


@app.command()
def verdicts(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for more.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    from_end: Annotated[
        int | None,
        typer.Option("--from-end", help="Start N records before the end (per partition)."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this message key's.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Stop after N verdicts.")] = None,
) -> None:
    """Print the verdicts on emails.verdicts."""
    _follow_events("emails.verdicts", follow, as_json, from_end=from_end, key=key, limit=limit)


@app.command()
def verdict(
    key: Annotated[str, typer.Argument(help="Message key (as on emails.inbox).")],
    as_json: JsonFlag = False,
) -> None:
    """The latest verdict on one message. Exit code: 0 ham, 1 spam, 3 no verdict (yet)."""
    from spamops_cli.lookup import find_verdicts

    as_json = _json_mode(as_json)
    found = _run(find_verdicts(_settings(), key))
    if not found:
        _result({"message_key": key, "verdict": None})
        console.print(f"no verdict for {key} on emails.verdicts")
        raise typer.Exit(3)
    latest = found[-1]
    _result(latest.model_dump(mode="json"))
    if not as_json:
        out.print(_summarize(latest))
        if len(found) > 1:
            console.print(f"({len(found)} verdicts on this key; the latest is shown)")
    raise typer.Exit(1 if latest.verdict == "spam" else 0)


@app.command()
def models(as_json: JsonFlag = False) -> None:
    """The model's versions: aliases, gate result, test figures and whether Triton serves it."""
    from mlflow.exceptions import MlflowException

    from spamops_cli.lookup import model_rows

    as_json = _json_mode(as_json)
    settings = _settings()
    try:
        rows = model_rows(settings)
    except MlflowException as exc:
        raise _fail(f"MLflow at {settings.mlflow_uri} cannot answer: {str(exc)[:200]}") from exc
    _result([dataclasses.asdict(row) for row in rows])
    if as_json:
        return
    table = Table(title=f"{settings.model_name} ({settings.mlflow_uri})")
    for column in ("version", "aliases", "gate", "served", "created", "test figures", "run"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.version),
            ", ".join(row.aliases),
            row.gate,
            "[green]yes[/]" if row.served else "no",
            f"{row.created:%Y-%m-%d %H:%M}",
            " ".join(f"{k.removeprefix('test_')}={v}" for k, v in row.metrics.items()),
            row.run_id,
        )
    out.print(table)
    if not rows:
        console.print("no model version is registered yet")


@app.command()
def explain(
    key: Annotated[str, typer.Argument(help="Message key (as on emails.inbox).")],
    top: Annotated[int, typer.Option(help="How many contributions.")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """Why a message got its verdict: the top feature contributions of the deciding model."""
    from mlflow.exceptions import MlflowException
    from spamops_runtime.replay import read_record
    from spamops_schemas.topics import EMAILS_INBOX

    from spamops_cli.lookup import explain as explain_verdict
    from spamops_cli.lookup import find_verdicts

    as_json = _json_mode(as_json)
    settings = _settings()
    found = _run(find_verdicts(settings, key))
    if not found:
        raise _fail(f"no verdict for {key} on emails.verdicts", 3)
    latest = found[-1]
    if latest.inbox_record is None:
        raise _fail(f"the verdict on {key} does not say which inbox record it was for")
    try:
        raw = _run(read_record(settings, EMAILS_INBOX, *latest.inbox_record))
        result = explain_verdict(settings, latest, raw, top=top)
    except (LookupError, MlflowException) as exc:
        raise _fail(str(exc)[:300]) from exc
    _result(result)
    if as_json:
        return
    out.print(_summarize(latest))
    table = Table(title=f"why (model v{latest.model_version}; margin = bias + contributions)")
    for column in ("feature", "value", "contribution (log-odds)"):
        table.add_column(column)
    for row in result["contributions"]:
        colour = "red" if row["contribution"] > 0 else "green"
        table.add_row(
            row["feature"], f"{row['value']:.4g}", f"[{colour}]{row['contribution']:+.3f}[/]"
        )
    out.print(table)
    out.print(
        f"bias {result['bias']:+.3f}; recomputed probability "
        f"{result['recomputed_probability']:.3f} (verdict: {latest.spam_probability:.3f}; "
        "they differ when the sender's reputation changed since)"
    )


@app.command()
def drift(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for more.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Print the DriftDetected events on monitoring.drift."""
    _follow_events("monitoring.drift", follow, as_json)


def _since_ms(since: str) -> int:
    """``30m``, ``2h``, ``1d`` (ago) or an ISO 8601 time, as epoch milliseconds."""
    import re
    import time
    from datetime import UTC, datetime

    relative = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", since.strip())
    if relative:
        seconds = float(relative[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative[2]]
        return int((time.time() - seconds) * 1000)
    try:
        moment = datetime.fromisoformat(since)
    except ValueError as exc:
        raise _fail(f"--since {since!r}: use 30m, 2h, 1d or an ISO 8601 time", 2) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@app.command()
def redrive(
    dlq: Annotated[str, typer.Argument(help="The dead-letter topic, e.g. emails.inbox.dlq.")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only dead letters with this x-error-reason.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only dead letters since: 30m, 2h, 1d or ISO.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show, send nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Send dead letters back to their original topic once the cause is fixed (idempotent)."""
    from dataclasses import asdict

    from spamops_cli.redrive import RedriveError
    from spamops_cli.redrive import redrive as run_redrive

    as_json = _json_mode(as_json)
    settings = _settings()
    since_ms = _since_ms(since) if since else None

    def show(record: Any, outcome: str) -> None:
        if not as_json:
            why = record.headers.get("x-error-reason", "?")
            console.print(f"{outcome:>10}  {record.partition}:{record.offset}  {record.key}  {why}")

    try:
        result = _run(
            run_redrive(
                settings, dlq, reason=reason, since_ms=since_ms, dry_run=dry_run, on_record=show
            )
        )
    except RedriveError as exc:
        raise _fail(str(exc), 2) from exc
    if as_json:
        print(json.dumps(asdict(result)))
    else:
        verb = "would send" if dry_run else "sent"
        console.print(
            f"{result.matched} dead letters matched: {verb} {result.sent}, "
            f"{result.already} already re-driven, {result.truncated} truncated (not sent)"
        )


def _approval(
    model: str, version: int, by: str, reason: str, valid_for_s: float = 3600.0
) -> PromotionApproved:
    """A PromotionApproved valid for ``valid_for_s``, signed when SPAMOPS_APPROVAL_SECRET is set.

    The signature covers the whole approval, its event id and expiry included, so it
    can be neither edited nor re-sent (spamops_schemas.signing).
    """
    from datetime import UTC, datetime, timedelta

    from spamops_schemas import PromotionApproved
    from spamops_schemas.signing import signed

    issued = datetime.now(UTC)
    event = PromotionApproved(
        producer="spamops-cli",
        occurred_at=issued,
        model_name=model,
        version=version,
        approved_by=by,
        reason=reason,
        expires_at=issued + timedelta(seconds=valid_for_s),
    )
    secret = _approval_secret()
    return signed(secret, event) if secret else event


def _approval_secret() -> str:
    """SPAMOPS_APPROVAL_SECRET, else its file, else the local secure stack's key; "" if none."""
    secret = os.environ.get("SPAMOPS_APPROVAL_SECRET", "").strip()
    if secret:
        return secret
    path = os.environ.get("SPAMOPS_APPROVAL_SECRET_FILE")
    if not path:
        from spamops_cli.stack.secrets import approval_key_path, is_secure_state

        settings = PlatformSettings()
        if not is_secure_state(settings):
            return ""
        path = str(approval_key_path(settings))
    try:
        return Path(path).read_text("utf-8").strip()
    except OSError:
        return ""


@app.command()
def demo(
    size: Annotated[int, typer.Option(help="Test-split messages to stream.")] = 500,
    as_json: JsonFlag = False,
) -> None:
    """Stream a sample of the corpus (never trained on) and summarise the verdicts."""
    from spamops_cli.demo import run_demo

    _json_mode(as_json)
    settings = _settings()
    with console.status(f"streaming {size} corpus messages through emails.inbox ..."):
        try:
            summary = run_demo(settings, size)
        except FileNotFoundError as exc:
            raise _fail(str(exc)) from exc
    out.print(
        f"[bold]verdicts[/]: {summary.verdicts}/{summary.sent} in {summary.seconds:.1f} s "
        f"({summary.spam} spam, {summary.ham} ham) by {summary.versions}; accuracy "
        f"{summary.accuracy:.3f}, ham flagged as spam {summary.false_positives}; latency p50 "
        f"{summary.latency_p50_ms:.0f} ms, p99 {summary.latency_p99_ms:.0f} ms"
    )
    out.print(
        "where to look:\n"
        f"  MLflow UI        {settings.mlflow_uri}  (experiment spam-detector, model registry)\n"
        f"  Triton metrics   http://{settings.host}:{settings.triton_metrics_port}/metrics\n"
        f"  service logs     {settings.state_dir / 'logs'}  (JSON lines)\n"
        f"  traces           {settings.state_dir / 'traces'}\n"
        f"  drift reports    {settings.evidently_ui}  (Evidently UI; MLflow experiment "
        "spamops-monitoring; files in "
        f"{settings.state_dir / 'data' / 'monitor' / 'reports'})\n"
        "  your own email   spamops publish mail.eml   then   spamops verdicts\n"
        f"  with kcat        kcat -b {settings.kafka_bootstrap} -P -t emails.inbox -k k1 mail.eml\n"
        "  the platform     spamops status"
    )
    _result(dataclasses.asdict(summary))
    if summary.verdicts < summary.sent:
        raise _fail(f"{summary.sent - summary.verdicts} message(s) got no verdict in time")


@app.command(name="demo-drift")
def demo_drift(
    approver: Annotated[str, typer.Option(help="Who approves the two promotions.")] = "on-call",
    as_json: JsonFlag = False,
) -> None:
    """The temporal-shift scenario: -1 model, -2 stream with labels, drift, retraining."""
    from spamops_cli.scenario import ScenarioError, run_scenario

    _json_mode(as_json)
    try:
        result = run_scenario(_settings(), log=out.print, approver=approver)
    except ScenarioError as exc:
        raise _fail(str(exc)) from exc
    out.print(
        f"[bold]F1 on held-back -2 messages[/]: v{result.first_version} {result.f1_before:.3f} "
        f"-> v{result.retrained_version} {result.f1_after:.3f}; drift after "
        f"{result.seconds_to_drift:.0f} s, retrained model in production after "
        f"{result.seconds_to_production:.0f} s; false alarms on the no-drift stream: "
        f"{result.false_alarms}"
    )
    _result(dataclasses.asdict(result))


@app.command()
def approve(
    model: Annotated[str, typer.Argument(help="Registered model name, e.g. spam-detector.")],
    version: Annotated[int, typer.Argument(help="Version to serve in production.")],
    by: Annotated[str, typer.Option("--by", help="Who approves.")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    valid_for: Annotated[
        float, typer.Option(help="Seconds the approval stays valid (the bridge's maximum: 1 day).")
    ] = 3600.0,
    as_json: JsonFlag = False,
) -> None:
    """Send PromotionApproved (signed when SPAMOPS_APPROVAL_SECRET is set; it expires)."""
    from spamops_cli.kafka_io import send_events

    _json_mode(as_json)
    if version < 1:
        raise _fail("version must be >= 1", 2)
    if valid_for <= 0:
        raise _fail("--valid-for must be > 0 seconds", 2)
    event = _approval(model, version, by, reason, valid_for)
    _run(send_events(_settings(), [event]))
    out.print(f"sent PromotionApproved {model} v{version} by {by} ({event.event_id})")
    _result(event.model_dump(mode="json"))


@app.command()
def label(
    key: Annotated[str, typer.Argument(help="Message key (as on emails.inbox).")],
    value: Annotated[str, typer.Argument(metavar="spam|ham")],
    by: Annotated[str, typer.Option("--by", help="Who labels.")] = os.environ.get("USER", "cli"),
    record: Annotated[
        str | None,
        typer.Option(
            "--record",
            help="The mail's emails.inbox record PARTITION:OFFSET (default: its verdict's).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send EmailLabeled to emails.feedback, naming the mail's inbox record (from its verdict).

    A Message-ID is the sender's to choose: when several mails share KEY, say which
    one with --record (the services refuse to guess).
    """
    from spamops_schemas import EmailLabeled, InboxRecordRef

    from spamops_cli.kafka_io import send_events
    from spamops_cli.lookup import find_verdicts

    _json_mode(as_json)
    if value not in {"spam", "ham"}:
        raise _fail("label must be spam or ham", 2)
    settings = _settings()
    named: InboxRecordRef | None = None
    if record is not None:
        try:
            partition, offset = (int(part) for part in record.split(":"))
            named = InboxRecordRef(partition, offset)
        except ValueError as exc:
            raise _fail(f"--record {record!r}: use PARTITION:OFFSET, e.g. 3:1042", 2) from exc
    else:
        records = {
            v.inbox_record for v in _run(find_verdicts(settings, key)) if v.inbox_record is not None
        }
        if len(records) > 1:
            listed = ", ".join(f"{r.partition}:{r.offset}" for r in sorted(records))
            raise _fail(f"{len(records)} mails share the key {key}: say which with --record "
                        f"({listed})", 2)  # fmt: skip
        named = next(iter(records), None)
        if named is None:
            console.print(f"no verdict for {key} yet: the label names no inbox record")
    event = EmailLabeled(
        producer="spamops-cli",
        message_key=key,
        label=value,  # type: ignore[arg-type]
        labelled_by=by,
        inbox_partition=named.partition if named else None,
        inbox_offset=named.offset if named else None,
    )
    _run(send_events(settings, [event]))
    where = f" (inbox record {named.partition}:{named.offset})" if named else ""
    out.print(f"labelled {key} as {value}{where}")
    _result(event.model_dump(mode="json"))


def _gateway_client() -> Any:
    """A client of the gateway: SPAMOPS_API_KEY, else the local stack's key file."""
    from spamops_client import SpamopsClient

    settings = _platform()
    key = os.environ.get("SPAMOPS_API_KEY", "").strip()
    if not key:
        try:
            key = settings.gateway_api_key_path.read_text("utf-8").strip()
        except OSError:
            raise _fail(
                f"no API key: set SPAMOPS_API_KEY or start the local stack "
                f"(it writes {settings.gateway_api_key_path})",
                2,
            ) from None
    return SpamopsClient(settings.gateway_http, key)


@app.command()
def classify(
    path: Annotated[Path, typer.Argument(help="An .eml file (raw RFC 822).")],
    environment: Annotated[
        str, typer.Option(help="X-Environment: staging or production.")
    ] = "production",
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
    wait: Annotated[
        bool, typer.Option(help="Wait for the verdict (--no-wait: print the key only).")
    ] = True,
) -> None:
    """Classify an email through the gateway's HTTP API (POST /v1/classify)."""
    import httpx
    from spamops_client import SpamopsError

    if environment not in {"staging", "production"}:
        raise _fail("--environment must be staging or production", 2)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror}", 2) from None
    with _gateway_client() as client:
        try:
            if not wait:
                out.print(client.submit(raw, environment=environment))
                return
            verdict = client.classify(raw, environment=environment)
        except SpamopsError as exc:
            if as_json:
                out.print_json(json.dumps(exc.problem))
            raise _fail(str(exc)) from None
        except httpx.HTTPError as exc:
            raise _fail(f"cannot reach the gateway: {exc}") from None
    if as_json:
        out.print_json(verdict.model_dump_json())
        return
    out.print(
        f"{verdict.verdict} (p={verdict.spam_probability:.3f}, threshold {verdict.threshold:.3f}, "
        f"{verdict.model_name} v{verdict.model_version}, {verdict.environment}) "
        f"key {verdict.message_key}"
    )


gateway_key = typer.Typer(help="API keys of the gateway (stored hashed).", no_args_is_help=True)
app.add_typer(gateway_key, name="gateway-key")


@gateway_key.command("create")
def gateway_key_create(
    name: Annotated[str, typer.Option(help="Who holds the key (logs, rate limits).")],
    roles: Annotated[str, typer.Option(help="Comma-separated: classify, label.")] = "classify",
    keys_file: Annotated[
        Path | None,
        typer.Option(help="The gateway's key file (default <home>/secrets/gateway-keys.json)."),
    ] = None,
) -> None:
    """Create an API key: its hash goes to the key file, the key is printed once."""
    from spamops_runtime.api_keys import ApiKeyError, add_key

    path = keys_file or _platform().gateway_keys_path
    try:
        key = add_key(path, name, roles.split(","))
    except ApiKeyError as exc:
        raise _fail(str(exc), 2) from None
    console.print(f"key {name!r} ({roles}) added to {path}; it is shown only now:")
    out.print(key)


@app.command(name="schema")
def schema_cmd(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. PromotionApproved.")],
    as_json: JsonFlag = False,  # the schema is JSON already: accepted for uniformity
) -> None:
    """Print an event's JSON Schema."""
    from spamops_schemas import EVENT_TYPES

    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise _fail(f"unknown event type {event_type}; known: {', '.join(EVENT_TYPES)}", 2)
    json.dump(cls.model_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


def main() -> None:
    """The ``spamops`` entry point: a Kafka outage is one clear line and exit code 1."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable

    # aiokafka logs every failed connection attempt: the error line below says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # A producer that never connected is reported "unclosed" by asyncio at exit: noise here.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        app()
    except (KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable) as exc:
        _fail(_kafka_unreachable(exc))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
