// tune_file.h: LLAVA_TUNE_FILE=PATH, the CUDA tuners' picks (LLAVA_FLASH=tune, LLAVA_GEMM=tune) kept from run to
// run. Without it a tuner times its candidates in every run, and timings decide, so two runs may pick
// differently and differ in the last bits; with it a tuner first looks its shape up in the file and takes a
// pick found there as is, and appends each new pick. A run whose every shape is in the file makes the picks
// of the file: it repeats bit for bit (a resume included), and the tuning cost is paid once.
//
// The file is text, one pick a line, "KEY = VALUE"; the keys name the device (and for products the cuBLASLt
// version), so one file can serve several kinds of card. The last line with a key wins: a kept pick the tuner
// refuses (cuBLASLt no longer takes the algorithm, a value that is not a pick) is tuned again and the new pick,
// appended, serves from then on. A line without " = " is reported on stderr (file and line) and skipped: the
// shape is tuned again. Lines may end in CRLF.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// the value kept for key (NULL: none, or no LLAVA_TUNE_FILE); valid until the next tune_file_put
const char *tune_file_get(const char *key);
// keep value for key (in memory, and appended to the file; a file that cannot be written is reported once
// on stderr and the picks stay in memory)
void tune_file_put(const char *key, const char *value);
// forget what was read (the next call reads LLAVA_TUNE_FILE again): for tests
void tune_file_reset(void);

#ifdef __cplusplus
}
#endif
