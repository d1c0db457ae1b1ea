// device.h: CUDA device discovery, callable from C.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Number of visible CUDA devices; 0 when there is no driver or no device.
int cuda_device_count(void);
// "1 device visible: NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" or "no device visible (reason)".
void cuda_describe_devices(char *buf, size_t len);

#ifdef __cplusplus
}
#endif
