// backend_info.c: see backend_info.h.
#include "backend_info.h"

#include <stdio.h>

#ifdef WITH_CUDA
#include "../kernels/cuda/device.h"
#endif

const char *backend_summary(void) {
#ifdef WITH_CUDA
    static char buf[256];
    char dev[160];
    cuda_describe_devices(dev, sizeof dev);
    snprintf(buf, sizeof buf, "cpu, cuda (built for %s; %s)", CUDA_ARCH_NAME, dev);
    return buf;
#else
    return "cpu (built without nvcc: no cuda backend)";
#endif
}

#include <string.h>

#include "../kernels/backend.h"
#ifdef WITH_CUDA
#include "../kernels/cuda/ops_cuda.h"
#else
const Backend *backend_cuda(void) { return NULL; }
#endif

const Backend *backend_get(const char *name, char *err, size_t errlen) {
    if (!strcmp(name, "cpu")) return &backend_cpu;
    if (strcmp(name, "cuda")) { snprintf(err, errlen, "unknown device '%s' (cpu or cuda)", name); return NULL; }
#ifdef WITH_CUDA
    static int ready;
    if (!ready && cuda_init(0, err, errlen)) return NULL;
    ready = 1;
    return backend_cuda();
#else
    snprintf(err, errlen, "this build has no CUDA backend (nvcc was not found at build time)");
    return NULL;
#endif
}
