# Executor Service: developer and operator entry points. `make help` lists them.
# The work is done by scripts/ (each works on its own, from any directory); this file names it.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PORT ?= 8083
REDIS_URL ?= redis://localhost:6379/0
PROXY_LISTEN ?= 127.0.0.1:2375
PROXY_UPSTREAM ?= unix:///var/run/docker.sock
RUN_DIR ?= .run
PYTHON ?= python3
PYTEST_ARGS ?=
SHARED_DIR ?= ../shared
# The sandbox image: the service's own setting, so the build and the worker agree.
EXECUTOR_PYTHON_IMAGE ?= executor-python:3.11
SERVICE_IMAGE ?= executor-service:latest

VENV := .venv
# What the scripts read; passed explicitly so nothing else inherits these names by accident.
SCRIPT_ENV := PORT='$(PORT)' REDIS_URL='$(REDIS_URL)' PROXY_LISTEN='$(PROXY_LISTEN)' \
	PROXY_UPSTREAM='$(PROXY_UPSTREAM)' RUN_DIR='$(RUN_DIR)' PYTHON='$(PYTHON)' \
	EXECUTOR_PYTHON_IMAGE='$(EXECUTOR_PYTHON_IMAGE)' SERVICE_IMAGE='$(SERVICE_IMAGE)'

.PHONY: help setup venv images up down test lint bench bench-serving check wheelhouse service-image clean clean-images

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-14s %s\n", $$1, $$2 }'

setup: ## install what is missing, start Docker and Redis when none answers, build .venv and the sandbox images
	@$(SCRIPT_ENV) bash scripts/host-setup.sh
	@$(SCRIPT_ENV) bash scripts/build-images.sh sandbox languages

venv: ## create or refresh .venv only
	@$(SCRIPT_ENV) bash scripts/host-setup.sh venv

images: ## build the sandbox images, one per language (starting a Docker engine if needed)
	@$(SCRIPT_ENV) bash scripts/host-setup.sh packages docker
	@$(SCRIPT_ENV) bash scripts/build-images.sh sandbox languages

up: setup ## start proxy, worker and API in the background; returns once GET /health is 200
	@$(SCRIPT_ENV) bash scripts/up.sh

down: ## stop what `make up` (and the setup) started, nothing else
	@$(SCRIPT_ENV) bash scripts/down.sh

test: setup ## run the whole test suite (it starts its own worker, API and proxy), then the hostile suites under gVisor
	REDIS_URL='$(REDIS_URL)' PYTHONPATH='$(CURDIR)' $(VENV)/bin/pytest $(PYTEST_ARGS)
	@if DOCKER_HOST='$(PROXY_UPSTREAM)' docker info --format '{{json .Runtimes}}' | grep -q '"runsc"'; then \
		echo "make test: the hostile suites again, every sandbox under runsc (gVisor)"; \
		EXECUTOR_TEST_RUNTIME=runsc REDIS_URL='$(REDIS_URL)' PYTHONPATH='$(CURDIR)' \
			$(VENV)/bin/pytest -m hostile tests/sandbox $(PYTEST_ARGS); \
	else \
		echo "make test: no runsc runtime on this engine; the gVisor pass is skipped"; \
	fi

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup ## run the benchmarks
	REDIS_URL='$(REDIS_URL)' $(VENV)/bin/python -m bench

bench-serving: setup ## the API under thousands of waiting and stalled clients, gthread beside gevent
	REDIS_URL='$(REDIS_URL)' $(VENV)/bin/python -m bench.serving

check: ## contract conformance of the running stack (`make up` first)
	$(PYTHON) $(SHARED_DIR)/tools/contract-check http://127.0.0.1:$(PORT)

wheelhouse: ## wheels of requirements.txt in wheelhouse/, for the service image's Python
	@$(SCRIPT_ENV) bash scripts/host-setup.sh packages docker venv
	@$(SCRIPT_ENV) bash scripts/build-images.sh wheelhouse

service-image: wheelhouse ## the service image (API, worker, proxy) used by docker-compose.yml
	@$(SCRIPT_ENV) bash scripts/build-images.sh service

clean: down ## remove .run/, .venv/ and wheelhouse/ (after stopping what .run/ records); images stay
	rm -rf '$(RUN_DIR)' $(VENV) wheelhouse

clean-images: ## remove the images this project builds (not the base python:3.11-slim)
	@for image in $$($(PYTHON) -m executor.languages images | cut -f2) $(EXECUTOR_PYTHON_IMAGE) $(SERVICE_IMAGE); do \
		if DOCKER_HOST='$(PROXY_UPSTREAM)' docker image inspect "$$image" >/dev/null 2>&1; then \
			DOCKER_HOST='$(PROXY_UPSTREAM)' docker image rm "$$image"; \
		fi; \
	done
