// cudnn_graphs: cuDNN's verdict on our attention graphs (kernels/cuda/cudnn_attn.cu) without a GPU -- the
// forward and backward at the benches' shapes (and the whole model's tower: two images of one size) and two
// small ones, built for the device that a properties file
// describes (tests/gpu/h100_deviceprop.json: an H100's) up to compiling their kernels. With CUDA's stub libcuda
// first on the library path, loading the compiled module is where it stops; that is counted as built.
//   usage: cudnn_graphs DEVICE.json     exit 0: all compiled; 1: some declined (the lines say why); 77: no cuDNN
#include <stdio.h>

#include "../../kernels/cuda/ops_cuda.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: cudnn_graphs DEVICE.json\n");
        return 2;
    }
    static char report[16384];
    int total, built = cuda_cudnn_check_graphs(argv[1], report, sizeof report, &total);
    fputs(report, stdout);
    if (built < 0) return 77;
    printf("cudnn_graphs: %d of %d graphs compiled\n", built, total);
    return built == total ? 0 : 1;
}
