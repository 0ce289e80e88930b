"""Who may read and write which topic: the one table the Kafka ACLs are derived from.

Every Kafka client of the platform authenticates as a principal (SASL/SCRAM
user). ``ACCESS`` says, per principal, which catalogue topics it consumes in a
consumer group, reads without a group (replays), and produces to. ``acl_rules``
turns it into Kafka ACL bindings; the local stack (``spamops up --secure``), the
compose init script and the Strimzi ``KafkaUser`` resources are all generated
from it, so the three cannot disagree.

What a row grants:

* consumed topic: Read + Describe on the topic, Read on the consumer groups
  whose ids start with the principal's name (the services' default
  ``group_id`` is ``spamops-<service>``; inference and monitor add
  ``-feedback`` and per-process ``-control-<id>`` groups), and Write +
  Describe on the topic's ``.dlq`` twin (a refused record is dead-lettered
  next to where it was read);
* followed topic: Read + Describe, read in the principal's consumer groups like
  a consumed one but never dead-lettered, so no ``.dlq`` twin (the gateway
  follows ``emails.inbox.dlq`` to answer a refused request at once);
* replayed topic: Read + Describe (``read_topic`` assigns partitions, no group);
* produced topic: Write + Describe (idempotent producers need nothing more
  since Kafka 3.0, KIP-679).

``admin`` is a super user (topic creation, ACLs, the CLI's overview) and has no
row. ``approver`` is the only principal that may write
``models.promotion-approved``: a leaked service credential cannot promote a
model. ``operator`` is what people and mail systems use for the other user
commands (publish, label, ingest, reading verdicts and drift).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from spamops_schemas.topics import DLQ_SUFFIX, all_topic_names

ADMIN = "admin"
APPROVER = "approver"
OPERATOR = "operator"
SERVICE_PRINCIPAL_PREFIX = "spamops-"


@dataclass(frozen=True)
class Access:
    """What one principal may do with the catalogue's topics."""

    consumes: tuple[str, ...] = ()  # in consumer groups named <principal>*
    follows: tuple[str, ...] = ()  # in those groups too, but never dead-lettered
    replays: tuple[str, ...] = ()  # read without a group
    produces: tuple[str, ...] = ()
    description: str = ""

    @property
    def groups(self) -> bool:
        """Whether the principal joins consumer groups."""
        return bool(self.consumes or self.follows)


def service_principal(service: str) -> str:
    """The SASL user of a service, e.g. ``spamops-trainer`` (also its default group id)."""
    return SERVICE_PRINCIPAL_PREFIX + service


# The one table. Keep it in step with the services' app.py (a unit test compares it
# with their AsyncAPI documents) and with docs/DESIGN.md's topic table.
ACCESS: dict[str, Access] = {
    service_principal("trainer"): Access(
        consumes=("datasets.ready", "monitoring.drift"),
        replays=("emails.feedback", "emails.inbox"),  # drift snapshots
        produces=("models.trained", "datasets.ready"),
        description="trainer service",
    ),
    service_principal("registry-bridge"): Access(
        consumes=("models.trained", "models.promotion-approved"),
        produces=("models.registered", "models.rejected", "models.promoted"),
        description="registry-bridge service",
    ),
    service_principal("inference"): Access(
        consumes=("emails.inbox", "models.registered", "models.promoted", "emails.feedback"),
        produces=("emails.verdicts",),
        description="inference service",
    ),
    service_principal("monitor"): Access(
        consumes=("emails.verdicts", "emails.feedback", "models.registered", "models.promoted"),
        produces=("monitoring.drift",),
        description="monitor service",
    ),
    # The HTTP door: publishes what its callers send and answers with the verdicts
    # (every instance reads every verdict in a group of its own, spamops-gateway-<id>).
    service_principal("gateway"): Access(
        consumes=("emails.verdicts",),
        follows=("emails.inbox.dlq",),
        replays=("emails.inbox",),  # the one record an explanation is about
        produces=("emails.inbox", "emails.feedback"),
        description="gateway service (HTTP API)",
    ),
    APPROVER: Access(
        replays=("models.registered", "models.rejected", "models.promoted"),
        produces=("models.promotion-approved",),
        description="people or CI approving a model version for production",
    ),
    OPERATOR: Access(
        replays=(
            "datasets.ready",
            "models.trained",
            "models.registered",
            "models.rejected",
            "models.promoted",
            "emails.verdicts",
            "monitoring.drift",
        ),
        produces=("emails.inbox", "emails.feedback", "datasets.ready"),
        description="people and mail systems: publish, label, ingest, read verdicts",
    ),
}

# The four stream services (each with its deploy files); the gateway has its row above
# and its deploy files are still to come (issue 16).
SERVICES: tuple[str, ...] = ("trainer", "registry-bridge", "inference", "monitor")


def principals() -> tuple[str, ...]:
    """Every SASL user to create: the admin first, then the table's rows."""
    return (ADMIN, *ACCESS)


class ResourceType(IntEnum):
    """Kafka's ``ResourceType`` codes (CreateAcls wire protocol)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class PatternType(IntEnum):
    """Kafka's ``PatternType`` codes."""

    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    """Kafka's ``AclOperation`` codes."""

    READ = 3
    WRITE = 4
    DESCRIBE = 8


ALLOW = 3  # AclPermissionType.ALLOW


@dataclass(frozen=True, order=True)
class AclRule:
    """One ALLOW ACL binding: principal, resource (type, name, pattern), operation."""

    principal: str  # e.g. "spamops-trainer" (written User:<name> on the wire)
    resource_type: ResourceType
    resource: str
    pattern: PatternType
    operation: Operation

    @property
    def kafka_principal(self) -> str:
        """``User:<name>``."""
        return f"User:{self.principal}"


def _check_topics(principal: str, topics: tuple[str, ...]) -> None:
    known = set(all_topic_names())
    unknown = [t for t in topics if t not in known]
    if unknown:
        raise ValueError(f"ACL table: {principal} names unknown topics {unknown}")


def acl_rules(access: dict[str, Access] | None = None) -> list[AclRule]:
    """The ACL bindings of ``access`` (default: ``ACCESS``), sorted, without duplicates."""
    table = ACCESS if access is None else access
    rules: set[AclRule] = set()

    def topic(principal: str, name: str, *ops: Operation) -> None:
        for op in ops:
            rules.add(AclRule(principal, ResourceType.TOPIC, name, PatternType.LITERAL, op))

    for principal, row in table.items():
        for names in (row.consumes, row.follows, row.replays, row.produces):
            _check_topics(principal, names)
        for name in row.consumes:
            topic(principal, name, Operation.READ, Operation.DESCRIBE)
            topic(principal, name + DLQ_SUFFIX, Operation.WRITE, Operation.DESCRIBE)
        for name in (*row.follows, *row.replays):
            topic(principal, name, Operation.READ, Operation.DESCRIBE)
        for name in row.produces:
            topic(principal, name, Operation.WRITE, Operation.DESCRIBE)
        if row.groups:
            rules.add(
                AclRule(
                    principal, ResourceType.GROUP, principal, PatternType.PREFIXED, Operation.READ
                )
            )
    return sorted(rules)


def writers_of(topic: str, access: dict[str, Access] | None = None) -> list[str]:
    """Principals (besides the admin) allowed to write ``topic``."""
    return sorted(
        {
            rule.principal
            for rule in acl_rules(access)
            if rule.resource_type is ResourceType.TOPIC
            and rule.resource == topic
            and rule.operation is Operation.WRITE
        }
    )
