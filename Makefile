# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT

.PHONY: venv demo demo-one run test test-hostile lint migrate services stop bench-ingest bench-match bench-export bench-everything bench-pull bench-token conformance explain-claim screenshots postman clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed

services: venv  ## start private PostgreSQL/Redis under var/ when none answer locally
	@$(PY) -m config.embedded env

migrate: services
	$(PY) manage.py migrate --noinput

demo: services  ## fresh machine → two payers (two databases, two ports) exchange end to end; prints the table
	$(PY) scripts/demo_two_payers.py

demo-one: migrate  ## one payer: data loaded, service up, a scripted partner plays the exchange against it
	$(PY) scripts/demo.py

run: migrate  ## web, workers, beat and flower in the foreground; Ctrl-C stops them all
	$(PY) -m pdex.metrics.reset
	$(VENV)/bin/honcho start -f Procfile -p $(PORT)

lint: venv  ## ruff, and the import contract: every app imports only the apps below it
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: venv lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-hostile: venv  ## ≥5,000 generated hostile requests against a live gunicorn (config/gunicorn.py): 5xx, HTML, slowest
	$(PY) scripts/hostile.py

bench-ingest: migrate
	$(PY) scripts/bench_ingest.py

bench-match: venv  ## 10,000 MemberBundles through bulk-member-match over HTTP and a real worker (own database): members/s
	$(PY) scripts/bench_match.py

bench-export: venv  ## $davinci-data-export of every member (×1, ×10, ×100) over HTTP (gunicorn + a real worker) vs a true raw COPY: res/s, MB/s, gzip, files, peak RSS, goals
	$(PY) scripts/bench_export.py

bench-everything: migrate  ## Patient/$everything paged through the largest member (×1, ×10): resources/s, peak memory
	$(PY) scripts/bench_everything.py

bench-pull: migrate  ## a pull of every member of the shared data ×10 between two payers: members/s, resources/s, puller peak memory
	$(PY) scripts/bench_pull.py

bench-token: venv  ## token endpoint (own database): signed assertions in, bearer tokens out, per second
	$(PY) scripts/bench_token.py

CONFORMANCE_ARGS ?= --with-jwks-url
conformance: venv  ## the SMART Bulk Data Tester (../shared/tools/bdt) in v2 and v1 mode (and v2 with a JWKS-URL client) against a service of its own
	$(PY) scripts/conformance.py $(CONFORMANCE_ARGS)

explain-claim: migrate  ## the job engine's claim on 50,000 pending chunks: its EXPLAIN ANALYZE and ms per claim
	$(PY) scripts/explain_claim.py

screenshots: migrate  ## the admin photographed by headless Chromium into docs/images/ (apt-get install chromium chromium-driver)
	$(PY) scripts/screenshots.py

postman: venv  ## docs/examples/pdex-p2p.postman_collection.json from the example bodies (docs/quickstart.md)
	$(PY) scripts/postman.py

stop:
	$(PY) -m config.embedded stop

clean: stop  ## remove the private servers' data and the file exports under $PDEX_VAR_DIR (default var/)
	$(PY) -m config.embedded clean
