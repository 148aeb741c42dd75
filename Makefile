# Entry points: run, test, bench, lint, proto. Everything installs into .venv.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
PROTO_STAMP := iclaim/v1/.generated

.PHONY: run test test-unit test-integration bench lint proto venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

proto: $(PROTO_STAMP)

# Generated code and .pyi stubs live only here; never edited, never copied.
# --mypy_grpc_out (protoc-gen-mypy_grpc, from mypy-protobuf in .venv/bin) writes typed
# *_pb2_grpc.pyi stubs: grpcio-tools has no pyi output for the gRPC modules, and
# without them every Stub/add_*_to_server call is untyped under mypy --strict.
$(PROTO_STAMP): $(STAMP) $(PROTO_SRC) Makefile
	rm -rf iclaim/v1 iclaim/internal/v1
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  -I$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
	  -I$$($(PY) -c 'import google.type, os; print(os.path.dirname(os.path.dirname(google.type.__path__[0])))') \
	  --python_out=. --pyi_out=. --grpc_python_out=. --mypy_grpc_out=. $(PROTO_SRC)
	touch iclaim/v1/__init__.py iclaim/internal/v1/__init__.py
	touch $@

run: $(PROTO_STAMP)
	$(VENV)/bin/iclaim up

test: $(PROTO_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(PROTO_STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: $(PROTO_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

lint: $(PROTO_STAMP)
	$(VENV)/bin/ruff check iclaim services gateway tests bench
	$(VENV)/bin/mypy iclaim services gateway

clean:
	rm -rf $(VENV) iclaim/v1 iclaim/internal/v1 .iclaim
