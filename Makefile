# Two entry points for a fresh clone (see README):
#   make demo   set up and run the main job on the embedded defaults
#   make test   set up and run the test suite
# Both install what they need into .venv; torch is pinned by constraints.txt so the CPU wheel is used.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: setup demo test browser speech-tools clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/seem demo

# The web-page test drives Debian's chromium; install it when missing (needs root, as in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The audio-prompt tests speak with Debian's espeak-ng and resample with sox.
speech-tools:
	@command -v espeak-ng >/dev/null 2>&1 && command -v sox >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null; }

test: setup browser speech-tools
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

clean:
	rm -rf $(VENV) *.egg-info
