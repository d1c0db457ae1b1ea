// presets.h: finding the files under data-specs/ (model presets, stage presets, task definitions).
#pragma once

// Path of data-specs/<kind>/<name>.json. A name containing '/' or ending in ".json" is taken as a
// path as it is; otherwise $LLAVA_DATA_SPECS, then <dir of the executable>/../data-specs, are
// searched. Returns NULL when none exists. Caller frees.
char *data_spec_path(const char *kind, const char *name);
