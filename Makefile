# LLaVA-OneVision-1.5 in C and CUDA: build, dependencies, tests and pipelines.
#
#   make                 build every program into bin/ (CUDA backend too when nvcc is found)
#   make CUDA=0          CPU only;  make CUDA_ARCH=sm_80  another GPU generation
#   make deps            install the Debian packages the project needs (root; idempotent)
#   make test            C unit tests + Bats tests; last line "N passed, N failed"
#   make asan            the same tests built with AddressSanitizer and UBSan
#   make portable        the programs with the Debian libraries linked statically, into bin-portable/
#   make reproduce-tiny  the tiny end-to-end pipeline on this CPU (pipelines/reproduce-tiny.mk)

PROGRAMS := mkckpt merge hf2mcore mcore2hf tokenize imgprep shards synth pack forward align midtrain instruct

BUILD ?= build
BIN   ?= bin
CC    ?= gcc
OPT   ?= -O2
SAN   ?=
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -MMD -MP
CFLAGS  = $(CFLAGS_BASE) $(OPT) $(SAN) $(EXTRA_CFLAGS) $(shell pkg-config --cflags openblas 2>/dev/null)
# OpenBLAS built for OpenMP (Debian's libopenblas0-openmp): it shares the OpenMP thread pool of our
# kernels, so sgemm inside an OpenMP task runs single-threaded instead of starting its own threads, and
# OpenBLAS and OpenMP threads never spin against each other. The pthread build is the fallback.
OPENBLAS_OMP := $(firstword $(wildcard /usr/lib/*/openblas-openmp))
ifneq ($(OPENBLAS_OMP),)
BLAS_LIBS := -L$(OPENBLAS_OMP) -Wl,-rpath,$(OPENBLAS_OMP) -lopenblas
else
BLAS_LIBS := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
endif
ifeq ($(PORTABLE),1)
# make portable: the Debian libraries linked statically (the GPU machines run Ubuntu without libtar,
# utf8proc, libwebp, libpmi2 or Debian's libjpeg soname); glibc, libgomp and the CUDA libraries stay dynamic.
# libpmi2 is dlopen'ed at run time (common/comm.c), so a machine without Slurm runs one rank.
LDLIBS  = -Wl,-Bstatic -ljansson -ltar -lpcre2-8 -lutf8proc -lpng16 -ljpeg -lwebp -lz \
          -L$(or $(OPENBLAS_OMP),/usr/lib/x86_64-linux-gnu) -lopenblas -lgfortran -lquadmath -Wl,-Bdynamic -ldl -lrt -lm -lpthread
else
LDLIBS  = $(BLAS_LIBS) -ljansson -ltar -lz -lpcre2-8 -lutf8proc -lpng -ljpeg -lwebp -ldl -lrt -lm
endif
LDFLAGS = -fopenmp $(SAN)

# ---- CUDA: built when nvcc is found, the architecture is a variable with a default (pitfalls #3) ----
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(NVCC),)
CUDA ?= 0
else
CUDA ?= 1
endif
CUDA_ARCH ?= sm_90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

COMMON_SRC := $(wildcard common/*.c) $(wildcard kernels/cpu/*.c)
COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/%.o)
CUDA_SRC   := $(wildcard kernels/cuda/*.cu)

ifeq ($(CUDA),1)
$(info cuda: building the CUDA backend for $(CUDA_ARCH) with $(NVCC))
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CFLAGS  += -DWITH_CUDA -DCUDA_ARCH_NAME='"$(CUDA_ARCH)"'
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -Wl,--as-needed -lcublasLt -Wl,--no-as-needed -lcudart_static -ldl -lrt -lpthread -lstdc++
NVCCFLAGS ?= -O2 -std=c++17 -Xcompiler -Wall,-Wextra -MMD -MP
NVCC_GENCODE ?= -gencode arch=compute_$(subst sm_,,$(CUDA_ARCH)),code=[$(CUDA_ARCH),compute_$(subst sm_,,$(CUDA_ARCH))]
# flash attention version 4 uses Hopper's wgmma, which exists only in the arch-specific target sm_90a:
# that one file is built for sm_90a alone (and only used on compute capability 9.0 devices)
ifneq ($(filter sm_90 sm_90a,$(CUDA_ARCH)),)
$(BUILD)/kernels/cuda/flash_wgmma.o: NVCC_GENCODE = -gencode arch=compute_90a,code=sm_90a -DWITH_WGMMA
endif
else
$(info cuda: nvcc not found or CUDA=0: building the CPU backend only)
CUDA_OBJ :=
endif

LIB := $(BUILD)/libllava.a

.SECONDARY:
.PHONY: all clean deps test asan unit-tests bench-tools gpu-tools reproduce-tiny portable
all: $(PROGRAMS:%=$(BIN)/%)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/kernels/cuda/%.o: kernels/cuda/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(NVCC_GENCODE) -c $< -o $@

$(LIB): $(COMMON_OBJ) $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN)/%: $(BUILD)/cmd/%.o $(LIB)
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) $< $(LIB) $(LDLIBS) -o $@

# ---- tests ----
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(LIB) $(LDLIBS) -o $@

unit-tests: $(UNIT_BIN)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) $(LDLIBS) $(LDFLAGS) -o $@

bench-tools: $(BUILD)/bench/loader_bench $(BUILD)/bench/train_step

# ---- GPU checks (tests/gpu/): built only with the CUDA backend; cuBLASLt linked dynamically ----
ifeq ($(CUDA),1)
GPU_TOOLS := $(BUILD)/gpu/ops_check $(BUILD)/gpu/cudnn_graphs
$(BUILD)/gpu/%: tests/gpu/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) $(LDLIBS) $(LDFLAGS) -o $@
endif
gpu-tools: $(GPU_TOOLS)

test: all unit-tests gpu-tools
	@BIN=$(abspath $(BIN)) UNIT_DIR=$(abspath $(BUILD)/tests) GPU_TOOLS_DIR=$(abspath $(BUILD)/gpu) tests/run.sh

asan:
	LLAVA_POISON=1 $(MAKE) BUILD=build-asan BIN=bin-asan CUDA=0 OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test

# Programs for the GPU machines (tests/gpu/run.sh carries gpu-bin/).
GPU_PROGRAMS := forward mkckpt merge synth pack hf2mcore midtrain
PMI2_LIB := /usr/lib/x86_64-linux-gnu/libpmi2.so.0
portable:
	$(MAKE) BUILD=build-portable BIN=bin-portable PORTABLE=1 all gpu-tools bench-tools
	@for p in $(PROGRAMS); do ldd bin-portable/$$p | grep -q -E 'jansson|libtar|utf8proc|webp|openblas|pmi2' && \
	    { echo "portable: bin-portable/$$p still needs a Debian library"; exit 1; } || true; done
	@echo "portable: bin-portable/ needs only: $$(ldd bin-portable/forward | awk '{print $$1}' | tr '\n' ' ')"
	@# what tests/gpu/run.sh uses, stripped, small enough to travel with the working tree (64 MiB)
	@rm -rf gpu-bin && mkdir -p gpu-bin && for p in $(GPU_PROGRAMS); do strip -o gpu-bin/$$p bin-portable/$$p; done
	@if [ -x build-portable/gpu/ops_check ]; then strip -o gpu-bin/ops_check build-portable/gpu/ops_check; fi
	@strip -o gpu-bin/train_step build-portable/bench/train_step
	@# Slurm's PMI2 client (libc only): tests/gpu/pmi2_launch.py runs several ranks through it there, where no Slurm is
	@if [ -e $(PMI2_LIB) ]; then cp $(PMI2_LIB) gpu-bin/libpmi2.so.0; fi
	@xz -T2 -6 gpu-bin/*
	@echo "portable: gpu-bin/ ($(GPU_PROGRAMS), ops_check, train_step, libpmi2.so.0) for tests/gpu/run.sh: $$(du -sh gpu-bin | cut -f1)"

# ---- dependencies (Debian 12) ----
DEB_PACKAGES := build-essential pkg-config libjansson-dev libtar-dev zlib1g-dev libjpeg62-turbo-dev libpng-dev \
    libwebp-dev libutf8proc-dev libpcre2-dev libopenblas-dev libopenblas-openmp-dev libpmi2-0-dev munge slurm-wlm bats jq \
    python3 python3-numpy python3-torch python3-pil python3-skimage

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -z "$$missing" ]; then echo "deps: all $(words $(DEB_PACKAGES)) packages installed"; \
	else echo "deps: installing$$(echo $$missing | sed 's/^/ /')"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

include pipelines/reproduce-tiny.mk
reproduce-tiny: all

clean:
	rm -rf build build-asan build-portable bin bin-asan bin-portable gpu-bin

-include $(COMMON_OBJ:.o=.d) $(CUDA_OBJ:.o=.d) $(PROGRAMS:%=$(BUILD)/cmd/%.d) $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%.d)
