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

