# `make run` and `make test` are the two commands; both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# Development defaults for `make run` only; real deployments set their own.
export FAIRGATE_ADMIN_TOKEN ?= demo-admin-token
export FAIRGATE_DEMO_SECRET ?= fairgate-demo-secret-for-make-run-only
export FAIRGATE_HASH_SALT ?= fairgate-demo-salt-for-make-run-only
DEMO_LISTEN := 127.0.0.1:9000

.PHONY: run test bench loadtest clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(INSTALLED)
	@$(BIN)/python -m gateway.demo --listen $(DEMO_LISTEN) & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	echo ""; \
	echo "  fairgate is starting in front of the demo API on $(DEMO_LISTEN)"; \
	echo "    curl -i http://127.0.0.1:8080/api/v1/tickets/1"; \
	echo "    curl -i http://127.0.0.1:8080/portal/tickets"; \
	echo "    curl -s http://127.0.0.1:8081/metrics | grep fairgate_requests"; \
	echo "    curl -X POST -H 'Authorization: Bearer $$FAIRGATE_ADMIN_TOKEN' http://127.0.0.1:8081/admin/reload"; \
	echo ""; \
	$(BIN)/fairgate run -c config/gateway.yaml

test: $(INSTALLED)
	$(BIN)/python -m pytest

bench: $(INSTALLED)
	@mkdir -p bench/results
	$(BIN)/python bench/limiter_micro.py | tee bench/results/limiter.md
	$(BIN)/python bench/run.py --markdown bench/results/latest.md

# Against a running `make run`; the report lands in loadtest/results/ (git-ignored).
HOST ?= http://127.0.0.1:8080
USERS ?= 40
SPAWN_RATE ?= 10
DURATION ?= 90s
loadtest: $(INSTALLED)
	$(BIN)/pip install --quiet -e '.[load]'
	@mkdir -p loadtest/results
	$(BIN)/locust -f loadtest/locustfile.py --headless -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
	  --host $(HOST) --only-summary --csv loadtest/results/run --html loadtest/results/report.html

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis bench/results
