# The two commands a user types on a fresh machine (each installs what it needs first):
#   make train   hybrid training on the embedded default (all-MiniLM-L6-v2 + recursive head, text Sudoku)
#   make test    the test suite (what CI runs)
# Everything is installed into .venv inside the checkout.

VENV ?= .venv
PY := $(VENV)/bin/python
# Where no NVIDIA GPU exists, take the CPU build of torch: an unpinned `torch` pulls a multi-GB CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)

.PHONY: setup train test test-all lint-configs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all]"
	touch $@

train: setup
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/accelerate launch --num_processes 1 recipes/train_hybrid.py $(ARGS)

# pytest exits 5 when it collected nothing; that is a failure here, never a pass.
test: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: setup
	$(MAKE) test PYTEST_ARGS="-m ''"
