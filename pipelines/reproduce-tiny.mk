# reproduce-tiny.mk: the embedded default, run on one CPU machine with nothing downloaded.
# Each stage is a file target: a finished stage is not redone, and deleting a stage's output
# reruns it and what follows. This version runs the chain that exists so far:
#   synth (datasets, eval sets, tokenizer) + mkckpt (random RICE-ViT + Qwen3 at the tiny preset)
#   -> merge (stage-0 HF checkpoint with the synth tokenizer) -> hf2mcore (mcore release, TP 2 x PP 2)
#   -> mcore2hf (back to HF, checked bit-identical)
# Packing, training and evaluation join as their programs land.

TINY        ?= runs/tiny
TINY_PRESET ?= data-specs/models/tiny.json
TINY_SEED   ?= 1234
TINY_TP     ?= 2
TINY_PP     ?= 2

$(TINY)/data/.done: $(BIN)/synth
	@mkdir -p $(TINY)
	$(BIN)/synth --out $(TINY)/data --seed $(TINY_SEED) --force
	touch $@

$(TINY)/src/.done: $(BIN)/mkckpt $(TINY_PRESET)
	@mkdir -p $(TINY)
	$(BIN)/mkckpt --preset $(TINY_PRESET) --seed $(TINY_SEED) --out $(TINY)/src --force
	touch $@

$(TINY)/stage0/.done: $(TINY)/src/.done $(TINY)/data/.done $(BIN)/merge
	$(BIN)/merge --vit $(TINY)/src/vit --llm $(TINY)/src/llm --tokenizer $(TINY)/data/tokenizer --out $(TINY)/stage0 --force
	touch $@

$(TINY)/stage0-mcore/.done: $(TINY)/stage0/.done $(BIN)/hf2mcore
	$(BIN)/hf2mcore $(TINY)/stage0 $(TINY)/stage0-mcore --tp $(TINY_TP) --pp $(TINY_PP) --force
	touch $@

$(TINY)/stage0-hf/.done: $(TINY)/stage0-mcore/.done $(BIN)/mcore2hf
	$(BIN)/mcore2hf $(TINY)/stage0-mcore $(TINY)/stage0-hf --force
	cmp $(TINY)/stage0/model.safetensors $(TINY)/stage0-hf/model.safetensors
	touch $@

reproduce-tiny: all $(TINY)/stage0-hf/.done
	@echo "reproduce-tiny: done in $(TINY): synthetic data + tokenizer, stage0 -> mcore TP$(TINY_TP)xPP$(TINY_PP) -> HF (bit-identical)"
