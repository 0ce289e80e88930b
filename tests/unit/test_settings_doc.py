"""docs/settings.md is generated and current; unknown SPAMOPS_* variables are found."""

from __future__ import annotations

from spamops_cli import settings_doc
from spamops_runtime.settings import unknown_variables


def test_the_settings_reference_is_current_and_explains_every_variable() -> None:
    assert settings_doc.main(["--check"]) == 0, "run `python -m spamops_cli.settings_doc`"
    text = settings_doc.OUT.read_text()
    assert "| `SPAMOPS_INFERENCE_MAX_MESSAGE_BYTES` |" in text
    assert "`SPAMOPS_APPROVAL_SECRET` or `SPAMOPS_REGISTRY_BRIDGE_APPROVAL_SECRET`" in text
    assert "|  |\n" not in text, "a setting without a description"


def test_unknown_variables_are_typos_not_other_services_settings() -> None:
    from spamops_inference.settings import InferenceSettings

    environ = {
        "SPAMOPS_HOME": "/x",  # platform
        "SPAMOPS_INFERENCE_MAX_MESSAGE_BYTES": "1",  # this service's
        "SPAMOPS_TRAINER_NUM_SAMPLES": "2",  # another service's: its business
        "SPAMOPS_APPROVAL_SECRET": "k",  # another service's alias
        "SPAMOPS_AUTO_PROMOTE": "false",  # read by the CLI
        "SPAMOPS_INFERENCE_MAX_MESAGE_BYTES": "1",  # typo
        "SPAMOPS_KAFKA_BOOTSTRAP": "x",  # typo (…_SERVERS)
        "PATH": "/bin",
    }
    assert unknown_variables(InferenceSettings(), environ) == [
        "SPAMOPS_INFERENCE_MAX_MESAGE_BYTES",
        "SPAMOPS_KAFKA_BOOTSTRAP",
    ]
