# The two entry points of the README: `make demo` and `make test`. Each sets itself up.
# `make lint` (ruff + mypy) runs in CI before the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed
# torch from this project's machines' local wheel store (Python 3.11, x86_64); override elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint clean gpu-wheels

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test,export,tensorboard]"
	@# WordNet's noun files for the imagenet-bridge teacher (optional: without them it says so and goes on)
	@test -f /usr/share/wordnet/data.noun || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get install -y -q wordnet-base >/dev/null 2>&1; } || echo "note: WordNet not installed (apt-get install wordnet-base)"
	touch $(STAMP)

install: $(STAMP)

$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[lint]"
	touch $(LINT_STAMP)

demo: $(STAMP)
	$(VENV)/bin/dho demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# the wheels bench/gpu.sh installs on a GPU machine without network (carry bench/wheels with it)
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps -d bench/wheels "open_clip_torch==$$($(PY) -c 'import open_clip; print(open_clip.__version__)')" ftfy wcwidth

clean:
	rm -rf runs .pytest_cache
