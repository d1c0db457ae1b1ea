# reproduce-tiny.mk: the embedded default, run on one CPU machine with nothing downloaded.
# Each stage is a file target: a finished stage is not redone, and deleting a stage's output
# reruns it and what follows. This first version runs the checkpoint chain that exists so far:
#   mkckpt (random RICE-ViT + Qwen3 at the tiny preset) -> merge (stage-0 HF checkpoint)
#   -> hf2mcore (mcore release, TP 2 x PP 2) -> mcore2hf (back to HF)
# The data, training and evaluation stages join as their programs land.

TINY        ?= runs/tiny
TINY_PRESET ?= data-specs/models/tiny.json
TINY_SEED   ?= 1234
TINY_TP     ?= 2
TINY_PP     ?= 2
# Until synth writes the tiny tokenizer, the special ids come from the preset.
TINY_IMAGE_ID = $(shell jq -r .image_token_id $(TINY_PRESET))
TINY_VIDEO_ID = $(shell jq -r .video_token_id $(TINY_PRESET))

$(TINY)/src/.done: $(BIN)/mkckpt $(TINY_PRESET)
	@mkdir -p $(TINY)
	$(BIN)/mkckpt --preset $(TINY_PRESET) --seed $(TINY_SEED) --out $(TINY)/src --force
	touch $@

$(TINY)/stage0/.done: $(TINY)/src/.done $(BIN)/merge
	$(BIN)/merge --vit $(TINY)/src/vit --llm $(TINY)/src/llm --out $(TINY)/stage0 --force \
	    --image-token-id $(TINY_IMAGE_ID) --video-token-id $(TINY_VIDEO_ID)
	touch $@

$(TINY)/stage0-mcore/.done: $(TINY)/stage0/.done $(BIN)/hf2mcore
	$(BIN)/hf2mcore $(TINY)/stage0 $(TINY)/stage0-mcore --tp $(TINY_TP) --pp $(TINY_PP) --force
	touch $@

$(TINY)/stage0-hf/.done: $(TINY)/stage0-mcore/.done $(BIN)/mcore2hf
	$(BIN)/mcore2hf $(TINY)/stage0-mcore $(TINY)/stage0-hf --force
	cmp $(TINY)/stage0/model.safetensors $(TINY)/stage0-hf/model.safetensors
	touch $@

reproduce-tiny: all $(TINY)/stage0-hf/.done
	@echo "reproduce-tiny: checkpoint chain done in $(TINY) (stage0 -> mcore TP$(TINY_TP)xPP$(TINY_PP) -> HF, bit-identical)"
