/* dask-lsio io_uring core: batch control. See _uring.h for the model and _uring_internal.h
 * for how the engine's files divide the work.
 *
 * A batch is started (its common directory opened, its slots made free), then pumped:
 * requests started, one bounded wait, every completion processed; until it is over, or
 * aborted (its ops cancelled and reaped) when it cannot go on. Ending it releases its slots
 * and directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "_uring_internal.h"

#define HOOK_BURST 8                /* reads started per wait in hooked batches ... */
#define HOOK_BURST_BYTES (1 << 20)  /* ... or fewer, when they are large */
#define UD_CANCEL (~(uint64_t)0 - 1) /* user_data of our cancel ops (liburing's timeouts use ~0) */

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Length of the longest directory prefix ("a/b/") shared by every path of the batch, such
 * that each path names something below it. */
static size_t common_dir(const lsio_req *reqs, int64_t n) {
    const char *first = reqs[0].path;
    size_t len = strlen(first);
    for (int64_t i = 0; i < n && len > 0; i++) {
        for (int k = 0; k < 2; k++) {
            const char *s = k ? reqs[i].tmp_path : reqs[i].path;
            if (!s) continue;
            size_t j = 0;
            while (j < len && s[j] == first[j]) j++;
            len = j;
        }
    }
    while (len > 0 && first[len - 1] != '/') len--;
    for (int64_t i = 0; i < n && len > 0; i++) /* "a/b/" itself: keep the full path */
        if (reqs[i].path[len] == '\0' || (reqs[i].tmp_path && reqs[i].tmp_path[len] == '\0'))
            len = 0;
    return len;
}

/* Paths are opened relative to a descriptor of their common directory, opened once per
 * batch: each open then walks only the last components (this is most of the kernel's cost
 * per small file when the cache is warm). Semantics are those of the full paths, as long
 * as that directory is not renamed while the batch runs. */
static void open_common_dir(lsio_ring *r, const lsio_req *reqs, int64_t n) {
    r->dirfd = AT_FDCWD;
    r->prefix = 0;
    size_t len = n > 1 ? common_dir(reqs, n) : 0;
    if (len <= 1 || len >= 4096) return;
    char dir[4096];
    memcpy(dir, reqs[0].path, len);
    dir[len] = '\0';
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return; /* the requests report their own errors */
    r->dirfd = fd;
    r->prefix = len;
}

void lsio__close_common_dir(lsio_ring *r) {
    if (r->dirfd != AT_FDCWD) close(r->dirfd); /* (an O_PATH descriptor: nothing to lose) */
    r->dirfd = AT_FDCWD;
    r->prefix = 0;
}

int lsio_batch_start(lsio_ring *r, lsio_req *reqs, int64_t n, int direct, int fsync) {
    if (r->broken) return r->broken;
    if (r->active) return EBUSY; /* its completions would be taken for this batch's */
    if (n < 0) return EINVAL;
    if ((uint64_t)n > SIZE_MAX / sizeof(int64_t)) return ENOMEM;
    int64_t cap = n > 256 ? n : 256;
    if (cap > r->ready_cap || r->ready_cap > 4 * cap) { /* sized here: push_ready never grows */
        free(r->ready);
        r->ready = malloc(sizeof(int64_t) * (size_t)cap);
        r->ready_cap = r->ready ? cap : 0;
        if (!r->ready) return ENOMEM;
    }
    open_common_dir(r, reqs, n);
    r->hook = NULL;
    r->burst = 0;
    r->active = 1;
    r->reqs = reqs;
    r->n = n;
    r->next = r->finished = r->nready = 0;
    r->inflight = 0;
    r->direct = direct;
    r->fsync = fsync;
    r->cancelled = 0;
    r->abort_err = r->bug = 0;
    r->outstanding = 0;
    r->progress_at = now_ms();
    r->nfree = 0;
    for (int i = (int)r->depth - 1; i >= 0; i--) r->free_slots[r->nfree++] = i;
    if (r->test_leak_slots) {
        r->nfree -= r->test_leak_slots < r->nfree ? (int)r->test_leak_slots : r->nfree;
        r->test_leak_slots = 0;
    }
    return 0;
}

int lsio_batch_start_hooked(lsio_ring *r, lsio_req *reqs, int64_t n, int direct,
                            int64_t bufsize, lsio_hook hook, void *ctx) {
    bufsize = lsio__round_up(bufsize > 0 ? bufsize : 1, ALIGN);
    if (bufsize != r->bufsize || !r->spare) { /* keep the buffers while the size suits */
        lsio__free_buffers(r);
        r->spare = malloc(sizeof(char *) * r->depth);
        if (!r->spare) return ENOMEM;
        r->bufsize = bufsize;
    }
    int e = lsio_batch_start(r, reqs, n, direct, 0);
    if (e) return e;
    r->hook = hook;
    r->hook_ctx = ctx;
    /* Reads of cached data complete inside the submit call, so starting all the slots at
     * once would read hundreds of chunks before the hook sees the first, long after it left
     * the CPU cache. Starting a few per wait keeps the hook's data in cache, while reads
     * that wait for the disk still pile up to the full depth over successive waits. */
    r->burst = HOOK_BURST;
    r->burst_bytes = HOOK_BURST_BYTES;
    return 0;
}

static int batch_busy(lsio_ring *r) {
    return r->active && (r->inflight > 0 || (!r->cancelled && r->next < r->n));
}

/* Wait for a completion until the next tick, or the stall limit when it is sooner: one
 * io_uring_enter with a timeout (IORING_ENTER_EXT_ARG, Linux 5.11), after the submit. Not
 * io_uring_submit_and_wait_timeout: how often it enters and what it returns after a timeout
 * (the count submitted, or -ETIME) differ between liburing versions (2.3 here, 2.6 bundled).
 * Returns 0, -ETIME or a negative errno. */
static int wait_tick(lsio_ring *r) {
    int64_t ms = r->stall_ms - (now_ms() - r->progress_at);
    if (ms > r->tick_ms) ms = r->tick_ms;
    if (ms < 1) ms = 1;
    struct __kernel_timespec ts = {.tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000};
    if (!(r->ring.features & IORING_FEAT_EXT_ARG)) {
        /* older kernels: liburing queues a timeout op (its CQE is skipped by reap) */
        struct io_uring_cqe *cqe;
        return io_uring_wait_cqe_timeout(&r->ring, &cqe, &ts);
    }
    struct io_uring_getevents_arg arg = {.ts = (uint64_t)(uintptr_t)&ts};
    return io_uring_enter2(r->ring.ring_fd, 0, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                           (sigset_t *)&arg, sizeof(arg));
}

/* Process every completion available; returns how many were the batch's. */
static unsigned reap(lsio_ring *r) {
    struct io_uring_cqe *cqes[256];
    unsigned got, mine = 0;
    while ((got = io_uring_peek_batch_cqe(&r->ring, cqes, 256)) > 0) {
        for (unsigned i = 0; i < got; i++) {
            uint64_t ud = cqes[i]->user_data;
            if (ud >= (uint64_t)r->n) continue; /* our cancel ops, liburing's timeouts */
            lsio__on_cqe(r, (int64_t)ud, cqes[i]->res);
            mine++;
        }
        io_uring_cq_advance(&r->ring, got);
        lsio__start_requests(r);
    }
    return mine;
}

static int transient(int ret) { return ret == -EINTR || ret == -EAGAIN || ret == -EBUSY; }

/* Submit what is prepared, wait at most a tick for a completion (GIL released by cffi), and
 * process every completion available. Returns 0, or a negative errno that ends the batch:
 * from the ring, -ETIMEDOUT when nothing completed for the stall limit, -ENOTRECOVERABLE
 * when the bookkeeping went wrong (a wait with nothing in flight would never end). */
static int pump(lsio_ring *r) {
    int64_t before;
    do { /* until an op is in flight: requests may fail before their first op */
        before = r->next;
        lsio__start_requests(r);
    } while (r->inflight == 0 && r->next > before);
    if (!batch_busy(r)) return 0;
    if (r->inflight == 0) return -ENOTRECOVERABLE;
    int ret = io_uring_submit(&r->ring);
    if (ret >= 0 || transient(ret)) { /* (unsubmitted SQEs go with the next submit) */
        if (r->test_enter_err) {
            ret = -r->test_enter_err;
            r->test_enter_err = 0;
        } else if (io_uring_cq_ready(&r->ring) == 0) {
            ret = wait_tick(r);
        }
    }
    if (ret < 0 && ret != -ETIME && !transient(ret)) return ret;
    unsigned got = reap(r);
    if (r->bug) return -ENOTRECOVERABLE;
    int64_t now = now_ms();
    if (got) r->progress_at = now;
    else if (now - r->progress_at >= r->stall_ms) return -ETIMEDOUT;
    return 0;
}

/* Release the files left in slots by this batch, in one call per 256 slots. Should the kernel
 * refuse, they would stay open until their slots are reused: the ring is marked broken
 * instead, so that Python closes it, which releases them all. */
static void clear_slots(lsio_ring *r) {
    int fds[256];
    for (unsigned i = 0; i < 256; i++) fds[i] = -1;
    int tries = 0;
    for (unsigned off = 0; off < r->depth;) {
        unsigned cnt = r->depth - off < 256 ? r->depth - off : 256;
        int ret = r->test_slots_err ? -r->test_slots_err
                                    : io_uring_register_files_update(&r->ring, off, fds, cnt);
        if (ret > 0) { off += (unsigned)ret; continue; } /* (it may update fewer) */
        if ((ret == -EINTR || ret == -EAGAIN) && ++tries < 3) continue;
        if (!r->broken) r->broken = ret < 0 ? -ret : EIO;
        return;
    }
}

/* End the batch in whatever state it is: close the plain descriptors of its unfinished
 * requests, release the slots and the directory. Ops still in flight (a batch aborted
 * without getting them back) keep their buffers, which are then never freed here, and make
 * the ring unusable: their completions would be taken for the next batch's. */
void lsio__end_batch(lsio_ring *r) {
    if (!r->active) return;
    r->active = 0;
    if (r->inflight > 0) {
        r->lost = (int64_t)r->inflight - io_uring_sq_ready(&r->ring); /* (never submitted) */
        if (!r->broken) r->broken = r->abort_err ? r->abort_err : ENOTRECOVERABLE;
    }
    for (int64_t i = 0; i < r->n && (r->abort_err || r->inflight); i++) {
        lsio_req *q = &r->reqs[i];
        if (q->finished) continue; /* (a close in flight closes its descriptor itself) */
        if (!q->fixed && q->fd >= 0) lsio__close_plain(r, q);
        q->err = i < r->next && r->abort_err ? r->abort_err : ECANCELED;
        q->err_stage = q->stage;
        q->finished = 1;
        if (r->inflight) q->grown = NULL; /* the kernel may still write into it */
    }
    clear_slots(r);
    lsio__close_common_dir(r);
}

/* Ask the kernel to cancel the op of every unfinished request (matched by user_data; the
 * removals of temporaries are left to finish): an op waiting for an event, such as a read
 * of a FIFO that nobody writes, or blocked in io-wq, is interrupted and completes. */
static void cancel_ops(lsio_ring *r) {
    for (int64_t i = 0; i < r->next && !r->test_no_cancel; i++) {
        lsio_req *q = &r->reqs[i];
        if (q->finished || q->stage == LSIO_ST_UNLINK_TMP) continue;
        struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
        if (!sqe) {
            io_uring_submit(&r->ring);
            if (!(sqe = io_uring_get_sqe(&r->ring))) return; /* the bounded drain still ends */
        }
        io_uring_prep_cancel64(sqe, (uint64_t)i, 0);
        io_uring_sqe_set_data64(sqe, UD_CANCEL);
    }
}

/* End a batch that cannot go on (err < 0, from pump): start no more requests, cancel the
 * ops in flight and reap them for at most one more stall period, so that the kernel is done
 * with the caller's buffers and no descriptor leaks; the requests they belong to fail with
 * -err. A ring error or a bookkeeping error also marks the ring broken: it is not trusted
 * with another batch. Returns err. */
static int64_t abort_batch(lsio_ring *r, int err) {
    if (err != -ETIMEDOUT && !r->broken) r->broken = -err;
    r->abort_err = -err;
    r->cancelled = 1;
    r->outstanding = 0;
    for (int64_t i = 0; i < r->next; i++)
        if (!r->reqs[i].finished) r->outstanding++;
    cancel_ops(r);
    r->progress_at = now_ms();
    while (r->inflight > 0 && pump(r) == 0) {}
    lsio__end_batch(r);
    return err;
}

int64_t lsio_batch_run(lsio_ring *r) {
    while (batch_busy(r)) {
        int ret = pump(r);
        if (ret < 0) return abort_batch(r, ret);
    }
    lsio__end_batch(r);
    return r->finished;
}

/* Hand out up to max_out finished request indices, waiting only when none is ready.
 * Returns how many were written; 0 means the batch is over. */
int64_t lsio_batch_step(lsio_ring *r, int64_t *out, int64_t max_out) {
    while (r->nready == 0 && batch_busy(r)) {
        int ret = pump(r);
        if (ret < 0) return abort_batch(r, ret);
    }
    int64_t k = r->nready < max_out ? r->nready : max_out;
    memcpy(out, r->ready + (r->nready - k), sizeof(int64_t) * (size_t)k);
    r->nready -= k;
    if (!batch_busy(r) && r->nready == 0) lsio__end_batch(r);
    return k;
}

/* Stop starting requests, cancel the ops in flight and wait for them, whose buffers the
 * kernel still uses (a read that waits for data nobody sends would otherwise hold the caller
 * until the stall limit). A batch that already ended (over, or aborted by the error a call
 * returned) is left alone. */
int lsio_batch_cancel(lsio_ring *r) {
    if (!r->active) return 0;
    r->cancelled = 1;
    r->abort_err = ECANCELED;
    cancel_ops(r);
    while (r->inflight > 0) {
        int ret = pump(r);
        if (ret < 0) return (int)abort_batch(r, ret);
    }
    lsio__end_batch(r);
    r->nready = 0;
    return 0;
}
