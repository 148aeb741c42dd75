# Entry points: run, test, bench, lint, proto, dist. Everything installs into .venv.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PUBLIC_PROTOS   := $(wildcard protos/iclaim/v1/*.proto)
INTERNAL_PROTOS := $(wildcard protos/iclaim_hub/internal/v1/*.proto)
PROTO_STAMP := sdk/iclaim/v1/.generated

.PHONY: run test test-unit test-integration bench soak lint proto dist venv clean image-check

venv: $(STAMP)

# Three distributions, installed editable: the participant SDK (sdk/), the hub (.) and
# the participant portal (portal/, with its browser-test extra).
$(STAMP): pyproject.toml sdk/pyproject.toml portal/pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './sdk[fhir,insurer]' -e '.[dev,devstack]' -e './portal[test]'
	# xds-protos (Envoy's protos, for ext_authz) ships an older copy of opentelemetry/proto/;
	# whichever installs last wins, and the OTLP exporter needs opentelemetry-proto's own.
	$(PY) -m pip install -q --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(PY) -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"
	touch $@

proto: $(PROTO_STAMP)

# Generated code (+ .pyi) is never edited or committed: tools/gen_protos.py says where it goes.
$(PROTO_STAMP): $(STAMP) $(PUBLIC_PROTOS) $(INTERNAL_PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	touch $@

run: $(PROTO_STAMP)
	$(VENV)/bin/iclaim up

test: $(PROTO_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(PROTO_STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: $(PROTO_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# Claims through the whole hub while processes are killed, Redis flushed, PostgreSQL
# restarted (its own servers, README "Soak"); `make soak SOAK_CLAIMS=1000 SOAK_KILLS=5` in CI.
SOAK_CLAIMS ?= 10000
SOAK_KILLS  ?= 30
soak: $(PROTO_STAMP)
	SOAK_CLAIMS=$(SOAK_CLAIMS) SOAK_KILLS=$(SOAK_KILLS) $(PY) -m bench.soak

# The three wheels (generated stubs inside the SDK), from what is on disk (nothing generated is in git).
dist: $(PROTO_STAMP)
	rm -rf dist sdk/build build portal/build
	$(PY) -m build --wheel --no-isolation --outdir dist sdk
	$(PY) -m build --wheel --no-isolation --outdir dist .
	$(PY) -m build --wheel --no-isolation --outdir dist portal

# Builds the hub image and starts a service from it (podman/buildah, root; minutes).
image-check: $(PROTO_STAMP)
	$(PY) tools/image_check.py

lint: $(PROTO_STAMP)
	$(VENV)/bin/ruff check sdk/iclaim iclaim_hub iclaim_ops services gateway sandbox portal/iclaim_portal tests bench tools
	$(VENV)/bin/ruff format --check sdk/iclaim iclaim_hub iclaim_ops services gateway sandbox portal/iclaim_portal tests bench tools
	$(VENV)/bin/mypy sdk/iclaim iclaim_hub iclaim_ops services gateway sandbox portal/iclaim_portal bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) sdk/iclaim/v1 iclaim_hub/internal .iclaim dist build sdk/build portal/build
