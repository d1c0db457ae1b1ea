// device.cu: CUDA device discovery. Properties are read with cudaDeviceGetAttribute, which CUDA 13
// keeps, rather than cudaDeviceProp fields it removed (spec/pitfalls.md #4).
#include "device.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" void cuda_describe_devices(char *buf, size_t len) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        snprintf(buf, len, "no device visible (%s)", cudaGetErrorString(err));
        cudaGetLastError();
        return;
    }
    int major = 0, minor = 0;
    size_t free_b = 0, total_b = 0;
    char name[256] = "?";
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) snprintf(name, sizeof name, "%s", prop.name);
    cudaSetDevice(0);
    cudaMemGetInfo(&free_b, &total_b);
    snprintf(buf, len, "%d device%s visible: %s (sm_%d%d, %.1f GiB)", n, n == 1 ? "" : "s", name, major, minor,
             (double)total_b / (1024.0 * 1024.0 * 1024.0));
}
