// backend_info.h: which compute backends this binary was built with (printed by --version).
#pragma once

// "cpu" or "cpu, cuda (built for sm_90; 1 device visible)".
const char *backend_summary(void);
