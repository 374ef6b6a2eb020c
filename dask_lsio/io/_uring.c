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
 * - the caller waits inside io_uring_enter with the GIL released, never spinning.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "_uring.h"

#define ALIGN 4096
#define HOOK_BURST 8                /* reads started per wait in hooked batches ... */
#define HOOK_BURST_BYTES (1 << 20)  /* ... or fewer, when they are large */

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
};

static int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }
static void close_common_dir(lsio_ring *r);
static void free_buffers(lsio_ring *r);

lsio_ring *lsio_ring_open(unsigned depth, unsigned want_flags, unsigned iowq_bounded, int *err) {
    lsio_ring *r = calloc(1, sizeof(*r));
    if (!r) { *err = ENOMEM; return NULL; }
    r->dirfd = AT_FDCWD;
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
        io_uring_register_iowq_max_workers(&r->ring, values);
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

void lsio_ring_close(lsio_ring *r) {
    if (!r) return;
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

static struct io_uring_sqe *get_sqe(lsio_ring *r) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) { /* the SQ is full of prepared ops: hand them to the kernel first */
        io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
    }
    r->inflight++;
    return sqe;
}

static void push_ready(lsio_ring *r, int64_t idx) {
    if (r->nready == r->ready_cap) {
        int64_t cap = r->ready_cap ? r->ready_cap * 2 : 256;
        int64_t *p = realloc(r->ready, sizeof(int64_t) * cap);
        if (!p) abort(); /* cannot report a finished request: nothing sane remains */
        r->ready = p;
        r->ready_cap = cap;
    }
    r->ready[r->nready++] = idx;
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

static void finish(lsio_ring *r, int64_t idx, lsio_req *q) {
    if (r->hook && q->kind == LSIO_READ) run_hook(r, idx, q);
    q->finished = 1;
    q->stage = LSIO_ST_DONE;
    r->finished++;
    push_ready(r, idx);
    if (!q->fixed && q->fd >= 0) { /* a plain descriptor (suffix reads): close it */
        struct io_uring_sqe *sqe = get_sqe(r);
        io_uring_prep_close(sqe, q->fd);
        io_uring_sqe_set_data64(sqe, (uint64_t)idx);
        q->fd = -1;
        q->stage = LSIO_ST_CLOSE; /* keeps its slot until the close completes */
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
        /* the temporary object exists: remove it so no partial object remains */
        struct io_uring_sqe *sqe = get_sqe(r);
        io_uring_prep_unlinkat(sqe, r->dirfd, q->tmp_path + r->prefix, 0);
        io_uring_sqe_set_data64(sqe, (uint64_t)idx);
        q->stage = LSIO_ST_UNLINK_TMP;
        return;
    }
    finish(r, idx, q);
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
    struct io_uring_sqe *sqe = get_sqe(r);
    if (want > 0x7ffff000) want = 0x7ffff000; /* one read op moves at most this much */
    io_uring_prep_read(sqe, q->fd, q->buf + q->done, (unsigned)want, (uint64_t)(base + q->done));
    q->asked = want;
    set_file(sqe, q);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx);
    q->stage = LSIO_ST_IO;
}

static void issue_write(lsio_ring *r, int64_t idx, lsio_req *q) {
    int64_t want = q->length - q->done;
    if (want > 0x7ffff000) want = 0x7ffff000;
    struct io_uring_sqe *sqe = get_sqe(r);
    io_uring_prep_write(sqe, q->fd, q->buf + q->done, (unsigned)want, (uint64_t)q->done);
    set_file(sqe, q);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx);
    q->stage = LSIO_ST_IO;
}

static void issue_rename(lsio_ring *r, int64_t idx, lsio_req *q) {
    struct io_uring_sqe *sqe = get_sqe(r);
    io_uring_prep_renameat(sqe, r->dirfd, q->tmp_path + r->prefix, r->dirfd,
                           q->path + r->prefix, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx);
    q->stage = LSIO_ST_RENAME;
}

static void issue_open(lsio_ring *r, int64_t idx, lsio_req *q) {
    struct io_uring_sqe *sqe = get_sqe(r);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx);
    q->stage = LSIO_ST_OPEN;
    const char *rel = q->path + r->prefix;
    if (q->kind == LSIO_DELETE) {
        io_uring_prep_unlinkat(sqe, r->dirfd, rel, 0);
        q->stage = LSIO_ST_UNLINK;
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
        struct io_uring_sqe *sqe = get_sqe(r);
        io_uring_prep_statx(sqe, q->fd, "", AT_EMPTY_PATH, STATX_SIZE, &r->stx[q->slot]);
        io_uring_sqe_set_data64(sqe, (uint64_t)idx);
        q->stage = LSIO_ST_STATX;
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
        struct io_uring_sqe *sqe = get_sqe(r);
        io_uring_prep_fsync(sqe, q->fd, 0);
        set_file(sqe, q);
        io_uring_sqe_set_data64(sqe, (uint64_t)idx);
        q->stage = LSIO_ST_FSYNC;
        return;
    }
    issue_rename(r, idx, q);
}

static void on_cqe(lsio_ring *r, int64_t idx, int res) {
    lsio_req *q = &r->reqs[idx];
    r->inflight--;
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
    case LSIO_ST_CLOSE: release_slot(r, q); break;
    default: break;
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
    if (r->dirfd != AT_FDCWD) close(r->dirfd);
    r->dirfd = AT_FDCWD;
    r->prefix = 0;
}

int lsio_batch_start(lsio_ring *r, lsio_req *reqs, int64_t n, int direct, int fsync) {
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
    r->nfree = 0;
    for (int i = (int)r->depth - 1; i >= 0; i--) r->free_slots[r->nfree++] = i;
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
    lsio_batch_start(r, reqs, n, direct, 0);
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
    return r->inflight > 0 || (!r->cancelled && r->next < r->n);
}

/* Submit what is prepared, wait for at least one completion (GIL released by cffi), and
 * process every completion available. Returns 0 or a negative errno from the ring. */
static int pump(lsio_ring *r) {
    start_requests(r);
    /* every request started failed at once (no buffer could be lent for its size): nothing
     * is in flight, so waiting for a completion would wait forever */
    if (r->inflight == 0) return 0;
    int ret;
    do {
        ret = io_uring_submit_and_wait(&r->ring, 1);
    } while (ret == -EINTR);
    if (ret < 0 && ret != -EBUSY && ret != -EAGAIN) return ret;
    struct io_uring_cqe *cqes[256];
    unsigned got;
    while ((got = io_uring_peek_batch_cqe(&r->ring, cqes, 256)) > 0) {
        for (unsigned i = 0; i < got; i++) on_cqe(r, (int64_t)cqes[i]->user_data, cqes[i]->res);
        io_uring_cq_advance(&r->ring, got);
        start_requests(r);
    }
    return 0;
}

/* Release the files left in slots by this batch, in one call. */
static void clear_slots(lsio_ring *r) {
    int fds[256];
    for (unsigned off = 0; off < r->depth; off += 256) {
        unsigned cnt = r->depth - off < 256 ? r->depth - off : 256;
        for (unsigned i = 0; i < cnt; i++) fds[i] = -1;
        io_uring_register_files_update(&r->ring, off, fds, cnt);
    }
}

static void end_batch(lsio_ring *r) {
    if (!r->active) return;
    r->active = 0;
    clear_slots(r);
    close_common_dir(r);
}

int64_t lsio_batch_run(lsio_ring *r) {
    while (batch_busy(r)) {
        int ret = pump(r);
        if (ret < 0) return ret;
    }
    end_batch(r);
    return r->finished;
}

/* Hand out up to max_out finished request indices, waiting only when none is ready.
 * Returns how many were written; 0 means the batch is over. */
int64_t lsio_batch_step(lsio_ring *r, int64_t *out, int64_t max_out) {
    while (r->nready == 0 && batch_busy(r)) {
        int ret = pump(r);
        if (ret < 0) return ret;
    }
    int64_t k = r->nready < max_out ? r->nready : max_out;
    memcpy(out, r->ready + (r->nready - k), sizeof(int64_t) * (size_t)k);
    r->nready -= k;
    if (!batch_busy(r) && r->nready == 0) end_batch(r);
    return k;
}

/* Stop starting requests and wait for those in flight, whose buffers the kernel still uses. */
int lsio_batch_cancel(lsio_ring *r) {
    r->cancelled = 1;
    while (r->inflight > 0) {
        int ret = pump(r);
        if (ret < 0) return ret;
    }
    end_batch(r);
    r->nready = 0;
    return 0;
}
