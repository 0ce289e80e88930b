# spamops — two commands on a fresh machine: `make up` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: help bootstrap up down status test test-fast lint schemas asyncapi settings-doc demo-drift clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

bootstrap: ## Install everything missing (apt packages, uv, .venv, Kafka jars, Triton env)
	@bash scripts/bootstrap.sh

up: bootstrap ## Install, start the stack and the services, and run the main job
	$(VENV)/spamops up
	$(VENV)/spamops ingest --promote-first
	$(VENV)/spamops demo

down: ## Stop what `make up` started (data is kept)
	@if [ -x $(VENV)/spamops ]; then $(VENV)/spamops down; fi

status: ## Show the local stack
	$(VENV)/spamops status

# mypy's incremental cache lives outside the clone, like the deploy tools: a fresh clone on
# the same machine re-checks what changed (~15 s) instead of everything (~95 s cold).
MYPY_CACHE_DIR ?= $(HOME)/.cache/spamops/mypy

lint: ## ruff, mypy and the generated-schema check
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	MYPY_CACHE_DIR=$(MYPY_CACHE_DIR) $(VENV)/mypy

test: bootstrap ## Install, then run every test (unit, integration, end-to-end) on the real stack
	@# lint and the deploy checks are single-threaded: side by side on the two cores
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint deploy-check
	$(VENV)/pytest $(PYTEST_ARGS)

test-fast: ## Unit and integration tests only, skipping slow end-to-end ones
	$(VENV)/pytest -m "not e2e" $(PYTEST_ARGS)

schemas: ## Regenerate the JSON Schema files
	$(VENV)/python -m spamops_schemas.jsonschema

demo-drift: ## On the running platform: the temporal shift, drift, retraining, better model
	$(VENV)/spamops demo-drift

asyncapi: ## Regenerate the services' AsyncAPI documents (docs/asyncapi/)
	SPAMOPS_LOG_LEVEL=WARNING $(VENV)/python -m spamops_cli.asyncapi

clean: down ## Stop the stack and delete its state (.spamops/)
	rm -rf .spamops

# --- deploy files (issue 8): real tools, built once per machine into ~/.cache/spamops/deploy-tools/ ---
.PHONY: deploy-check
deploy-check: ## kustomize build, docker compose config, tofu fmt, checkov over deploy files
	@bash scripts/deploy_check.sh
settings-doc: ## Regenerate docs/settings.md from the settings classes
	$(VENV)/python -m spamops_cli.settings_doc
