VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 4

.PHONY: run test bench bench-slack clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/baton run

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.digest_build

bench-slack: $(STAMP)
	$(PY) -m bench.slack_ack

clean:
	rm -rf $(VENV) *.egg-info baton.db baton.checkpoints.db
