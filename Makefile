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

.PHONY: install test lint demo generate annotate classifier filter train-phase1 train-phase2 sft \
        eval compare card push bench docs clean

install: $(VENV)/.installed

# torch is installed first, pinned to the machine's local CPU wheel, so the project's `torch`
# requirement is already met and pip never pulls the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: install lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:logging

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
