# Set-up and the two jobs of the README. `make install` is idempotent.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
# pytest-xdist workers: one per core (each runs torch on one thread, tests/conftest.py)
JOBS ?= auto

.PHONY: install demo test test-fast bench docs

install:
	@$(PYTHON) scripts/install.py --torch-version $(TORCH_VERSION)

demo: install
	$(PYTHON) -m flowsde demo

test:
	@$(PYTHON) scripts/install.py --torch-version $(TORCH_VERSION) --anchors
	$(PYTHON) -m pytest -q -n $(JOBS)

test-fast: install
	$(PYTHON) -m pytest -q -n $(JOBS) -m "not slow"

bench: install
	$(PYTHON) benchmarks/run_all.py

# The user guide and the API reference, built strictly (a broken reference fails) into site/.
docs: install
	$(PYTHON) -m mkdocs build --strict --site-dir site
