# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# flags for `make run`, e.g. make run ARGS="--http 127.0.0.1:9012 --port 6468"
ARGS ?=

.PHONY: run test test-quick lint bench clean thrift binary constraints

# the same pinned versions everywhere (constraints.txt, see `make constraints`)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,test,build]'
	touch $(STAMP)

## run: install what's needed and start forsun-box (flags in ARGS="...")
run: $(STAMP)
	@echo "make run: the forsun client is $(abspath $(BIN))/forsun (type just 'forsun' after: . $(BIN)/activate)"
	@$(BIN)/forsun-box serve $(ARGS) || { status=$$?; \
	  [ $$status = 130 ] || echo "make run: forsun-box stopped with status $$status; pass serve flags with ARGS, e.g. make run ARGS='--http 127.0.0.1:9012 --port 6468' (all flags: $(BIN)/forsun-box serve --help)" >&2; \
	  exit $$status; }

## test: install what's needed (Python packages; Debian ones when root or sudo allows) and run the whole suite
test: $(STAMP)
	@bash .ci/packages
	$(BIN)/python -m pytest -q

## test-quick: unit and integration tests, without the browser, the frozen binary,
## the kill -9 chaos and the tests marked slow (see CONTRIBUTING.md)
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/integration -m "not (browser or binary or chaos or slow)"

## lint: formatter, linter and type checker (run by .ci/run before the tests)
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check forsun_box tests bench
	$(BIN)/mypy forsun_box

## bench: forsun-box side by side with forsun (see bench/README.md)
bench: $(STAMP)
	$(BIN)/python bench/run.py

## constraints: re-pin constraints.txt from a fresh install of pyproject.toml's dependencies
constraints:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet --upgrade pip
	build/lock-venv/bin/pip install --quiet -e '.[all,test,build]'
	{ sed -n '1,3p' constraints.txt; build/lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf build/lock-venv

## thrift: regenerate forsun_box/thrift/forsun/ from the IDL (needs Debian's thrift-compiler)
THRIFT_GEN := build/thrift-gen
thrift:
	rm -rf $(THRIFT_GEN) && mkdir -p $(THRIFT_GEN)
	thrift --gen py -out $(THRIFT_GEN) forsun_box/thrift/forsun.thrift
	rm -f $(THRIFT_GEN)/forsun/Forsun-remote
	rm -rf forsun_box/thrift/forsun
	cp -r $(THRIFT_GEN)/forsun forsun_box/thrift/forsun

## binary: the one-file executable dist/forsun-box (PyInstaller; spec and script in build/)
binary: $(STAMP)
	PYTHON=$(BIN)/python bash build/build.sh

clean:
	rm -rf $(VENV) build/work dist *.egg-info
