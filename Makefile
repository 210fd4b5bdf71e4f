# Thin wrappers over the `textbook` CLI. Every target installs .venv first, so a fresh clone
# needs only `make test` and `make demo`.
#   make generate CONFIG=configs/default.yaml ARGS="generate.num_samples=50"
#   make demo MODEL=/path/to/local/model WEB=/path/to/web.parquet ARGS="run_dir=runs/x"

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TB     := $(VENV)/bin/textbook
CONFIG ?= configs/default.yaml
ARGS   ?=
MODEL  ?=
WEB    ?=
REPO_ID ?=
CHECKPOINT ?=
TORCH ?= cpu
TORCH_WHEELS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)

.PHONY: install lock test test-fast lint demo generate annotate classifier filter train-phase1 train-phase2 sft \
        eval compare card push bench docs clean

install: $(VENV)/.installed

# .venv is exactly requirements.lock (every package pinned, with hashes), then the project itself
# without dependencies: a clone installs what CI tested, whatever PyPI has released since.
# A changed lock rebuilds .venv from nothing, so no package it dropped stays behind. TORCH=cu130
# (or another PyTorch CUDA tag) swaps the CPU build for PyTorch's CUDA one, the lock's one exception.
$(VENV)/.installed: requirements.lock pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(if $(filter-out cpu,$(TORCH)),$(PY) -m pip install -q "torch==2.13.0+$(TORCH)" --index-url https://download.pytorch.org/whl/$(TORCH))
	echo "torch=$(TORCH)" > $@

# Resolve pyproject.toml (dependencies, the test extra, the dev group) again for Linux x86-64 and
# CPython 3.11, what CI runs; the CPU torch wheel comes from TORCH_WHEELS.
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml --group dev --extra test --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --generate-hashes \
	    -q -o requirements.lock
	@echo "requirements.lock refreshed: run 'make install' to apply it, then 'make test'"

test: install lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:logging

# For development: everything but the end-to-end tests marked slow; `make test` (and CI) runs all.
test-fast: install lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:logging -m "not slow"

lint: install
	$(VENV)/bin/ruff check pipeline filters tests bench

generate: install
	$(TB) generate -c $(CONFIG) $(ARGS)

annotate: install
	$(TB) annotate -c $(CONFIG) $(ARGS)

classifier: install
	$(TB) train-classifier -c $(CONFIG) $(ARGS)

filter: install
	$(TB) filter -c $(CONFIG) $(ARGS)

train-phase1: install
	$(TB) train --phase 1 -c $(CONFIG) $(ARGS)

train-phase2: install
	$(TB) train --phase 2 -c $(CONFIG) $(ARGS)

sft: install
	$(TB) train --phase sft -c $(CONFIG) $(ARGS)

eval: install
	$(TB) eval -c $(CONFIG) $(ARGS) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

compare: install
	$(TB) compare -c $(CONFIG) $(ARGS)

card: install
	$(TB) card -c $(CONFIG) $(ARGS)

push: install
	$(TB) push -c $(CONFIG) $(if $(REPO_ID),--repo-id $(REPO_ID)) $(ARGS)

demo: install
	$(TB) demo -c configs/demo.yaml $(ARGS) $(if $(MODEL),--model $(MODEL)) $(if $(WEB),--web $(WEB))

# Regenerate the README's config reference from the typed config.
docs: install
	$(PY) -c "import re, pathlib; from pipeline.config import reference_markdown as r; \
	p = pathlib.Path('README.md'); s = p.read_text(); a, b = '<!-- config-reference:start -->\n', '<!-- config-reference:end -->'; \
	p.write_text(s.split(a)[0] + a + r() + b + s.split(b)[1])"

bench: install
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
