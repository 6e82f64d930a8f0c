# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-quick lint bench clean thrift binary

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,build]'
	touch $(STAMP)

## run: install what's needed and start forsun-box on its embedded defaults
run: $(STAMP)
	$(BIN)/forsun-box serve

## test: install what's needed and run the whole suite
test: $(STAMP)
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
