# Entry points: run, test, bench, lint, proto, dist. Everything installs into .venv.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PUBLIC_PROTOS   := $(wildcard protos/iclaim/v1/*.proto)
INTERNAL_PROTOS := $(wildcard protos/iclaim_hub/internal/v1/*.proto)
PROTO_STAMP := sdk/iclaim/v1/.generated

.PHONY: run test test-unit test-integration bench lint proto dist venv clean

venv: $(STAMP)

# Two distributions, installed editable: the participant SDK (sdk/) and the hub (.).
$(STAMP): pyproject.toml sdk/pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './sdk[fhir]' -e '.[dev]'
	touch $@

proto: $(PROTO_STAMP)

# Generated code and .pyi stubs live only here; never edited, never copied, never
# in git: iclaim.v1 (public) inside the SDK, iclaim_hub.internal.v1 inside the hub.
# --mypy_grpc_out (protoc-gen-mypy_grpc, from mypy-protobuf in .venv/bin) writes typed
# *_pb2_grpc.pyi stubs: grpcio-tools has no pyi output for the gRPC modules, and
# without them every Stub/add_*_to_server call is untyped under mypy --strict.
PROTOC = PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  -I$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
	  -I$$($(PY) -c 'import google.type, os; print(os.path.dirname(os.path.dirname(google.type.__path__[0])))')
$(PROTO_STAMP): $(STAMP) $(PUBLIC_PROTOS) $(INTERNAL_PROTOS) Makefile
	rm -rf sdk/iclaim/v1 iclaim_hub/internal
	$(PROTOC) --python_out=sdk --pyi_out=sdk --grpc_python_out=sdk --mypy_grpc_out=sdk $(PUBLIC_PROTOS)
	$(PROTOC) --python_out=. --pyi_out=. --grpc_python_out=. --mypy_grpc_out=. $(INTERNAL_PROTOS)
	touch sdk/iclaim/v1/__init__.py iclaim_hub/internal/__init__.py iclaim_hub/internal/v1/__init__.py
	touch $@

run: $(PROTO_STAMP)
	$(VENV)/bin/iclaim up

test: $(PROTO_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(PROTO_STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: $(PROTO_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# Both wheels, generated stubs inside, from what is on disk (nothing generated is in git).
dist: $(PROTO_STAMP)
	rm -rf dist sdk/build build
	$(PY) -m build --wheel --no-isolation --outdir dist sdk
	$(PY) -m build --wheel --no-isolation --outdir dist .

lint: $(PROTO_STAMP)
	$(VENV)/bin/ruff check sdk/iclaim iclaim_hub iclaim_ops services gateway tests bench
	$(VENV)/bin/ruff format --check sdk/iclaim iclaim_hub iclaim_ops services gateway tests bench
	$(VENV)/bin/mypy sdk/iclaim iclaim_hub iclaim_ops services gateway
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) sdk/iclaim/v1 iclaim_hub/internal .iclaim dist build sdk/build
