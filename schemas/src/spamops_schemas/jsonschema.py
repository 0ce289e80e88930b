"""Generate the JSON Schema files of every event into ``schemas/jsonschema/``.

Run ``python -m spamops_schemas.jsonschema [DIR]``; a test fails when the
checked-in files differ from what this produces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spamops_schemas.events import ALL_EVENTS


def render_all() -> dict[str, str]:
    """File name -> JSON text of each event's schema (read mode)."""
    files: dict[str, str] = {}
    for cls in ALL_EVENTS:
        schema = cls.model_json_schema(mode="validation")
        schema["$id"] = f"https://spamops.dev/schemas/{cls.EVENT_TYPE}.v{cls.SCHEMA_VERSION}.json"
        schema["x-schema-version"] = cls.SCHEMA_VERSION
        files[f"{cls.EVENT_TYPE}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def default_dir() -> Path:
    """``schemas/jsonschema`` of the source checkout."""
    return Path(__file__).resolve().parents[2] / "jsonschema"


def main(argv: list[str] | None = None) -> int:
    """Write the schema files; print what changed."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else default_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        path = out / name
        if not path.exists() or path.read_text("utf-8") != text:
            path.write_text(text, "utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
