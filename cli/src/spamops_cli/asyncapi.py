"""The services' AsyncAPI documents, generated from their FastStream apps.

``python -m spamops_cli.asyncapi`` writes ``docs/asyncapi/<service>.json`` (one
per service: every topic it reads and writes, with the payload schemas);
``--check`` fails when a committed file is stale (CI runs it through the tests).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

SERVICES = ("trainer", "registry-bridge", "inference", "monitor", "gateway")
# What each service publishes (FastStream only knows what it subscribes to).
WRITES: dict[str, tuple[str, ...]] = {
    "trainer": ("models.trained", "datasets.ready"),
    "registry-bridge": ("models.registered", "models.rejected", "models.promoted"),
    "inference": ("emails.verdicts",),
    "monitor": ("monitoring.drift",),
    "gateway": ("emails.inbox", "emails.feedback"),
}
RAW_EMAIL_SCHEMA: dict[str, Any] = {
    "title": "RawEmail",
    "type": "string",
    "contentEncoding": "binary",
    "contentMediaType": "message/rfc822",
    "description": "The RFC 822 bytes of one email, as a mail client would store them.",
}
OUT_DIR = Path(__file__).resolve().parents[3] / "docs" / "asyncapi"


def document(service: str) -> dict[str, Any]:
    """The AsyncAPI document of one service's app (built offline: nothing is contacted)."""
    # The inference and trainer apps open a Feast repo at build time: not needed here.
    os.environ.setdefault(f"SPAMOPS_{service.upper().replace('-', '_')}_USE_REPUTATION", "false")
    module = importlib.import_module(f"spamops_{service.replace('-', '_')}.app")
    app = module.build_app()
    spec: dict[str, Any] = app.schema.to_specification().to_jsonable()
    # Servers point at whatever bootstrap the generating shell had: keep the default.
    for server in spec.get("servers", {}).values():
        server["host"] = "127.0.0.1:9092"
    _payloads_from_catalogue(spec, service)
    return spec


def _payload(topic: str) -> tuple[str, dict[str, Any]]:
    """Schema name and JSON Schema of what a catalogue topic carries."""
    from spamops_schemas import events
    from spamops_schemas.topics import RAW_EMAIL, catalogue

    entry = {t.name: t for t in catalogue()}[topic.removesuffix(".dlq")]
    if entry.value == RAW_EMAIL:
        return "RawEmail", RAW_EMAIL_SCHEMA
    event_cls = getattr(events, entry.value)
    return entry.value, event_cls.model_json_schema(ref_template="#/components/schemas/{model}")


def _payloads_from_catalogue(spec: dict[str, Any], service: str) -> None:
    """Real payload schemas on every channel, and a send operation per written topic."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    messages = components.setdefault("messages", {})
    schemas.pop("EmptyPayload", None)

    def use(topic: str) -> dict[str, str]:
        name, schema = _payload(topic)
        schema = dict(schema)
        for sub_name, sub in schema.pop("$defs", {}).items():
            schemas[sub_name] = sub
        schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    for channel in spec.get("channels", {}).values():
        for ref in channel.get("messages", {}).values():
            message = messages[ref["$ref"].rsplit("/", 1)[-1]]
            message["payload"] = use(channel["address"])
    for topic in WRITES[service]:
        channel_id = f"{service}:{topic}:publish"
        message_id = f"{channel_id}:Message"
        messages[message_id] = {"title": message_id, "payload": use(topic)}
        spec.setdefault("channels", {})[channel_id] = {
            "address": topic,
            "bindings": {"kafka": {"bindingVersion": "0.4.0", "topic": topic}},
            "messages": {"Message": {"$ref": f"#/components/messages/{message_id}"}},
            "servers": [{"$ref": "#/servers/development"}],
        }
        spec.setdefault("operations", {})[channel_id] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/Message"}],
        }


def render(service: str) -> str:
    """Stable JSON text of the document."""
    return json.dumps(document(service), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) every service's document."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        path = args.out / f"{service}.json"
        text = render(service)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale AsyncAPI documents (run `make asyncapi`): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
