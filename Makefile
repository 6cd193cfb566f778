# `make test`: create .venv if missing, install the pinned versions, run the test suite.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hamode-installed

.PHONY: install data train test test-slow lint docs clean

CONFIG ?= configs/mnist_conv_h2.yaml

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -c "from hamode.data.mnist import obtain_mnist; print('MNIST raw files verified in', obtain_mnist('data'))"

# Train the default H-DNN (the Hamiltonian CNN, ConvH2 stages, on MNIST), then test its best checkpoint.
train: data
	$(VENV)/bin/hamode fit --config $(CONFIG)
	$(VENV)/bin/hamode test --config $(CONFIG) --ckpt_path best

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# `make docs`: the documentation site, built into site/ with --strict (a warning fails); the tutorials run.
docs: data
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build site *.egg-info
