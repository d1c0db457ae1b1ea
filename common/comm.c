// comm.c: see comm.h.
#include "comm.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { MAX_RANKS = 256, F64_SLOTS = 16, PMI_VALLEN = 1024 };

// The segment: a header, then `world` slots of max_floats floats (reduce-scatter inputs, one per
// rank; slot 0 doubles as the gather area).
typedef struct {
    atomic_int arrived;
    atomic_int generation;
    atomic_int failed;          // a rank gave up: the others stop waiting too
    int world;
    pid_t pid[MAX_RANKS];       // by index among the node's ranks
    int rank_of[MAX_RANKS];     // and their global ranks
    double f64[MAX_RANKS][F64_SLOTS];
} ShmHeader;

struct Comm {
    int rank, world;
    int local, nlocal, leader, nodes;  // this node's ranks: this one's index among them, their count, the lowest; node count
    int nccl;                   // the vectors are device buffers: collectives through NCCL (comm_use_nccl)
    double timeout;
    size_t max_floats;
    ShmHeader *hdr;
    float *slots;
    size_t map_bytes;
    void *pmi;                  // dlopen handle of libpmi2
    int (*pmi_finalize)(void);
    int (*pmi_put)(const char *, const char *);
    int (*pmi_fence)(void);
    int (*pmi_get)(const char *, int, const char *, char *, int, int *);
    char job[128];
};

int comm_rank(const Comm *c) { return c->rank; }
int comm_world(const Comm *c) { return c->world; }

void comm_shard_of(size_t n, int world, int rank, size_t *lo, size_t *hi) {
    size_t per = (n + (size_t)world - 1) / (size_t)world;
    *lo = per * (size_t)rank < n ? per * (size_t)rank : n;
    *hi = *lo + per < n ? *lo + per : n;
}

void comm_shard(const Comm *c, size_t n, size_t *lo, size_t *hi) { comm_shard_of(n, c->world, c->rank, lo, hi); }

static size_t header_bytes(void) { return (sizeof(ShmHeader) + 4095) / 4096 * 4096; }

// ---- PMI2, loaded at run time ----
typedef int (*pmi_init_t)(int *, int *, int *, int *);
typedef int (*pmi_void_t)(void);
typedef int (*pmi_jobid_t)(char *, int);
typedef int (*pmi_put_t)(const char *, const char *);
typedef int (*pmi_get_t)(const char *, int, const char *, char *, int, int *);

// Calls that wait for every rank and cannot be polled (PMI2's fence, NCCL's communicator set-up): a rank that never
// reaches one (it failed before, or died) would hold the others there until the job's time limit, srun's default
// being to let a job's other tasks run on when one fails. An alarm ends this rank after --comm-timeout instead,
// naming the wait (exit status 1).
static char g_wait_msg[256];
static size_t g_wait_len;
static void wait_expired(int sig) {
    (void)sig;
    ssize_t w = write(STDERR_FILENO, g_wait_msg, g_wait_len);
    (void)w;
    _exit(1);
}
static void wait_begin(const Comm *c, const char *what) {
    int n = snprintf(g_wait_msg, sizeof g_wait_msg, "rank %d: waited %.0f s for the other ranks at %s (--comm-timeout); stopping\n", c->rank,
                     c->timeout, what);
    g_wait_len = n < 0 ? 0 : (size_t)n < sizeof g_wait_msg ? (size_t)n : sizeof g_wait_msg - 1;
    struct sigaction sa = {0};
    sa.sa_handler = wait_expired;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(c->timeout < 1 ? 1u : c->timeout > 1e6 ? 1000000u : (unsigned)(c->timeout + 0.999));
}
static void wait_end(void) { alarm(0); }
static int fence_all(Comm *c, const char *what) {
    wait_begin(c, what);
    int rc = c->pmi_fence();
    wait_end();
    return rc;
}

// Which ranks share this node: every rank publishes its host name, then reads everyone's. Sets
// c->local (this rank's index among its node's ranks), c->nlocal, c->leader (the node's lowest rank)
// and c->nodes.
static int find_node(Comm *c, Err *e) {
    char host[256] = "", key[64], other[PMI_VALLEN];
    if (gethostname(host, sizeof host - 1)) { err_set(e, "gethostname: %s", strerror(errno)); return -1; }
    snprintf(key, sizeof key, "llava_host_%d", c->rank);
    if (c->pmi_put(key, host)) { err_set(e, "PMI2_KVS_Put of the host name failed"); return -1; }
    if (fence_all(c, "PMI2's fence (the host names)")) { err_set(e, "PMI2_KVS_Fence failed"); return -1; }
    char (*hosts)[256] = xcalloc((size_t)c->world, sizeof *hosts);
    int rc = 0;
    for (int r = 0; r < c->world && !rc; r++) {
        int len = 0;
        snprintf(key, sizeof key, "llava_host_%d", r);
        if (r == c->rank) snprintf(hosts[r], sizeof hosts[r], "%s", host);
        else if (c->pmi_get(c->job, -1 /* PMI2_ID_NULL */, key, other, sizeof other, &len) || len <= 0) {
            err_set(e, "PMI2_KVS_Get of rank %d's host name failed", r);
            rc = -1;
        } else snprintf(hosts[r], sizeof hosts[r], "%.255s", other);
    }
    c->local = c->nlocal = c->nodes = 0;
    c->leader = -1;
    for (int r = 0; r < c->world && !rc; r++) {
        int first = 1;  // the first rank of its host?
        for (int q = 0; q < r && first; q++) first = strcmp(hosts[q], hosts[r]) != 0;
        c->nodes += first;
        if (strcmp(hosts[r], host)) continue;
        if (c->leader < 0) c->leader = r;
        if (r < c->rank) c->local++;
        c->nlocal++;
    }
    free(hosts);
    return rc;
}

// Rank and world from PMI2; with world > 1, the lowest rank of each node creates the node's segment
// (slots for its nlocal ranks) and publishes its name, the node's other ranks open it after the fence;
// all map it, then the creator removes the name.
static int pmi_setup(Comm *c, size_t bytes_per_rank, Err *e) {
    c->pmi = dlopen("libpmi2.so.0", RTLD_NOW);
    if (!c->pmi) { err_set(e, "PMI_FD/PMI_PORT are set (started by srun) but libpmi2.so.0 cannot be loaded: %s", dlerror()); return -1; }
    pmi_init_t init = (pmi_init_t)dlsym(c->pmi, "PMI2_Init");
    pmi_jobid_t jobid = (pmi_jobid_t)dlsym(c->pmi, "PMI2_Job_GetId");
    pmi_put_t put = (pmi_put_t)dlsym(c->pmi, "PMI2_KVS_Put");
    pmi_void_t fence = (pmi_void_t)dlsym(c->pmi, "PMI2_KVS_Fence");
    pmi_get_t get = (pmi_get_t)dlsym(c->pmi, "PMI2_KVS_Get");
    c->pmi_finalize = (pmi_void_t)dlsym(c->pmi, "PMI2_Finalize");
    if (!init || !jobid || !put || !fence || !get || !c->pmi_finalize) { err_set(e, "libpmi2.so.0 lacks the PMI2 functions"); return -1; }
    int spawned, appnum;
    if (init(&spawned, &c->world, &c->rank, &appnum)) { err_set(e, "PMI2_Init failed"); return -1; }
    char *job = c->job, name[PMI_VALLEN], key[64];
    if (jobid(job, sizeof c->job)) { err_set(e, "PMI2_Job_GetId failed"); return -1; }
    c->pmi_put = put;
    c->pmi_fence = fence;
    c->pmi_get = get;
    c->local = c->rank;
    c->nlocal = c->world;
    c->nodes = 1;
    if (c->world <= 1) return 0;
    if (c->world > MAX_RANKS) { err_set(e, "%d ranks: at most %d data-parallel ranks", c->world, MAX_RANKS); return -1; }
    if (find_node(c, e)) return -1;
    if (c->nodes > 1 && bytes_per_rank) {
        err_set(e, "%d ranks on %d nodes: the cpu's data parallelism joins the ranks of one node through shared memory; "
                "train across nodes with --device cuda (NCCL)", c->world, c->nodes);
        return -1;
    }
    c->map_bytes = header_bytes() + (size_t)c->nlocal * bytes_per_rank;
    snprintf(key, sizeof key, "llava_shm_%d", c->leader);
    int fd = -1;
    if (c->rank == c->leader) {
        // a name no earlier or concurrent job holds: job id, pid, time
        snprintf(name, sizeof name, "/llava-%s-%d-%lld", job, (int)getpid(), (long long)time(NULL));
        for (char *p = name + 1; *p; p++) if (*p == '/' || *p == ';' || *p == '=') *p = '_';
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)c->map_bytes)) {
            err_set(e, "shared memory %s (%zu bytes): %s", name, c->map_bytes, strerror(errno));
            if (fd >= 0) close(fd);
            return -1;
        }
        if (put(key, name)) { close(fd); err_set(e, "PMI2_KVS_Put failed"); return -1; }
    }
    if (fence_all(c, "PMI2's fence (the shared memory's name)")) { err_set(e, "PMI2_KVS_Fence failed"); return -1; }
    if (c->rank != c->leader) {
        int len = 0;
        if (get(job, -1 /* PMI2_ID_NULL */, key, name, sizeof name, &len) || len <= 0) {
            err_set(e, "PMI2_KVS_Get of the shared-memory name failed");
            return -1;
        }
        fd = shm_open(name, O_RDWR, 0600);
        if (fd < 0) { err_set(e, "shared memory %s: %s", name, strerror(errno)); return -1; }
    }
    void *p = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) { err_set(e, "mmap of %s: %s", name, strerror(errno)); return -1; }
    c->hdr = p;
    c->slots = (float *)((char *)p + header_bytes());
    c->hdr->pid[c->local] = getpid();
    c->hdr->rank_of[c->local] = c->rank;
    if (fence_all(c, "PMI2's fence (the shared memory mapped)")) { err_set(e, "PMI2_KVS_Fence failed"); return -1; }
    if (c->rank == c->leader) shm_unlink(name);  // every local rank has it mapped: the name can go, the memory stays
    return 0;
}

Comm *comm_init(size_t max_floats, double timeout_s, Err *e) {
    Comm *c = xcalloc(1, sizeof *c);
    c->world = c->nlocal = c->nodes = 1;
    c->timeout = timeout_s;
    c->max_floats = max_floats;
    if (!getenv("PMI_FD") && !getenv("PMI_PORT")) return c;  // not started by a PMI2 srun: one rank
    if (pmi_setup(c, max_floats * sizeof(float), e)) { comm_free(c); return NULL; }
    return c;
}

// Whether to stop waiting: a rank flagged failure, another rank's pid is gone, or the wait that began at
// t0 has passed the timeout (then this rank flags failure for the others).
static int others_gone(Comm *c, double t0, Err *e) {
    ShmHeader *h = c->hdr;
    if (atomic_load(&h->failed)) { err_set(e, "rank %d: another rank failed; stopping", c->rank); return 1; }
    for (int r = 0; r < c->nlocal; r++) {  // this node's ranks (NCCL reports the others' deaths)
        pid_t pid = h->pid[r];
        if (r != c->local && pid > 0 && kill(pid, 0) && errno == ESRCH) {
            atomic_store(&h->failed, 1);
            err_set(e, "rank %d: rank %d (pid %d) has died; stopping", c->rank, h->rank_of[r], (int)pid);
            return 1;
        }
    }
    double waited = now_seconds() - t0;
    if (waited > c->timeout) {
        atomic_store(&h->failed, 1);
        err_set(e, "rank %d: waited %.0f s for the other ranks (--comm-timeout); stopping", c->rank, waited);
        return 1;
    }
    return 0;
}

#ifdef WITH_CUDA
#include "../kernels/cuda/ops_cuda.h"

// The watch of a NCCL wait (cuda_nccl_*): every 0.5 s, whether another rank died or the timeout passed.
typedef struct {
    Comm *c;
    double t0, last;
} NcclWatch;
static int nccl_watch(void *ctx, char *err, size_t errlen) {
    NcclWatch *w = ctx;
    if (w->c->world == 1 || now_seconds() - w->last < 0.5) return 0;
    w->last = now_seconds();
    Err e;
    if (!others_gone(w->c, w->t0, &e)) return 0;
    snprintf(err, errlen, "%s", e.msg);
    return 1;
}

int comm_use_nccl(Comm *c, Err *e) {
    char hex[PMI_VALLEN];
    int failed = c->rank == 0 && cuda_nccl_unique_id(hex, sizeof hex, e->msg, sizeof e->msg);
    if (c->world > 1) {  // the id travels through the PMI2 key-value store, as hex; or rank 0's error, after a '!'
        if (failed) snprintf(hex, sizeof hex, "!%s", e->msg);
        if (c->rank == 0 && c->pmi_put("llava_nccl", hex)) { err_set(e, "PMI2_KVS_Put of the NCCL id failed"); return -1; }
        if (fence_all(c, "PMI2's fence (the NCCL id)")) { err_set(e, "PMI2_KVS_Fence failed"); return -1; }
        int len = 0;
        if (c->rank != 0 && (c->pmi_get(c->job, -1, "llava_nccl", hex, sizeof hex, &len) || len <= 0)) {
            err_set(e, "PMI2_KVS_Get of the NCCL id failed");
            return -1;
        }
        if (c->rank != 0 && hex[0] == '!') { err_set(e, "rank 0 has no NCCL id: %s", hex + 1); return -1; }
    }
    if (failed) return -1;
    wait_begin(c, "NCCL's communicator set-up");  // (ncclCommInitRank waits for every rank, unwatched)
    int rc = cuda_nccl_init(c->rank, c->world, hex, e->msg, sizeof e->msg);
    wait_end();
    if (rc) return -1;
    c->nccl = 1;
    return 0;
}
#else
int comm_use_nccl(Comm *c, Err *e) {
    (void)c;
    err_set(e, "this build has no CUDA backend, hence no NCCL");
    return -1;
}
#endif

void comm_free(Comm *c) {
    if (!c) return;
#ifdef WITH_CUDA
    if (c->nccl) cuda_nccl_free();
#endif
    if (c->hdr) munmap(c->hdr, c->map_bytes);
    if (c->pmi) {
        if (c->pmi_finalize) c->pmi_finalize();
        dlclose(c->pmi);
    }
    free(c);
}

// Sense-reversing barrier on the segment (through NCCL once it is in use: the ranks may span nodes);
// while waiting, checks that every other rank of the node still lives.
int comm_barrier(Comm *c, Err *e) {
    if (c->nccl) {
        double zero = 0.0;
        return comm_allreduce_f64(c, &zero, 1, e);
    }
    if (c->world == 1) return 0;
    if (c->nodes > 1) die_internal("comm: a barrier over %d nodes needs NCCL", c->nodes);
    ShmHeader *h = c->hdr;
    int gen = atomic_load(&h->generation);
    if (atomic_fetch_add(&h->arrived, 1) == c->nlocal - 1) {
        atomic_store(&h->arrived, 0);
        atomic_fetch_add(&h->generation, 1);
        return 0;
    }
    double t0 = now_seconds(), last_check = t0;
    for (long spins = 0; atomic_load(&h->generation) == gen; spins++) {
        if (atomic_load(&h->failed)) { err_set(e, "rank %d: another rank failed; stopping", c->rank); return -1; }
        if (spins < 1000) continue;
        struct timespec ts = {0, 200000};  // 0.2 ms
        nanosleep(&ts, NULL);
        if (now_seconds() - last_check > 0.5) {
            last_check = now_seconds();
            if (others_gone(c, t0, e)) return -1;
        }
    }
    return 0;
}

int comm_reduce_scatter(Comm *c, float *x, size_t n, float scale, Err *e) {
#ifdef WITH_CUDA
    if (c->nccl) {
        NcclWatch w = {c, now_seconds(), now_seconds()};
        return cuda_nccl_reduce_scatter(x, (n + (size_t)c->world - 1) / (size_t)c->world, scale, nccl_watch, &w, e->msg, sizeof e->msg);
    }
#endif
    size_t lo, hi;
    comm_shard(c, n, &lo, &hi);
    if (c->world == 1) {
        if (scale != 1.0f)
            for (size_t i = 0; i < n; i++) x[i] *= scale;
        return 0;
    }
    if (n > c->max_floats) die_internal("comm: %zu floats exceed the segment (%zu)", n, c->max_floats);
    memcpy(c->slots + (size_t)c->rank * c->max_floats, x, n * sizeof(float));
    if (comm_barrier(c, e)) return -1;
#pragma omp parallel for schedule(static)
    for (size_t i = lo; i < hi; i++) {
        float s = 0.0f;
        for (int r = 0; r < c->world; r++) s += c->slots[(size_t)r * c->max_floats + i];  // rank order
        x[i] = s * scale;
    }
    return comm_barrier(c, e);  // the slots are free again
}

int comm_reduce_scatter_start(Comm *c, float *x, size_t n, size_t a, size_t b, float scale, Err *e) {
    if (a >= b) return 0;
#ifdef WITH_CUDA
    if (c->nccl)
        return cuda_nccl_reduce_part_start(x, a, b, (n + (size_t)c->world - 1) / (size_t)c->world, scale, e->msg, sizeof e->msg);
#endif
    size_t lo, hi;
    comm_shard(c, n, &lo, &hi);
    if (c->world == 1) {
        if (scale != 1.0f)
            for (size_t i = a; i < b; i++) x[i] *= scale;
        return 0;
    }
    if (n > c->max_floats) die_internal("comm: %zu floats exceed the segment (%zu)", n, c->max_floats);
    // every rank's part into its slot; once all are there, this rank sums its shard's share of the part.
    // The slots' other ranges stay untouched until comm_reduce_scatter_wait's barrier, so the next part
    // can be written while a slower rank still reads this one.
    memcpy(c->slots + (size_t)c->rank * c->max_floats + a, x + a, (b - a) * sizeof(float));
    if (comm_barrier(c, e)) return -1;
    size_t s0 = a > lo ? a : lo, s1 = b < hi ? b : hi;
#pragma omp parallel for schedule(static)
    for (size_t i = s0; i < s1; i++) {
        float s = 0.0f;
        for (int r = 0; r < c->world; r++) s += c->slots[(size_t)r * c->max_floats + i];  // rank order
        x[i] = s * scale;
    }
    return 0;
}

int comm_reduce_scatter_wait(Comm *c, Err *e) {
#ifdef WITH_CUDA
    if (c->nccl) {
        NcclWatch w = {c, now_seconds(), now_seconds()};
        return cuda_nccl_reduce_part_wait(nccl_watch, &w, e->msg, sizeof e->msg);
    }
#endif
    return comm_barrier(c, e);  // the slots are free again
}

int comm_gather_pieces(Comm *c, const CommPiece *p, int np, size_t n, Err *e) {
#ifdef WITH_CUDA
    if (c->nccl) {
        NcclWatch w = {c, now_seconds(), now_seconds()};
        void **ptr = xmalloc(((size_t)np + 1) * sizeof(void *));
        size_t *count = xmalloc(((size_t)np + 1) * sizeof(size_t));
        int *root = xmalloc(((size_t)np + 1) * sizeof(int));
        for (int i = 0; i < np; i++) ptr[i] = p[i].ptr, count[i] = p[i].count, root[i] = p[i].root;
        int rc = cuda_nccl_broadcast(ptr, count, root, np, nccl_watch, &w, e->msg, sizeof e->msg);
        free(ptr); free(count); free(root);
        return rc;
    }
#endif
    if (c->world == 1) return 0;
    if (n > c->max_floats) die_internal("comm: %zu floats exceed the segment (%zu)", n, c->max_floats);
    for (int i = 0; i < np; i++)  // slot 0 is the gather area, in the vector's layout
        if (p[i].root == c->rank) memcpy(c->slots + p[i].flat, p[i].ptr, p[i].count * sizeof(float));
    if (comm_barrier(c, e)) return -1;
    for (int i = 0; i < np; i++)
        if (p[i].root != c->rank) memcpy(p[i].ptr, c->slots + p[i].flat, p[i].count * sizeof(float));
    return comm_barrier(c, e);
}

int comm_allreduce_f64(Comm *c, double *v, int k, Err *e) {
#ifdef WITH_CUDA
    if (c->nccl) {
        NcclWatch w = {c, now_seconds(), now_seconds()};
        return cuda_nccl_allreduce_f64(v, k, nccl_watch, &w, e->msg, sizeof e->msg);
    }
#endif
    if (c->world == 1) return 0;
    memcpy(c->hdr->f64[c->rank], v, (size_t)k * sizeof(double));
    if (comm_barrier(c, e)) return -1;
    for (int j = 0; j < k; j++) {
        double s = 0.0;
        for (int r = 0; r < c->world; r++) s += c->hdr->f64[r][j];
        v[j] = s;
    }
    return comm_barrier(c, e);
}
