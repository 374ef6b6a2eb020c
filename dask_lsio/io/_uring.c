/* dask-lsio io_uring core. See _uring.h for the model.
 *
 * This file: the ring's lifecycle, filling and collecting requests, aligned allocations and
 * the buffers lent to hooked reads; the per-request state machine is in _uring_ops.c, batch
 * control in _uring_batch.c (_uring_internal.h: what they share).
 *
 * Lessons from liburing's examples/io_uring-cp.c and from measurements on our VM:
 * - opens go through the ring into fixed-file slots (no descriptor per file, so batches larger
 *   than RLIMIT_NOFILE work); installing into a used slot closes the previous file, so there is
 *   no close op per file, and all slots are cleared in one call when the batch ends;
 * - no linked chains: a short read breaks IOSQE_IO_LINK, so each request submits its next op
 *   from its completion;
 * - short reads of an explicit range are resubmitted for the rest; a read to EOF that comes back
 *   short has reached EOF (the kernel retries short buffered reads of regular files itself);
 * - the caller waits inside io_uring_enter with the GIL released, never spinning, and never
 *   longer than a tick: a batch without completions for the stall limit is aborted (pump).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "_uring_internal.h"

lsio_ring *lsio_ring_open(unsigned depth, unsigned want_flags, unsigned iowq_bounded, int *err) {
    lsio_ring *r = calloc(1, sizeof(*r));
    if (!r) { *err = ENOMEM; return NULL; }
    r->dirfd = AT_FDCWD;
    r->tick_ms = 1000;
    r->stall_ms = 600000;
    r->test_sqe_left = -1;
    struct io_uring_params p;
    int ret = -EINVAL;
    if (want_flags & 1) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
        ret = io_uring_queue_init_params(depth, &r->ring, &p);
    }
    if (ret < 0) { /* older kernels: no SINGLE_ISSUER / DEFER_TASKRUN */
        memset(&p, 0, sizeof(p));
        ret = io_uring_queue_init_params(depth, &r->ring, &p);
    }
    if (ret < 0) { free(r); *err = -ret; return NULL; }
    r->flags = p.flags;
    r->depth = depth;
    ret = io_uring_register_files_sparse(&r->ring, depth);
    if (ret < 0) { io_uring_queue_exit(&r->ring); free(r); *err = -ret; return NULL; }
    if (iowq_bounded) { /* the default (8) caps cold-cache opens at about half speed */
        unsigned values[2] = {iowq_bounded, 0};
        /* kernels before 5.15 refuse it: the ring works with the default limit (slower cold
         * opens, nothing worse), so that is recorded for lsio_ring_info, not an error */
        ret = io_uring_register_iowq_max_workers(&r->ring, values);
        r->iowq_err = ret < 0 ? -ret : 0;
    }
    r->free_slots = malloc(sizeof(int) * depth);
    r->stx = calloc(depth, sizeof(struct statx));
    if (!r->free_slots || !r->stx) {
        lsio_ring_close(r);
        *err = ENOMEM;
        return NULL;
    }
    *err = 0;
    return r;
}

unsigned lsio_ring_flags(lsio_ring *r) { return r->flags; }

void lsio_ring_set_timeouts(lsio_ring *r, int64_t stall_ms, int64_t tick_ms) {
    r->stall_ms = stall_ms > 0 ? stall_ms : 1;
    r->tick_ms = tick_ms > 0 ? tick_ms : 1;
}

int64_t lsio_ring_info(lsio_ring *r, int what) {
    switch (what) {
    case LSIO_INFO_BROKEN: return r->broken;
    case LSIO_INFO_LOST: return r->lost;
    case LSIO_INFO_OUTSTANDING: return r->outstanding;
    case LSIO_INFO_IOWQ_ERR: return r->iowq_err;
    case LSIO_INFO_CLOSE_ERRORS: return r->close_errors;
    default: return -1;
    }
}

void lsio_ring_test(lsio_ring *r, int what, int64_t value) {
    switch (what) {
    case LSIO_TEST_SQE_FAIL: r->test_sqe_left = value; break;
    case LSIO_TEST_ENTER_FAIL: r->test_enter_err = (int)value; break;
    case LSIO_TEST_LEAK_SLOTS: r->test_leak_slots = value; break;
    case LSIO_TEST_SLOTS_FAIL: r->test_slots_err = (int)value; break;
    case LSIO_TEST_NO_CANCEL: r->test_no_cancel = (int)value; break;
    default: break;
    }
}

void lsio_ring_close(lsio_ring *r) {
    if (!r) return;
    lsio__end_batch(r); /* a batch left running: its plain descriptors and directory */
    lsio__close_common_dir(r);
    lsio__free_buffers(r);
    io_uring_queue_exit(&r->ring); /* also releases every registered file */
    free(r->free_slots);
    free(r->stx);
    free(r->ready);
    free(r);
}

void *lsio_alloc(int64_t size) {
    void *p = NULL;
    if (posix_memalign(&p, ALIGN, (size_t)(size > 0 ? size : ALIGN)) != 0) return NULL;
    return p;
}

void lsio_free(void *p) { free(p); }

/* ---- filling requests from flat arrays ---- */

static void clear_req(lsio_req *q) { memset(q, 0, sizeof(*q)); q->fd = -1; q->slot = -1; }

void lsio_fill_reads(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at,
                     const int64_t *offsets, const int64_t *lengths, const uint64_t *buf_addr,
                     const int64_t *caps, int grow) {
    for (int64_t i = 0; i < n; i++) {
        lsio_req *q = &reqs[i];
        clear_req(q);
        q->kind = LSIO_READ;
        q->path = paths + path_at[i];
        q->offset = offsets[i];
        q->length = lengths[i];
        q->buf = (char *)(uintptr_t)buf_addr[i];
        q->cap = caps[i];
        q->grow = grow;
    }
}

void lsio_fill_writes(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at,
                      const char *tmp_paths, const int64_t *tmp_at, const uint64_t *buf_addr,
                      const int64_t *lengths) {
    for (int64_t i = 0; i < n; i++) {
        lsio_req *q = &reqs[i];
        clear_req(q);
        q->kind = LSIO_WRITE;
        q->path = paths + path_at[i];
        q->tmp_path = tmp_paths + tmp_at[i];
        q->buf = (char *)(uintptr_t)buf_addr[i];
        q->length = lengths[i];
    }
}

void lsio_fill_deletes(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at) {
    for (int64_t i = 0; i < n; i++) {
        clear_req(&reqs[i]);
        reqs[i].kind = LSIO_DELETE;
        reqs[i].path = paths + path_at[i];
    }
}

void lsio_collect(lsio_req *reqs, const int64_t *idx, int64_t k, int32_t *err,
                  int32_t *err_stage, int64_t *start, int64_t *nbytes, uint64_t *grown) {
    for (int64_t j = 0; j < k; j++) {
        int64_t i = idx[j];
        err[i] = reqs[i].err;
        err_stage[i] = reqs[i].err_stage;
        start[i] = reqs[i].start;
        nbytes[i] = reqs[i].nbytes;
        grown[i] = (uint64_t)(uintptr_t)reqs[i].grown;
        reqs[i].grown = NULL; /* the caller owns it now */
    }
}

/* ---- buffers lent to the reads of hooked batches ---- */

void lsio__free_buffers(lsio_ring *r) {
    for (int i = 0; i < r->nspare; i++) lsio_free(r->spare[i]);
    free(r->spare);
    r->spare = NULL;
    r->nspare = 0;
}

/* Lend a buffer to a read; 0 or ENOMEM. Reads in flight never exceed the ring's slots, so at
 * most depth buffers are ever allocated. */
int lsio__lend(lsio_ring *r, lsio_req *q) {
    if (r->nspare == 0) {
        char *p = lsio_alloc(r->bufsize);
        if (!p) return ENOMEM;
        r->spare[r->nspare++] = p;
    }
    q->buf = r->spare[--r->nspare];
    q->cap = r->bufsize;
    q->lent = 1;
    return 0;
}

/* Hand a finished read's data to the hook, then take its buffers back. */
void lsio__run_hook(lsio_ring *r, int64_t idx, lsio_req *q) {
    if (!q->err) {
        int e = r->hook(r->hook_ctx, idx, q->buf + q->start, q->nbytes);
        if (e) { q->err = e; q->err_stage = LSIO_ST_HOOK; }
    }
    if (q->grown) { lsio_free(q->grown); q->grown = NULL; } /* data grew past the lent one */
    if (q->lent) r->spare[r->nspare++] = q->buf;
    q->buf = NULL;
    q->lent = 0;
}
