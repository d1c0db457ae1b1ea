// cli.c: see cli.h.
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_info.h"
#include "util.h"

static void print_wrapped(const char *text, int indent) {
    // Paragraphs are '\n'-separated; each is wrapped at 100 columns.
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t plen = nl ? (size_t)(nl - p) : strlen(p);
        if (plen == 0) { putchar('\n'); p += 1; continue; }
        int col = 0;
        const char *q = p, *end = p + plen;
        printf("%*s", indent, "");
        while (q < end) {
            const char *w = q;
            while (w < end && *w != ' ') w++;
            int wl = (int)(w - q);
            if (col > 0 && indent + col + 1 + wl > 100) { printf("\n%*s", indent, ""); col = 0; }
            else if (col > 0) { putchar(' '); col++; }
            fwrite(q, 1, (size_t)wl, stdout);
            col += wl;
            q = w;
            while (q < end && *q == ' ') q++;
        }
        putchar('\n');
        p += plen + (nl ? 1 : 0);
    }
}

// " Default: 5GB." appended to an option's help, printed from the value the parser starts from.
static void format_default(const Opt *o, char *buf, size_t len) {
    buf[0] = 0;
    if (strstr(o->help, "Default:")) return;  // the help states its own default
    switch (o->kind) {
    case OPT_STR: { char *v = *(char **)o->dst; if (v) snprintf(buf, len, " Default: %s.", v); break; }
    case OPT_INT: case OPT_SIZE: snprintf(buf, len, " Default: %lld.", (long long)*(int64_t *)o->dst); break;
    case OPT_DOUBLE: snprintf(buf, len, " Default: %g.", *(double *)o->dst); break;
    case OPT_FLAG: break;
    }
}

void cli_print_help(const Cli *cli) {
    printf("NAME\n    %s - %s\n\nSYNOPSIS\n    %s\n\nDESCRIPTION\n", cli->name, cli->summary, cli->synopsis);
    print_wrapped(cli->description, 4);
    printf("\nOPTIONS\n");
    for (int i = 0; i < cli->nopts; i++) {
        const Opt *o = &cli->opts[i];
        if (o->meta) printf("    --%s %s\n", o->name, o->meta);
        else printf("    --%s\n", o->name);
        char def[256], buf[2048];
        format_default(o, def, sizeof def);
        snprintf(buf, sizeof buf, "%s%s", o->help, def);
        print_wrapped(buf, 8);
    }
    printf("    --help\n        Print this manual and exit.\n    --version\n        Print the build (backends compiled in) and exit.\n");
    if (cli->files) { printf("\nFILES\n"); print_wrapped(cli->files, 4); }
    printf("\nEXIT STATUS\n    0 on success; 2 for bad input (a message names the file, the item and what was expected,\n"
           "    and no output is left behind); 1 for an internal failure.\n");
    if (cli->examples) { printf("\nEXAMPLES\n"); print_wrapped(cli->examples, 4); }
}

static const Opt *find_opt(const Cli *cli, const char *name, size_t len) {
    for (int i = 0; i < cli->nopts; i++)
        if (strlen(cli->opts[i].name) == len && strncmp(cli->opts[i].name, name, len) == 0) return &cli->opts[i];
    return NULL;
}

static void set_value(const Cli *cli, const Opt *o, const char *v) {
    char *end;
    errno = 0;
    switch (o->kind) {
    case OPT_STR: *(char **)o->dst = (char *)v; break;
    case OPT_INT: {
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end) die_input("--%s: expected an integer, got '%s' (see %s --help)", o->name, v, cli->name);
        *(int64_t *)o->dst = x;
        break;
    }
    case OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (errno || end == v || *end) die_input("--%s: expected a number, got '%s' (see %s --help)", o->name, v, cli->name);
        *(double *)o->dst = x;
        break;
    }
    case OPT_SIZE: {
        int64_t x = parse_size(v);
        if (x < 0) die_input("--%s: expected a size like 5GB or 500MB, got '%s'", o->name, v);
        *(int64_t *)o->dst = x;
        break;
    }
    case OPT_FLAG: *(int *)o->dst = 1; break;
    }
}

int cli_parse(const Cli *cli, int argc, char **argv, char ***pos) {
    util_set_prog(cli->name);
    char **p = xcalloc((size_t)argc + 1, sizeof(char *));
    int np = 0, only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] != '-' ) {
            if (!only_pos && a[0] == '-' && a[1]) die_input("unknown option '%s' (see %s --help)", a, cli->name);
            p[np++] = argv[i];
            continue;
        }
        if (a[2] == 0) { only_pos = 1; continue; }
        if (!strcmp(a, "--help")) { cli_print_help(cli); exit(0); }
        if (!strcmp(a, "--version")) { printf("%s (llava-ov-1.5 C) backends: %s\n", cli->name, backend_summary()); exit(0); }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const Opt *o = find_opt(cli, name, len);
        if (!o) die_input("unknown option '--%.*s' (see %s --help)", (int)len, name, cli->name);
        if (o->kind == OPT_FLAG) {
            if (eq) die_input("option '--%s' takes no value", o->name);
            set_value(cli, o, NULL);
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) die_input("option '--%s' needs a value %s", o->name, o->meta ? o->meta : "");
        set_value(cli, o, v);
    }
    if (np < cli->min_pos || np > cli->max_pos) {
        if (cli->min_pos == cli->max_pos)
            die_input("expected %d positional argument%s, got %d (usage: %s)", cli->min_pos, cli->min_pos == 1 ? "" : "s", np,
                      cli->synopsis);
        die_input("expected %d to %d positional arguments, got %d (usage: %s)", cli->min_pos, cli->max_pos, np,
                  cli->synopsis);
    }
    *pos = p;
    return np;
}

void cli_require(const Cli *cli, const char *name, const void *value) {
    if (!value) die_input("missing required option --%s (usage: %s)", name, cli->synopsis);
}
