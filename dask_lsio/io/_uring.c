/* dask-lsio io_uring core. See _uring.h for the model.
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
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "_uring.h"

#define ALIGN 4096
#define HOOK_BURST 8                /* reads started per wait in hooked batches ... */
#define HOOK_BURST_BYTES (1 << 20)  /* ... or fewer, when they are large */
#define UD_CANCEL (~(uint64_t)0 - 1) /* user_data of our cancel ops (liburing's timeouts use ~0) */

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

static int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }
static void close_common_dir(lsio_ring *r);
static void free_buffers(lsio_ring *r);
static void end_batch(lsio_ring *r);

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

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
    end_batch(r); /* a batch left running: its plain descriptors and directory */
    close_common_dir(r);
    free_buffers(r);
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

/* ---- the state machine ---- */

/* An SQE, or NULL with r->sqe_err set. A request has at most one op prepared or in flight
 * and requests in flight never outnumber the SQ's entries, so the SQ stays full only when
 * the kernel stops taking SQEs (the submit below fails): the caller then fails its request
 * (next_op) rather than wait for room that may never come. */
static struct io_uring_sqe *get_sqe(lsio_ring *r) {
    if (r->test_sqe_left == 0) { r->sqe_err = EBUSY; return NULL; }
    if (r->test_sqe_left > 0) r->test_sqe_left--;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) { /* the SQ is full of prepared ops: hand them to the kernel first */
        int ret = io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
        if (!sqe) { r->sqe_err = ret < 0 ? -ret : EBUSY; return NULL; }
    }
    r->inflight++;
    return sqe;
}

/* Cannot fail: lsio_batch_start sized ready for every request, and a request finishes once
 * (a second finish is a bookkeeping error, which ends the batch). */
static void push_ready(lsio_ring *r, int64_t idx) {
    if (r->nready < r->ready_cap) r->ready[r->nready++] = idx;
    else r->bug = 1;
}

static void release_slot(lsio_ring *r, lsio_req *q) {
    if (q->slot >= 0) r->free_slots[r->nfree++] = q->slot;
    q->slot = -1;
}

/* ---- buffers lent to the reads of hooked batches ---- */

static void free_buffers(lsio_ring *r) {
    for (int i = 0; i < r->nspare; i++) lsio_free(r->spare[i]);
    free(r->spare);
    r->spare = NULL;
    r->nspare = 0;
}

/* Lend a buffer to a read; 0 or ENOMEM. Reads in flight never exceed the ring's slots, so at
 * most depth buffers are ever allocated. */
static int lend(lsio_ring *r, lsio_req *q) {
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
static void run_hook(lsio_ring *r, int64_t idx, lsio_req *q) {
    if (!q->err) {
        int e = r->hook(r->hook_ctx, idx, q->buf + q->start, q->nbytes);
        if (e) { q->err = e; q->err_stage = LSIO_ST_HOOK; }
    }
    if (q->grown) { lsio_free(q->grown); q->grown = NULL; } /* data grew past the lent one */
    if (q->lent) r->spare[r->nspare++] = q->buf;
    q->buf = NULL;
    q->lent = 0;
}

/* Close a plain descriptor here. The request is over whatever close says (Linux releases
 * the descriptor even when close reports an error, and a read-only file has no data to lose
 * then), so errors are only counted, for lsio_ring_info. */
static void close_plain(lsio_ring *r, lsio_req *q) {
    if (close(q->fd) < 0) r->close_errors++;
    q->fd = -1;
}

static void finish(lsio_ring *r, int64_t idx, lsio_req *q) {
    if (r->hook && q->kind == LSIO_READ) run_hook(r, idx, q);
    q->finished = 1;
    q->stage = LSIO_ST_DONE;
    r->finished++;
    push_ready(r, idx);
    if (!q->fixed && q->fd >= 0) { /* a plain descriptor (suffix reads): close it */
        struct io_uring_sqe *sqe = get_sqe(r);
        if (!sqe) { close_plain(r, q); release_slot(r, q); return; }
        io_uring_prep_close(sqe, q->fd);
        io_uring_sqe_set_data64(sqe, (uint64_t)idx);
        q->stage = LSIO_ST_CLOSE; /* keeps its slot (and fd) until the close completes */
        return;
    }
    release_slot(r, q);
}

static void fail(lsio_ring *r, int64_t idx, lsio_req *q, int err) {
    q->err = err;
    q->err_stage = q->stage;
    q->nbytes = 0;
    if (q->grown) { lsio_free(q->grown); q->grown = NULL; }
    if (q->kind == LSIO_WRITE && q->stage >= LSIO_ST_IO && q->stage <= LSIO_ST_RENAME) {
        /* the temporary object exists: remove it so no partial object remains (its outcome
         * is not reported: the request keeps the error that made it fail) */
        q->stage = LSIO_ST_UNLINK_TMP;
        struct io_uring_sqe *sqe = get_sqe(r);
        if (sqe) {
            io_uring_prep_unlinkat(sqe, r->dirfd, q->tmp_path + r->prefix, 0);
            io_uring_sqe_set_data64(sqe, (uint64_t)idx);
            return;
        }
        unlinkat(r->dirfd, q->tmp_path + r->prefix, 0); /* no SQE: remove it here */
    }
    finish(r, idx, q);
}

/* The SQE of a request's next op, which moves it to `stage`; NULL when the ring has none
 * (get_sqe), and the request has then failed (in that stage). */
static struct io_uring_sqe *next_op(lsio_ring *r, int64_t idx, lsio_req *q, int stage) {
    q->stage = stage;
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe) { fail(r, idx, q, r->sqe_err); return NULL; }
    io_uring_sqe_set_data64(sqe, (uint64_t)idx); /* (the prep_* helpers leave user_data) */
    return sqe;
}

static void set_file(struct io_uring_sqe *sqe, lsio_req *q) {
    if (q->fixed) sqe->flags |= IOSQE_FIXED_FILE;
}

static int64_t read_base(const lsio_req *q) {
    return q->direct ? (q->file_offset & ~(int64_t)(ALIGN - 1)) : q->file_offset;
}

/* Submit the next read of a request: the rest of its range, or the rest of its buffer. */
static void issue_read(lsio_ring *r, int64_t idx, lsio_req *q) {
    int64_t base = read_base(q);
    int64_t want;
    if (q->length >= 0) {
        int64_t end = q->file_offset + q->length;
        want = (q->direct ? round_up(end, ALIGN) : end) - base - q->done;
    } else {
        want = q->cap - q->done;
        if (q->direct) want &= ~(int64_t)(ALIGN - 1);
    }
    if (want > q->cap - q->done) want = q->cap - q->done; /* the caller's buffer is the limit */
    if (want <= 0) { /* nothing (more) to read: 0-length ranges and full caller buffers */
        q->nbytes = 0;
        finish(r, idx, q);
        return;
    }
    struct io_uring_sqe *sqe = next_op(r, idx, q, LSIO_ST_IO);
    if (!sqe) return;
    if (want > 0x7ffff000) want = 0x7ffff000; /* one read op moves at most this much */
    io_uring_prep_read(sqe, q->fd, q->buf + q->done, (unsigned)want, (uint64_t)(base + q->done));
    q->asked = want;
    set_file(sqe, q);
}

static void issue_write(lsio_ring *r, int64_t idx, lsio_req *q) {
    int64_t want = q->length - q->done;
    if (want > 0x7ffff000) want = 0x7ffff000;
    struct io_uring_sqe *sqe = next_op(r, idx, q, LSIO_ST_IO);
    if (!sqe) return;
    io_uring_prep_write(sqe, q->fd, q->buf + q->done, (unsigned)want, (uint64_t)q->done);
    set_file(sqe, q);
}

static void issue_rename(lsio_ring *r, int64_t idx, lsio_req *q) {
    struct io_uring_sqe *sqe = next_op(r, idx, q, LSIO_ST_RENAME);
    if (!sqe) return;
    io_uring_prep_renameat(sqe, r->dirfd, q->tmp_path + r->prefix, r->dirfd,
                           q->path + r->prefix, 0);
}

static void issue_open(lsio_ring *r, int64_t idx, lsio_req *q) {
    int delete = q->kind == LSIO_DELETE;
    struct io_uring_sqe *sqe = next_op(r, idx, q, delete ? LSIO_ST_UNLINK : LSIO_ST_OPEN);
    if (!sqe) return;
    const char *rel = q->path + r->prefix;
    if (delete) {
        io_uring_prep_unlinkat(sqe, r->dirfd, rel, 0);
        return;
    }
    if (q->kind == LSIO_WRITE) {
        io_uring_prep_openat_direct(sqe, r->dirfd, q->tmp_path + r->prefix,
                                    O_WRONLY | O_CREAT | O_TRUNC, 0666, (unsigned)q->slot);
        q->fixed = 1;
        return;
    }
    int flags = O_RDONLY | (q->direct ? O_DIRECT : 0);
    if (q->length < 0 && q->offset < 0) {
        /* a suffix needs the size of the very file we read: a plain descriptor allows a
         * statx on it (AT_EMPTY_PATH), which fixed slots do not */
        io_uring_prep_openat(sqe, r->dirfd, rel, flags | O_CLOEXEC, 0);
        q->fixed = 0;
    } else {
        /* no O_CLOEXEC: direct descriptors reject it with -EINVAL */
        io_uring_prep_openat_direct(sqe, r->dirfd, rel, flags, 0, (unsigned)q->slot);
        q->fixed = 1;
        q->file_offset = q->offset;
    }
}

static void on_open(lsio_ring *r, int64_t idx, lsio_req *q, int res) {
    if (res == -EINVAL && q->direct && q->kind == LSIO_READ) {
        q->direct = 0; /* the file system refuses O_DIRECT (tmpfs): read it buffered */
        issue_open(r, idx, q);
        return;
    }
    if (res < 0) { fail(r, idx, q, -res); return; }
    q->fd = q->fixed ? q->slot : res;
    if (q->kind == LSIO_WRITE) {
        if (q->length == 0) issue_rename(r, idx, q);
        else issue_write(r, idx, q);
        return;
    }
    if (!q->fixed) {
        struct io_uring_sqe *sqe = next_op(r, idx, q, LSIO_ST_STATX);
        if (sqe) io_uring_prep_statx(sqe, q->fd, "", AT_EMPTY_PATH, STATX_SIZE, &r->stx[q->slot]);
        return;
    }
    issue_read(r, idx, q);
}

static void on_statx(lsio_ring *r, int64_t idx, lsio_req *q, int res) {
    if (res < 0) { fail(r, idx, q, -res); return; }
    int64_t size = (int64_t)r->stx[q->slot].stx_size;
    int64_t n = -q->offset;
    q->file_offset = size > n ? size - n : 0;
    q->length = size - q->file_offset;
    issue_read(r, idx, q);
}

/* A read to EOF filled its buffer: move to a buffer twice as large and read on. */
static int grow(lsio_req *q) {
    int64_t cap = round_up(q->cap * 2, ALIGN);
    char *p = lsio_alloc(cap);
    if (!p) return ENOMEM;
    memcpy(p, q->buf, (size_t)q->done);
    if (q->grown) lsio_free(q->grown);
    q->grown = p;
    q->buf = p;
    q->cap = cap;
    return 0;
}

static void on_read(lsio_ring *r, int64_t idx, lsio_req *q, int res) {
    if (res == -EAGAIN || res == -EINTR) { issue_read(r, idx, q); return; }
    if (res < 0) { fail(r, idx, q, -res); return; }
    q->done += res;
    int64_t skip = q->file_offset - read_base(q);
    int full = q->done >= q->cap; /* the buffer is full (a caller's buffer is the limit) */
    int eof;
    if (q->length >= 0) {
        /* buffered: resubmit a short read for the rest, EOF is a read of 0 bytes;
         * O_DIRECT comes back short only at EOF (and cannot resume at an unaligned offset) */
        eof = res == 0 || (q->direct && res < q->asked) || q->done - skip >= q->length;
    } else {
        /* to EOF: a short read is EOF, since the kernel completes short buffered reads of
         * regular files itself; a full buffer grows when the buffer is ours */
        eof = res < q->asked;
        if (full && !eof && q->grow) {
            char *old = q->buf;
            int e = grow(q);
            if (e) { fail(r, idx, q, e); return; }
            if (q->lent) { r->spare[r->nspare++] = old; q->lent = 0; } /* the data moved */
            full = 0;
        }
    }
    if (eof || full) {
        int64_t got = q->done - skip;
        if (got < 0) got = 0;
        if (q->length >= 0 && got > q->length) got = q->length;
        q->start = skip;
        q->nbytes = got;
        finish(r, idx, q);
        return;
    }
    issue_read(r, idx, q);
}

static void on_write(lsio_ring *r, int64_t idx, lsio_req *q, int res) {
    if (res == -EAGAIN || res == -EINTR) { issue_write(r, idx, q); return; }
    if (res <= 0) { fail(r, idx, q, res < 0 ? -res : EIO); return; }
    q->done += res;
    if (q->done < q->length) { issue_write(r, idx, q); return; }
    q->nbytes = q->done;
    if (r->fsync) {
        struct io_uring_sqe *sqe = next_op(r, idx, q, LSIO_ST_FSYNC);
        if (!sqe) return;
        io_uring_prep_fsync(sqe, q->fd, 0);
        set_file(sqe, q);
        return;
    }
    issue_rename(r, idx, q);
}

/* The batch is being aborted: a request whose op completed goes no further. An open that
 * worked leaves a descriptor to close; a write's temporary object is removed even when its
 * open failed, as an open interrupted by the cancellation may have created it. */
static void stop_request(lsio_ring *r, int64_t idx, lsio_req *q, int res) {
    if (q->stage == LSIO_ST_OPEN && res >= 0) q->fd = q->fixed ? q->slot : res;
    if (q->stage == LSIO_ST_OPEN && q->kind == LSIO_WRITE) q->stage = LSIO_ST_IO; /* (fail) */
    fail(r, idx, q, r->abort_err);
}

static void on_cqe(lsio_ring *r, int64_t idx, int res) {
    lsio_req *q = &r->reqs[idx];
    if (r->inflight == 0 || (q->finished && q->stage != LSIO_ST_CLOSE)) {
        r->bug = 1; /* no op of this request was in flight */
        return;
    }
    r->inflight--;
    if (r->abort_err && q->stage <= LSIO_ST_FSYNC) { stop_request(r, idx, q, res); return; }
    switch (q->stage) {
    case LSIO_ST_OPEN: on_open(r, idx, q, res); break;
    case LSIO_ST_STATX: on_statx(r, idx, q, res); break;
    case LSIO_ST_IO:
        if (q->kind == LSIO_READ) on_read(r, idx, q, res);
        else on_write(r, idx, q, res);
        break;
    case LSIO_ST_FSYNC:
        if (res < 0) fail(r, idx, q, -res);
        else issue_rename(r, idx, q);
        break;
    case LSIO_ST_RENAME:
        if (res < 0) fail(r, idx, q, -res);
        else finish(r, idx, q);
        break;
    case LSIO_ST_UNLINK_TMP: finish(r, idx, q); break; /* keeps the original error */
    case LSIO_ST_UNLINK:
        if (res < 0 && res != -ENOENT) fail(r, idx, q, -res);
        else finish(r, idx, q);
        break;
    case LSIO_ST_CLOSE: /* the request was handed out already: see close_plain */
        if (res < 0) r->close_errors++;
        q->fd = -1;
        release_slot(r, q);
        break;
    default: r->bug = 1; break;
    }
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

static void close_common_dir(lsio_ring *r) {
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
    bufsize = round_up(bufsize > 0 ? bufsize : 1, ALIGN);
    if (bufsize != r->bufsize || !r->spare) { /* keep the buffers while the size suits */
        free_buffers(r);
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

/* Start as many waiting requests as there are free slots. */
static void start_requests(lsio_ring *r) {
    int64_t first = r->next, stop = r->burst ? r->next + r->burst : r->n;
    int64_t bytes = 0;
    if (stop > r->n) stop = r->n;
    while (!r->cancelled && r->next < stop && r->nfree > 0 && r->inflight < r->depth) {
        int64_t idx = r->next;
        lsio_req *q = &r->reqs[idx];
        if (r->burst) {
            bytes += q->length > 0 ? q->length : r->bufsize;
            if (bytes > r->burst_bytes && idx > first) break;
        }
        r->next++;
        q->slot = r->free_slots[--r->nfree];
        q->direct = r->direct && q->kind == LSIO_READ;
        if (r->hook && q->kind == LSIO_READ && !q->buf) {
            int e = lend(r, q);
            if (e) { fail(r, idx, q, e); continue; }
        }
        issue_open(r, idx, q);
    }
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
            on_cqe(r, (int64_t)ud, cqes[i]->res);
            mine++;
        }
        io_uring_cq_advance(&r->ring, got);
        start_requests(r);
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
        start_requests(r);
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
static void end_batch(lsio_ring *r) {
    if (!r->active) return;
    r->active = 0;
    if (r->inflight > 0) {
        r->lost = (int64_t)r->inflight - io_uring_sq_ready(&r->ring); /* (never submitted) */
        if (!r->broken) r->broken = r->abort_err ? r->abort_err : ENOTRECOVERABLE;
    }
    for (int64_t i = 0; i < r->n && (r->abort_err || r->inflight); i++) {
        lsio_req *q = &r->reqs[i];
        if (q->finished) continue; /* (a close in flight closes its descriptor itself) */
        if (!q->fixed && q->fd >= 0) close_plain(r, q);
        q->err = i < r->next && r->abort_err ? r->abort_err : ECANCELED;
        q->err_stage = q->stage;
        q->finished = 1;
        if (r->inflight) q->grown = NULL; /* the kernel may still write into it */
    }
    clear_slots(r);
    close_common_dir(r);
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
    end_batch(r);
    return err;
}

int64_t lsio_batch_run(lsio_ring *r) {
    while (batch_busy(r)) {
        int ret = pump(r);
        if (ret < 0) return abort_batch(r, ret);
    }
    end_batch(r);
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
    if (!batch_busy(r) && r->nready == 0) end_batch(r);
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
    end_batch(r);
    r->nready = 0;
    return 0;
}
