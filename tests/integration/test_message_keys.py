"""Keys a sender cannot steer (issue 17): a reused Message-ID cannot redirect a label.

On the real Kafka of the session stack: two different mails share one message
key, a third has its own. The trainer's feedback join (``labelled_feedback``)
gives a label that names its inbox record to exactly that mail, leaves out a
label that has only the shared key, and joins a key-only label of an
unambiguous key as before.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailLabeled, InboxRecordRef
from spamops_schemas.topics import EMAILS_FEEDBACK, EMAILS_INBOX
from spamops_trainer.adapters import labelled_feedback

from tests.integration.helpers import sample_email

pytestmark = pytest.mark.integration


async def _produce(
    settings: PlatformSettings, topic: str, key: str, value: bytes
) -> InboxRecordRef:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", **settings.kafka_client_options()
    )
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=key.encode())
        return InboxRecordRef(meta.partition, meta.offset)
    finally:
        await producer.stop()


def test_a_reused_message_id_cannot_redirect_a_label_into_training(
    stack: PlatformSettings,
) -> None:
    shared, own = f"<shared-{uuid.uuid4().hex}@x>", f"<own-{uuid.uuid4().hex}@x>"
    honest, forged, single = (
        sample_email(1, spam=False),
        sample_email(2, spam=True),
        sample_email(3, spam=False),
    )

    async def scenario() -> tuple[
        dict[str, tuple[str, bytes, InboxRecordRef | None]], InboxRecordRef
    ]:
        honest_ref = await _produce(stack, EMAILS_INBOX, shared, honest)
        await _produce(stack, EMAILS_INBOX, shared, forged)  # the sender reuses the key
        await _produce(stack, EMAILS_INBOX, own, single)
        labels = [
            # Names its record (as `spamops label` copies it from the verdict).
            EmailLabeled(
                message_key=shared,
                label="ham",
                inbox_partition=honest_ref.partition,
                inbox_offset=honest_ref.offset,
            ),
            # Only the shared key: which mail? Left out rather than given to the last one.
            EmailLabeled(message_key=shared, label="spam"),
            # Only a key that one mail has: joined as before.
            EmailLabeled(message_key=own, label="ham"),
        ]
        for label in labels:
            await _produce(
                stack, EMAILS_FEEDBACK, label.message_key, label.model_dump_json().encode()
            )
        found = await labelled_feedback(stack, 0)
        mine = [m for m in found if m.message_key in (shared, own)]
        assert len(mine) == 2, mine
        return {m.message_key: (m.label, m.raw, m.record) for m in mine}, honest_ref

    rows, honest_ref = asyncio.run(scenario())
    assert rows[shared] == ("ham", honest, honest_ref)  # exactly the named mail, not the forged
    assert rows[own][:2] == ("ham", single)
