// cli.h: one option table per program drives both parsing and the man-page style --help, so the
// two can never disagree (spec/pitfalls.md #7).
#pragma once
#include <stdint.h>

typedef enum { OPT_STR, OPT_INT, OPT_DOUBLE, OPT_FLAG, OPT_SIZE } OptKind;

typedef struct {
    const char *name;   // long name without dashes: "out"
    OptKind kind;
    void *dst;          // char ** / int64_t * / double * / int * (flag) / int64_t * (size)
    const char *meta;   // "DIR", "N"; NULL for flags
    const char *help;   // one or more sentences; the default is printed from *dst
} Opt;

typedef struct {
    const char *name;        // program name
    const char *summary;     // one line for NAME
    const char *synopsis;    // "merge --vit DIR --llm DIR --out DIR [options]"
    const char *description; // paragraphs, '\n'-separated
    const Opt *opts;
    int nopts;
    int min_pos, max_pos;    // positional argument count bounds
    const char *files;       // FILES section (optional)
    const char *examples;    // EXAMPLES section (optional)
} Cli;

// Parses argv. --help prints the manual and exits 0; --version prints the build and exits 0; an
// unknown option, a missing value or a bad number exits 2 with one line. Positional arguments are
// returned in pos (points into argv).
int cli_parse(const Cli *cli, int argc, char **argv, char ***pos);
void cli_print_help(const Cli *cli);
// Dies with exit 2 unless the string option `name` was given a value.
void cli_require(const Cli *cli, const char *name, const void *value);
