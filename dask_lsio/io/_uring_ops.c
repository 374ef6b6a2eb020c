/* dask-lsio io_uring core: the per-request state machine. See _uring.h for the model and
 * _uring_internal.h for how the engine's files divide the work.
 *
 * Each request issues its next op from the completion of the previous one (lsio__on_cqe):
 * open, (statx,) read, or open, write, (fsync,) rename, or unlink; a write that fails removes
 * its temporary object; a finished request is handed to the read hook, if any, and queued
 * for the caller.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "_uring_internal.h"

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

/* Close a plain descriptor here. The request is over whatever close says (Linux releases
 * the descriptor even when close reports an error, and a read-only file has no data to lose
 * then), so errors are only counted, for lsio_ring_info. */
void lsio__close_plain(lsio_ring *r, lsio_req *q) {
    if (close(q->fd) < 0) r->close_errors++;
    q->fd = -1;
}

static void finish(lsio_ring *r, int64_t idx, lsio_req *q) {
    if (r->hook && q->kind == LSIO_READ) lsio__run_hook(r, idx, q);
    q->finished = 1;
    q->stage = LSIO_ST_DONE;
    r->finished++;
    push_ready(r, idx);
    if (!q->fixed && q->fd >= 0) { /* a plain descriptor (suffix reads): close it */
        struct io_uring_sqe *sqe = get_sqe(r);
        if (!sqe) { lsio__close_plain(r, q); release_slot(r, q); return; }
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
        want = (q->direct ? lsio__round_up(end, ALIGN) : end) - base - q->done;
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
    int64_t cap = lsio__round_up(q->cap * 2, ALIGN);
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

void lsio__on_cqe(lsio_ring *r, int64_t idx, int res) {
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
    case LSIO_ST_CLOSE: /* the request was handed out already: see lsio__close_plain */
        if (res < 0) r->close_errors++;
        q->fd = -1;
        release_slot(r, q);
        break;
    default: r->bug = 1; break;
    }
}

/* Start as many waiting requests as there are free slots. */
void lsio__start_requests(lsio_ring *r) {
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
            int e = lsio__lend(r, q);
            if (e) { fail(r, idx, q, e); continue; }
        }
        issue_open(r, idx, q);
    }
}
