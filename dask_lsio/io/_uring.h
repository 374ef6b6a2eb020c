/* dask-lsio io_uring core: the declarations shared by its C files (_uring*.c, _posix.c) and
 * the cffi cdef. What only the C files share is in _uring_internal.h.
 *
 * One ring belongs to one thread (SINGLE_ISSUER). A batch is an array of lsio_req filled by
 * Python in one call (lsio_fill_*), run by lsio_batch_run / lsio_batch_step with the GIL
 * released, and read back field by field. Each request walks a small state machine; its
 * index in the array is the CQE user_data, so no per-request allocation happens.
 *
 * Every wait is bounded (lsio_ring_set_timeouts). A batch that cannot go on (a ring error, a
 * stall, a bookkeeping error) is aborted in C: its ops in flight are cancelled and reaped and
 * the batch ended before the call returns, so the caller may free the buffers, unless the
 * ring reports LSIO_INFO_LOST ops, which the kernel may still complete.
 */
#include <stdint.h>

#define LSIO_READ 0
#define LSIO_WRITE 1
#define LSIO_DELETE 2

/* Stages, also reported as the failing stage of a request. */
#define LSIO_ST_OPEN 1
#define LSIO_ST_STATX 2
#define LSIO_ST_IO 3
#define LSIO_ST_FSYNC 4
#define LSIO_ST_RENAME 5
#define LSIO_ST_UNLINK_TMP 6
#define LSIO_ST_UNLINK 7
#define LSIO_ST_CLOSE 8
#define LSIO_ST_DONE 9
#define LSIO_ST_HOOK 10 /* the batch's read hook rejected the data */

/* A read hook: called in the ring's thread for every read that succeeded, with the bytes it
 * returned, before the buffer is reused. Returns 0, or an error code stored as the request's
 * err (stage LSIO_ST_HOOK). `idx` is the request's index in the batch. */
typedef int (*lsio_hook)(void *ctx, int64_t idx, const char *data, int64_t n);

typedef struct lsio_req {
    /* inputs */
    const char *path;     /* object path (NUL-terminated) */
    const char *tmp_path; /* writes: temporary path in the same directory */
    char *buf;            /* reads: destination; writes: source */
    int64_t offset;       /* reads: file offset, or -n with length < 0 for the last n bytes */
    int64_t length;       /* reads: bytes wanted or -1 for "to EOF"; writes: bytes to write */
    int64_t cap;          /* reads: capacity of buf */
    int32_t kind;         /* LSIO_READ, LSIO_WRITE, LSIO_DELETE */
    int32_t grow;         /* reads to EOF: may replace buf by a larger C buffer */
    /* outputs */
    int32_t err;          /* 0 or a positive errno */
    int32_t err_stage;    /* stage that failed */
    int64_t start;        /* reads: where the data starts in buf (O_DIRECT alignment) */
    int64_t nbytes;       /* bytes read or written */
    int64_t file_offset;  /* reads: resolved file offset of the first byte returned */
    char *grown;          /* reads: buffer allocated here when buf was too small */
    /* private */
    int64_t done;
    int64_t asked;
    int32_t stage;
    int32_t fd;
    int32_t slot;
    int32_t fixed;
    int32_t direct;
    int32_t finished;
    int32_t lent;         /* buf is lent by the ring (hooked batches) */
} lsio_req;

typedef struct lsio_ring lsio_ring;

/* Open a ring of `depth` entries (and as many fixed-file slots). `want_flags` bit 0 asks for
 * SINGLE_ISSUER|DEFER_TASKRUN (dropped on kernels that refuse them). `iowq_bounded` raises
 * io-wq's bounded worker limit (0 keeps the kernel default). Returns NULL and sets *err. */
lsio_ring *lsio_ring_open(unsigned depth, unsigned want_flags, unsigned iowq_bounded,
                          int *err);
void lsio_ring_close(lsio_ring *r);
unsigned lsio_ring_flags(lsio_ring *r);
/* Every wait lasts at most `tick_ms`; a batch that sees no completion for `stall_ms` is
 * aborted: its requests in flight are cancelled and fail with ETIMEDOUT, and the call that
 * ran it returns -ETIMEDOUT. Defaults: 1 s and 10 minutes. */
void lsio_ring_set_timeouts(lsio_ring *r, int64_t stall_ms, int64_t tick_ms);

/* What lsio_ring_info reports. */
#define LSIO_INFO_BROKEN 1      /* errno that made the ring unusable (0: usable); a broken
                                 * ring refuses batches and must be closed */
#define LSIO_INFO_LOST 2        /* ops the kernel still had when a broken ring's batch ended:
                                 * their buffers must never be freed or reused */
#define LSIO_INFO_OUTSTANDING 3 /* requests unfinished when the last batch was aborted */
#define LSIO_INFO_IOWQ_ERR 4    /* errno of io_uring_register_iowq_max_workers (0: done or
                                 * not asked); the kernel's default limit applies then */
#define LSIO_INFO_CLOSE_ERRORS 5 /* closes of plain descriptors that reported an error */
int64_t lsio_ring_info(lsio_ring *r, int what);

/* Testing only: make failures happen that the kernel almost never produces. */
#define LSIO_TEST_SQE_FAIL 1    /* get_sqe hands out `value` more SQEs, then none (-1: off) */
#define LSIO_TEST_ENTER_FAIL 2  /* the next wait fails with errno `value` */
#define LSIO_TEST_LEAK_SLOTS 3  /* the next batch starts with `value` slots missing */
#define LSIO_TEST_SLOTS_FAIL 4  /* clearing the slots fails with errno `value` (0: off) */
#define LSIO_TEST_NO_CANCEL 5   /* aborts do not cancel ops in flight (1) or do (0) */
void lsio_ring_test(lsio_ring *r, int what, int64_t value);

/* Batches: start, then run to completion or step until every request is finished.
 * lsio_batch_start returns 0 or an errno (ENOMEM; EBUSY when a batch is still running on the
 * ring; the ring's errno when it is broken). lsio_batch_run, lsio_batch_step and
 * lsio_batch_cancel return a negative errno when the batch could not go on (a ring error,
 * -ETIMEDOUT after a stall, -ENOTRECOVERABLE for a bookkeeping error): the batch has then
 * ended (its running requests failed with that errno, those not started with ECANCELED)
 * and lsio_ring_info tells whether the ring is still usable. */
int lsio_batch_start(lsio_ring *r, lsio_req *reqs, int64_t n, int direct, int fsync);
int64_t lsio_batch_run(lsio_ring *r);
/* A read batch whose requests have no buffers (buf NULL): the ring lends each read one of at
 * most `depth` buffers of `bufsize` bytes while it is in flight, passes the data to `hook`,
 * and takes the buffer back, so memory stays bounded whatever the batch's size. Run it with
 * lsio_batch_run; the ring keeps its buffers for the next such batch. */
int lsio_batch_start_hooked(lsio_ring *r, lsio_req *reqs, int64_t n, int direct,
                            int64_t bufsize, lsio_hook hook, void *ctx);
int64_t lsio_batch_step(lsio_ring *r, int64_t *out, int64_t max_out);
int lsio_batch_cancel(lsio_ring *r);

/* Fill request arrays from flat arrays, so Python builds no object per request. */
void lsio_fill_reads(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at,
                     const int64_t *offsets, const int64_t *lengths, const uint64_t *buf_addr,
                     const int64_t *caps, int grow);
void lsio_fill_writes(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at,
                      const char *tmp_paths, const int64_t *tmp_at, const uint64_t *buf_addr,
                      const int64_t *lengths);
void lsio_fill_deletes(lsio_req *reqs, int64_t n, const char *paths, const int64_t *path_at);
/* Copy the outcome of the requests listed in idx into flat arrays indexed like reqs. */
void lsio_collect(lsio_req *reqs, const int64_t *idx, int64_t k, int32_t *err,
                  int32_t *err_stage, int64_t *start, int64_t *nbytes, uint64_t *grown);

void *lsio_alloc(int64_t size);
void lsio_free(void *p);

/* Plain-syscall reads (_posix.c), for the thread engine where io_uring cannot run: done
 * request by request in Python, a small chunk costs more in bytecode and GIL hand-offs than
 * in reading and decoding it; here a worker thread reads a whole group and hands each read's
 * bytes to the batch's read hook (the decode kernel) in one call, with the GIL released. */
/* Read requests [0, n) of `reqs` (filled by lsio_fill_reads; buf is not used) one after the
 * other on the calling thread: open, (fstat for suffixes,) pread until the range or the file
 * ends, close; each into a buffer of `bufsize` bytes owned here (grown for a read to EOF of
 * a larger file), whose bytes are then handed to `hook` with the request's index. Outcomes
 * go to each request's err, err_stage, start and nbytes, as the ring reports them (stage
 * LSIO_ST_HOOK: the hook rejected the bytes). Returns 0, or ENOMEM when no buffer could be
 * had (the requests then fail with ENOMEM). */
int lsio_posix_read_hooked(lsio_req *reqs, int64_t n, int direct, int64_t bufsize,
                           lsio_hook hook, void *ctx);
