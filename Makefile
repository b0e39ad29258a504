# trackd developer commands. Every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# .installed: the development install (.[server,dev]); .installed-server: what `make run`
# needs (.[server]), which the development install also satisfies.
STAMP  := $(VENV)/.installed
SERVER_STAMP := $(VENV)/.installed-server
PROTOS := $(wildcard protos/trackd/v1/*.proto)
GEN    := client

.PHONY: all install run test lint proto check-gen breaking bench migrate clean

all: install

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $(STAMP) $(SERVER_STAMP)

$(SERVER_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server]'
	touch $(SERVER_STAMP)

install: $(STAMP)

## Start trackd; with no TRACKD_DATABASE_URL it runs an embedded PostgreSQL under .trackd/.
## MLflow's REST API on 127.0.0.1:5000 unless TRACKD_HTTP_LISTEN says otherwise (empty: off).
## Installs only what the server needs, not the development tools.
run: $(SERVER_STAMP)
	TRACKD_HTTP_LISTEN=$${TRACKD_HTTP_LISTEN-127.0.0.1:5000} $(BIN)/trackd serve

migrate: $(SERVER_STAMP)
	$(BIN)/trackd migrate

## Run the test suite against TRACKD_TEST_DATABASE_URL, a testcontainers or an embedded PostgreSQL.
## First `npm ci` for the Node client test (tests/polyglot), only when its package-lock.json
## changed; without npm it says so and goes on.
test: $(STAMP)
	@$(BIN)/python tests/polyglot/npm_deps.py
	$(BIN)/pytest $(PYTEST_ARGS)

## Regenerate the Python stubs (committed under client/trackd/v1) from protos/.
proto: $(STAMP)
	rm -f $(GEN)/trackd/v1/*_pb2*.py $(GEN)/trackd/v1/*_pb2*.pyi
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$(GEN) --grpc_python_out=$(GEN) \
	  --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)

## Fail when the committed stubs differ from what protos/ generates.
check-gen: $(STAMP)
	@tmp=$$(mktemp -d) && \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS) && \
	for f in $$tmp/trackd/v1/*; do \
	  cmp -s $$f $(GEN)/trackd/v1/$$(basename $$f) || { echo "stale generated file: $$(basename $$f); run make proto"; rm -rf $$tmp; exit 1; }; \
	done; \
	n_gen=$$(ls $$tmp/trackd/v1 | wc -l); n_have=$$(ls $(GEN)/trackd/v1/*_pb2* | wc -l); rm -rf $$tmp; \
	[ $$n_gen -eq $$n_have ] || { echo "generated files out of step with protos/; run make proto"; exit 1; }

lint: $(STAMP) check-gen
	$(BIN)/ruff check server client tests bench
	$(BIN)/ruff format --check server client/trackd/client tests bench
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code --exclude-path protos/google
	$(MAKE) --no-print-directory breaking

## Fail on a wire-incompatible change of protos/ (buf breaking, FILE rules) against the
## contract of a previous commit: BUF_AGAINST if set (any git ref), else the merge-base
## with main on another branch, else HEAD~1 (the previous commit of main). A clone
## without that commit (shallow, or a repository of one commit) skips, saying why.
breaking:
	@ref="$(BUF_AGAINST)"; \
	if [ -z "$$ref" ]; then \
	  ref=HEAD~1; \
	  if [ "$$(git rev-parse --abbrev-ref HEAD 2>/dev/null)" != main ] \
	    && base=$$(git merge-base HEAD main 2>/dev/null) \
	    && [ "$$base" != "$$(git rev-parse HEAD)" ]; then ref=$$base; fi; \
	fi; \
	if ! commit=$$(git rev-parse --verify --quiet "$$ref^{commit}" 2>/dev/null); then \
	  echo "buf breaking: skipped: $$ref is not in this clone (a shallow clone or a first commit); fetch more history (git fetch --deepen=1) to check"; \
	elif ! git cat-file -e "$$commit:buf.yaml" 2>/dev/null; then \
	  echo "buf breaking: skipped: $$ref has no buf.yaml, so no contract to compare with"; \
	else \
	  echo "buf breaking --against .git#ref=$$ref ($$commit)"; \
	  $(BIN)/buf breaking --against ".git#ref=$$commit"; \
	fi

## Benchmarks against the same PostgreSQL as the tests; figures go to bench/README.md.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
