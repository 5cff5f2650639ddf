# The two commands of operations.md; everything else is a convenience.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
# Independent tests run in parallel; PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 2

.PHONY: run test lint migrate clean bench bench-quick bench-peers

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(PY) manage.py runmail

# The outside programs some tests drive (tests/programs.txt) are installed first where that can be
# done (Debian or Ubuntu, as root); elsewhere those tests are skipped and the summary names them.
test: $(STAMP)
	tests/install-programs.sh
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

migrate: $(STAMP)
	$(PY) manage.py migrate

# Benchmarks (docs/benchmarks.md): Debian's postfix package gives the SMTP client (smtp-source) and
# the SMTP baseline, a private Postfix the runner starts and stops (installing the package starts
# nothing); bench-peers also installs dovecot-pop3d and runs Dovecot for POP3.
BENCH_ARGS ?=

bench: $(STAMP)
	bench/install-peers.sh
	$(PY) bench/run.py $(BENCH_ARGS)

# One SMTP measurement against Postfix on SQLite, about two minutes: a smoke run of the runner.
bench-quick: $(STAMP)
	bench/install-peers.sh
	$(PY) bench/run.py --quick $(BENCH_ARGS)

bench-peers: $(STAMP)
	bench/install-peers.sh --peers
	$(PY) bench/run.py --peers $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
