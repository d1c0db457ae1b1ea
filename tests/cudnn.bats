#!/usr/bin/env bats
# cuDNN's fused attention (kernels/cuda/cudnn_attn.cu, LLAVA_FLASH=cudnn) without a GPU: cuDNN itself judges the
# graphs we build. tests/gpu/cudnn_graphs builds the forward and the backward at the benches' shapes and two
# small ones for an H100 described by tests/gpu/h100_deviceprop.json, with CUDA's stub libcuda first on the
# library path, so that each stops where its compiled kernels would be loaded onto the device. Their numerics
# are ops_check's on a GPU (tests/gpu/run.sh). Skipped without a CUDA build or without cuDNN 9.8+ and the stub.
load helpers

@test "cuDNN takes our attention graphs (forward and backward; the slice's causal GQA, the tower's, two images of one size, two small shapes, packed sequences of different lengths) for an H100 and compiles them, without a GPU" {
    tool=${GPU_TOOLS_DIR:-$BATS_TEST_DIRNAME/../build/gpu}/cudnn_graphs
    [ -x "$tool" ] || skip "no CUDA build (no $tool)"
    nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
    cuda=${nvcc%/bin/nvcc}
    lib=$(ls "$cuda"/lib/libcudnn.so.9 "$cuda"/lib64/libcudnn.so.9 /usr/lib/x86_64-linux-gnu/libcudnn.so.9 2>/dev/null | head -1)
    stub=$(ls "$cuda"/lib64/stubs/libcuda.so "$cuda"/targets/x86_64-linux/lib/stubs/libcuda.so 2>/dev/null | head -1)
    [ -n "$lib" ] && [ -n "$stub" ] || skip "no libcudnn.so.9 or no stub libcuda under $cuda"
    mkdir -p "$BATS_TEST_TMPDIR/stub"
    ln -sf "$stub" "$BATS_TEST_TMPDIR/stub/libcuda.so.1"
    LD_LIBRARY_PATH="$BATS_TEST_TMPDIR/stub:$(dirname "$lib"):$cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        run "$tool" "$BATS_TEST_DIRNAME/gpu/h100_deviceprop.json"
    echo "$output"
    [ "$status" -ne 77 ] || skip "cuDNN there cannot take device properties: $output"
    [ "$status" -eq 0 ]
    [ "$(grep -c ' compiled by engine config ' <<<"$output")" -eq 18 ]
}
