/* dask-lsio io_uring core: what the engine's C files share, beyond _uring.h.
 *
 * Private: included by _uring.c, _uring_ops.c and _uring_batch.c only, never fed to cffi's
 * cdef (which reads _uring.h alone), so none of this is bound to Python. Those files define
 * _GNU_SOURCE before including it (struct statx, O_DIRECT, O_PATH).
 *
 * The engine is split by concern:
 * - _uring.c: the ring's lifecycle (open, close, flags, info, timeouts, test hooks), filling
 *   and collecting requests, aligned allocations, and the buffers lent to hooked reads;
 * - _uring_ops.c: the per-request state machine (SQEs, the ops each stage issues, the
 *   completion handlers, finishing and failing a request);
 * - _uring_batch.c: batch control (the common directory, start, the bounded waits, reaping
 *   completions, run/step/cancel, aborting and ending a batch).
 * Functions one file calls in another are named lsio__* (no clash with liburing's or anything
 * else's names) and hidden in the extension (LSIO_INTERNAL).
 */
#ifndef LSIO_URING_INTERNAL_H
#define LSIO_URING_INTERNAL_H

#include <liburing.h>
#include <stddef.h>
#include <stdint.h>

#include "_uring.h"

#define LSIO_INTERNAL __attribute__((visibility("hidden")))

#define ALIGN 4096 /* O_DIRECT's alignment, and lsio_alloc's */

struct lsio_ring {
    struct io_uring ring;
    unsigned depth;
    unsigned flags;
    int *free_slots;
    int nfree;
    struct statx *stx; /* one per slot, for suffix reads */
    /* the batch in flight */
    lsio_req *reqs;
    int64_t n, next, finished;
    int64_t *ready; /* finished indices not yet handed out */
    int64_t nready, ready_cap;
    unsigned inflight; /* ops submitted or queued, not yet completed */
    int direct, fsync, cancelled;
    int active;         /* a batch is started and not yet ended */
    int dirfd;          /* the batch's common directory, or AT_FDCWD */
    size_t prefix;      /* bytes of each path that dirfd stands for */
    /* hooked batches: the read hook and the buffers lent to reads in flight */
    lsio_hook hook;
    void *hook_ctx;
    char **spare;       /* buffers not lent out; at most depth exist */
    int nspare;
    int64_t bufsize;
    int64_t burst;      /* requests started per wait (0: as many as slots allow) */
    int64_t burst_bytes; /* and at most this many bytes of them (the first always starts) */
    /* bounded waits and failures (pump, abort_batch) */
    int64_t tick_ms, stall_ms;
    int64_t progress_at; /* CLOCK_MONOTONIC ms of the batch's last completion */
    int abort_err;      /* the batch is being aborted: its running requests fail with this */
    int bug;            /* the bookkeeping met a completion or finish it did not expect */
    int sqe_err;        /* why get_sqe returned NULL */
    int broken;         /* errno that made the ring unusable (LSIO_INFO_BROKEN) */
    int iowq_err;
    int64_t lost, outstanding, close_errors;
    /* testing (lsio_ring_test) */
    int64_t test_sqe_left;
    int test_enter_err, test_slots_err, test_no_cancel;
    int64_t test_leak_slots;
};

static inline int64_t lsio__round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

/* _uring.c: the buffers lent to the reads of hooked batches */
LSIO_INTERNAL void lsio__free_buffers(lsio_ring *r);
LSIO_INTERNAL int lsio__lend(lsio_ring *r, lsio_req *q);
LSIO_INTERNAL void lsio__run_hook(lsio_ring *r, int64_t idx, lsio_req *q);

/* _uring_ops.c: the per-request state machine */
LSIO_INTERNAL void lsio__start_requests(lsio_ring *r);
LSIO_INTERNAL void lsio__on_cqe(lsio_ring *r, int64_t idx, int res);
LSIO_INTERNAL void lsio__close_plain(lsio_ring *r, lsio_req *q);

/* _uring_batch.c: batch control */
LSIO_INTERNAL void lsio__close_common_dir(lsio_ring *r);
LSIO_INTERNAL void lsio__end_batch(lsio_ring *r);

#endif
