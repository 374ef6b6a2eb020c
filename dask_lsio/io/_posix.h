/* dask-lsio plain-syscall reads: the thread engine's hooked reads, in C.
 *
 * Where io_uring cannot run (a seccomp filter, kernel.io_uring_disabled, an old kernel) the
 * thread engine reads with plain syscalls. Done request by request in Python, a small chunk
 * costs more in bytecode and GIL hand-offs than in reading and decoding it; here a worker
 * thread reads a whole group of requests and hands each one's bytes to the batch's read hook
 * (the decode kernel) in one call, with the GIL released throughout.
 */
#include <stdint.h>

/* Read requests [0, n) of `reqs` (filled by lsio_fill_reads; buf is not used) one after the
 * other on the calling thread: open, (fstat for suffixes,) pread until the range or the file
 * ends, close; each into a buffer of `bufsize` bytes owned here (grown for a read to EOF of
 * a larger file), whose bytes are then handed to `hook` with the request's index. Outcomes
 * go to each request's err, err_stage, start and nbytes, as the ring reports them (stage
 * LSIO_ST_HOOK: the hook rejected the bytes). Returns 0, or ENOMEM when no buffer could be
 * had (the requests then fail with ENOMEM). */
int lsio_posix_read_hooked(lsio_req *reqs, int64_t n, int direct, int64_t bufsize,
                           lsio_hook hook, void *ctx);
