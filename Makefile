# make run: install into .venv and run the pipeline on the embedded default dataset.
# make test: same install, then the test suite.
# make pi-check: the light install and `verisparse profile` on an emulated arm64 Debian (a
#   Raspberry Pi 4's userland under qemu-user), then the test that its bytes equal x86's.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= runs/default
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PI_ROOTFS ?= $(HOME)/.cache/verisparse/pi-rootfs

.PHONY: run test install bench clean toolchain pi-check

install: $(STAMP)

# The venv module is a separate Debian package (python3-venv); install it when missing.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[full,test]'
	touch $(STAMP)

# Cross compiler, newlib (semihosting) and QEMU for the firmware stage; Debian packages.
toolchain:
	@command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null || \
		($(SUDO) apt-get update && \
		 $(SUDO) apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium) || \
		echo "chromium not installed: the report's browser test will be skipped"

run: $(STAMP) toolchain
	@if [ -f $(RUN)/checkpoint.pt ]; then resume=--resume; fi; \
	$(VENV)/bin/verisparse train --dataset mnist5k --arch cnn_4layer --eps 0.1 --sparsity 0.9 \
		--out $(RUN) $$resume
	$(VENV)/bin/verisparse export $(RUN)
	$(VENV)/bin/verisparse verify $(RUN)/model.onnx --method auto --min-vra 0.85
	@# int8: bounds and attacks; --method auto adds integer branch and bound (minutes on 2 cores)
	$(VENV)/bin/verisparse verify $(RUN)/model_int8.tflite --method crown --min-vra 0.80 --eps-sweep 0.03:0.15:0.03
	$(VENV)/bin/verisparse firmware $(RUN) --board mps2-an386 --out $(RUN)/firmware --run
	$(VENV)/bin/verisparse report $(RUN)

test: $(STAMP) toolchain
	$(PY) -m pytest -q -m "not pi" --durations=25  # the pi tests belong to `make pi-check`; CI logs the slowest

# The root filesystem is built once (about 9 minutes, emulated) and cached outside the checkout.
pi-check: $(STAMP)
	@[ -f $(RUN)/model_int8.tflite ] || $(MAKE) run
	@[ -f $(RUN)/profile.json ] || $(VENV)/bin/verisparse profile $(RUN) --runs 100
	$(SUDO) env PI_ROOTFS=$(PI_ROOTFS) RUN=$(RUN) nice tools/pi/check.sh
	PI_ROOTFS=$(PI_ROOTFS) RUN=$(RUN) $(PY) -m pytest -q -m pi tests/test_pi.py

# The README's headline table: 0.95, 100-epoch budget, every method at the lr measured best for
# that budget, seeds no setting was chosen on (about 30-42 min on 2 cores). Both structures print
# MET on these seeds (unstructured at -0.4 pt, 0.33x); structured is -0.38 pt over the nine
# held-out seeds run so far (README). `make bench BENCH_SPARSITIES=0.9,0.95,0.99` runs the other
# sparsities with their settings; 0.99's were chosen on seeds 0-11 (unstructured stops thinning at
# 3/4 of training: +6.0 pt over eight seeds; 45 epochs to stay inside a third of HYDRA's time;
# structured starts with half its units at lr 5e-3: +1.5 pt over twelve) and MET on seeds 27-29
# (+5.2 pt in 0.27x, +0.2 pt in 0.16x). Override BENCH_ARGS for anything else.
BENCH_SPARSITIES ?= 0.95
BENCH_SEEDS ?= 24,25,26
BENCH_STRUCTURES ?= unstructured,structured
BENCH_PLOT ?= bench/train_time_100.png
BENCH_ARGS ?= --epochs 100 --sparsities $(BENCH_SPARSITIES) --structures $(BENCH_STRUCTURES) \
	--seeds $(BENCH_SEEDS) --jobs 2 \
	--set dense.lr=1e-3 --set prune-finetune.lr=5e-4 --set hydra.lr=1e-3 \
	--set verisparse.unstructured.lr=1.5e-3 --set verisparse.unstructured.update_every=50 \
	--set verisparse.unstructured.initial_density=1 --set verisparse.unstructured.prune_window=1 \
	--set verisparse.unstructured@0.99.prune_window=0.75 --set verisparse.unstructured@0.99.epochs=45 \
	--set verisparse.unstructured.epochs=52 --set verisparse.structured.lr=3e-3 \
	--set verisparse.structured.initial_density=1 --set verisparse.structured.prune_window=0.6 \
	--set verisparse.structured.update_end=0 --set verisparse.structured.batch_size=100 \
	--set verisparse.structured.update_every=50 --set verisparse.structured.epochs=60 \
	--set verisparse.structured@0.99.initial_density=0.5 --set verisparse.structured@0.99.lr=5e-3 \
	--set dense.eval_every=5 --set prune-finetune.eval_every=5 --set hydra.eval_every=5 \
	--set verisparse.eval_every=5 --plot $(BENCH_PLOT)

bench: $(STAMP)
	$(PY) bench/train_time.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs
