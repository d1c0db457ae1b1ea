// backend_select.c: --device NAME -> the Backend (kernels/backend.h). Its own file so that only the
// programs that run the model link the CUDA runtime and cuBLASLt.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/backend.h"
#ifdef WITH_CUDA
#include "../kernels/cuda/device.h"
#include "../kernels/cuda/ops_cuda.h"
#else
const Backend *backend_cuda(void) { return NULL; }
#endif

void backend_profile_reset(void) {
#ifdef WITH_CUDA
    cuda_profile_reset();
#endif
}

const Backend *backend_get(const char *name, char *err, size_t errlen) {
    if (!strcmp(name, "cpu")) return &backend_cpu;
    if (!strcmp(name, "cpu-bf16")) return &backend_cpu_bf16;
    if (strcmp(name, "cuda")) { snprintf(err, errlen, "unknown device '%s' (cpu, cpu-bf16 or cuda)", name); return NULL; }
#ifdef WITH_CUDA
    // a rank of `srun -n N` on a node with several visible GPUs takes the one of its local rank; with one
    // visible (Slurm's --gpus-per-task binding sets CUDA_VISIBLE_DEVICES) it is device 0
    static int ready;
    const char *local = getenv("SLURM_LOCALID");
    int ndev = ready ? 0 : cuda_device_count(), dev = local && ndev > 1 ? atoi(local) % ndev : 0;
    if (!ready && cuda_init(dev, err, errlen)) return NULL;
    ready = 1;
    return backend_cuda();
#else
    snprintf(err, errlen, "this build has no CUDA backend (nvcc was not found at build time)");
    return NULL;
#endif
}
