/* dask-lsio plain-syscall reads: the thread engine's hooked reads (see _uring.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "_uring.h"

#define ALIGN 4096
#define MAX_OP 0x7ffff000 /* the most one read syscall moves */

static int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

/* A buffer of at least `need` bytes, aligned for O_DIRECT: *buf grown if smaller. */
static int reserve(char **buf, int64_t *cap, int64_t need) {
    if (need <= *cap) return 0;
    int64_t size = round_up(need, ALIGN);
    char *p = lsio_alloc(size);
    if (!p) return ENOMEM;
    lsio_free(*buf);
    *buf = p;
    *cap = size;
    return 0;
}

/* pread `want` bytes at `off` into buf, resuming short reads; EOF ends it early. */
static int read_range(int fd, char *buf, int64_t want, int64_t off, int direct, int64_t *got) {
    int64_t done = 0;
    while (done < want) {
        int64_t step = want - done < MAX_OP ? want - done : MAX_OP;
        ssize_t r = pread(fd, buf + done, (size_t)step, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            *got = done;
            return errno;
        }
        if (r == 0) break;
        done += r;
        if (direct && r < step) break; /* O_DIRECT comes back short only at EOF */
    }
    *got = done;
    return 0;
}

static int open_read(const char *path, int *direct) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | (*direct ? O_DIRECT : 0));
    if (fd < 0 && *direct && errno == EINVAL) { /* the file system refuses O_DIRECT (tmpfs) */
        *direct = 0;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    return fd < 0 ? -errno : fd;
}

/* Read request q (its bytes end up at *buf + q->start); 0 or an errno, with *stage set. */
static int read_one(lsio_req *q, int direct, char **buf, int64_t *cap, int *stage) {
    *stage = LSIO_ST_OPEN;
    int fd = open_read(q->path, &direct);
    if (fd < 0) return -fd;
    int e = 0;
    int64_t off = q->offset, len = q->length, got = 0;
    struct stat st;
    if (len < 0 && off < 0) { /* a suffix: the size of the very file opened */
        *stage = LSIO_ST_STATX;
        if (fstat(fd, &st) != 0) { e = errno; goto out; }
        off = (int64_t)st.st_size + off > 0 ? (int64_t)st.st_size + off : 0;
        len = (int64_t)st.st_size - off;
    }
    *stage = LSIO_ST_IO;
    int64_t base = direct ? off & ~(int64_t)(ALIGN - 1) : off;
    int64_t want = len >= 0 ? (direct ? round_up(off + len, ALIGN) : off + len) - base : *cap;
    if ((e = reserve(buf, cap, want))) goto out;
    if ((e = read_range(fd, *buf, want, base, direct, &got))) goto out;
    if (len < 0 && got == want) { /* to EOF and the buffer is full: the file is larger */
        if (fstat(fd, &st) != 0) { e = errno; goto out; }
        int64_t rest = (int64_t)st.st_size - base;
        if (rest > got) {
            if ((e = reserve(buf, cap, rest + 1))) goto out;
            int64_t more = 0;
            int64_t tail = direct ? round_up(rest, ALIGN) - got : rest - got;
            e = read_range(fd, *buf + got, tail, base + got, direct, &more);
            got += more;
            if (e) goto out;
        }
    }
    q->start = off - base;
    q->nbytes = got - q->start > 0 ? got - q->start : 0;
    if (len >= 0 && q->nbytes > len) q->nbytes = len;
out:
    if (close(fd) != 0 && !e && errno != EINTR) e = errno;
    return e;
}

int lsio_posix_read_hooked(lsio_req *reqs, int64_t n, int direct, int64_t bufsize,
                           lsio_hook hook, void *ctx) {
    int64_t cap = 0;
    char *buf = NULL;
    int e = reserve(&buf, &cap, bufsize > 0 ? bufsize : 1);
    for (int64_t i = 0; i < n; i++) {
        lsio_req *q = &reqs[i];
        int stage = LSIO_ST_OPEN;
        q->nbytes = 0;
        q->start = 0;
        q->err = e ? e : read_one(q, direct, &buf, &cap, &stage);
        if (q->err) {
            q->err_stage = stage;
            q->nbytes = 0;
            continue;
        }
        int h = hook(ctx, i, buf + q->start, q->nbytes);
        if (h) {
            q->err = h;
            q->err_stage = LSIO_ST_HOOK;
        }
    }
    lsio_free(buf);
    return e;
}
