// repro7: minimal C reproducer of the write-open purge of read-only file THPs.
//
// Step 1 once, then steps 2-7 per iteration with a new append (as the agent):
//  1. create a regular file of non-zero data (base size), fsync it (clean);
//  2. map the file's first PMD (2 MiB with 4K pages, 512 MiB with arm64's 64K
//     pages: hpage_pmd_size) read-only at a PMD-aligned address (fd
//     O_RDONLY, no writer), touch it,
//     MADV_COLLAPSE; EINVAL with PROT_READ -> retry PROT_READ|PROT_EXEC; munmap;
//  3. open O_WRONLY|O_APPEND, append non-zero data (write(2), no fsync);
//  4. close the write fd;
//  5. re-collapse a read-only PMD range away from the dirty tail (offset 0),
//     retrying transient EINVAL/EAGAIN; munmap;
//  6. open for write again (runs the kernel's purge), close;
//  7. read the appended bytes back with read(2) on a fresh fd and compare.
// Exit codes: 0 not reproduced, 1 reproduced, 2 bad input, 3 collapse
// unsupported, 4 other error.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

// The kernel's PMD size, read once from sysfs (2 MiB when the file is missing).
static size_t HPAGE = 2UL << 20;
#define PMD_SIZE_FILE "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"
#define STEP5_TRIES 5

enum { EXIT_NOT_REPRO = 0, EXIT_REPRO = 1, EXIT_BADINPUT = 2, EXIT_UNSUPPORTED = 3,
       EXIT_ERROR = 4 };

static const char *g_file;
static unsigned char *g_buf;  // scratch for base/append data and read-back

// Report an errno-carrying failure and exit 4 (other error), removing the file.
static void die(const char *what) {
    int e = errno;
    fprintf(stderr, "ERROR %s: errno=%s (%s)\n", what, strerrorname_np(e) ? strerrorname_np(e)
            : "?", strerror(e));
    if (g_file)
        unlink(g_file);
    exit(EXIT_ERROR);
}

// Deterministic non-zero bytes; the seed makes each iteration's append distinct.
static void fill(unsigned char *p, size_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 0x9e3779b9u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        p[i] = (unsigned char)(x >> 24) | 1;  // never zero
    }
}

static void write_all(int fd, const unsigned char *p, size_t n, const char *what) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die(what);
        }
        p += w; n -= (size_t)w;
    }
}

// Map one PMD of `path` at file offset `off` (PMD aligned) at a PMD aligned
// address, read every page, MADV_COLLAPSE, munmap. Returns 0 or the errno.
static int collapse_at(const char *path, off_t off, int prot) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open O_RDONLY");
    // Reserve twice the size anonymously, then place the file mapping at an
    // aligned address inside it with MAP_FIXED.
    unsigned char *res = mmap(NULL, 2 * HPAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) die("mmap reserve");
    uintptr_t aligned = ((uintptr_t)res + HPAGE - 1) & ~(HPAGE - 1);
    unsigned char *p = mmap((void *)aligned, HPAGE, prot, MAP_SHARED | MAP_FIXED, fd, off);
    if (p == MAP_FAILED) die("mmap file");
    volatile unsigned char sink = 0;
    long pg = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < HPAGE; i += (size_t)pg) sink ^= p[i];
    (void)sink;
    int rc = madvise(p, HPAGE, MADV_COLLAPSE) ? errno : 0;
    munmap(res, 2 * HPAGE);
    close(fd);
    return rc;
}

static int parse_size(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return -1;
    switch (*end) {
    case 'K': case 'k': v <<= 10; end++; break;
    case 'M': case 'm': v <<= 20; end++; break;
    case 'G': case 'g': v <<= 30; end++; break;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    *out = v;
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: repro7 DIR [--base-size B] [--append-size B] [--iterations N]"
                    " [--keep-going]\n");
    exit(EXIT_BADINPUT);
}

static void read_pmd_size(void) {
    FILE *f = fopen(PMD_SIZE_FILE, "r");
    unsigned long long v = 0;
    if (f && fscanf(f, "%llu", &v) == 1 && v)
        HPAGE = (size_t)v;
    if (f)
        fclose(f);
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    unsigned long long base = 64ULL << 20, app = 16ULL << 10, iters = 200;
    int keep_going = 0;
    for (int i = 1; i < argc; i++) {
        unsigned long long *dst = NULL;
        if (!strcmp(argv[i], "--keep-going")) { keep_going = 1; continue; }
        if (!strcmp(argv[i], "--base-size")) dst = &base;
        else if (!strcmp(argv[i], "--append-size")) dst = &app;
        else if (!strcmp(argv[i], "--iterations")) dst = &iters;
        else if (argv[i][0] == '-' || dir) usage();
        else { dir = argv[i]; continue; }
        if (++i >= argc || parse_size(argv[i], dst)) usage();
    }
    struct stat st;
    if (!dir || stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "repro7: %s: not an existing directory\n", dir ? dir : "(none)");
        return EXIT_BADINPUT;
    }
    read_pmd_size();
    if (base < HPAGE || app == 0 || app > (64ULL << 20) || iters == 0) {
        fprintf(stderr, "repro7: base-size must be >= the PMD size (%zu MiB here), "
                        "append-size 1..64 MiB, iterations >= 1\n", HPAGE >> 20);
        return EXIT_BADINPUT;
    }

    // Probe: EINVAL on touched, aligned anonymous memory means the kernel does
    // not know MADV_COLLAPSE (< 6.1), which is not the same as refusing files.
    // One page is touched (MADV_COLLAPSE ignores max_ptes_none): a whole 512 MiB
    // PMD would cost that much memory before the collapse doubles it.
    unsigned char *anon = mmap(NULL, 2 * HPAGE, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (anon == MAP_FAILED) die("mmap anon");
    unsigned char *a2 = (unsigned char *)(((uintptr_t)anon + HPAGE - 1) & ~(HPAGE - 1));
    memset(a2, 1, (size_t)sysconf(_SC_PAGESIZE));
    if (madvise(a2, HPAGE, MADV_COLLAPSE) && errno == EINVAL) {
        printf("COLLAPSE_UNSUPPORTED errno=EINVAL step=0\n");
        return EXIT_UNSUPPORTED;
    }
    munmap(anon, 2 * HPAGE);

    static char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/repro7.%d.dat", dir, (int)getpid());
    size_t chunk = 1 << 20;
    unsigned char *base_chunk = malloc(chunk), *want = malloc(app);
    g_buf = malloc(app);
    if (!base_chunk || !want || !g_buf) die("malloc");
    fill(base_chunk, chunk, 1);
    printf("path=%s base_size=%llu append_size=%llu iters=%llu\n", path, base, app, iters);
    fflush(stdout);

    // 1. base file: non-zero data, fsync'd so it is clean (once; each iteration
    //    then appends anew at the current end of file).
    g_file = path;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) die("create");
    for (unsigned long long off = 0; off < base; off += chunk) {
        size_t n = base - off < chunk ? (size_t)(base - off) : chunk;
        write_all(fd, base_chunk, n, "write base");
    }
    if (fsync(fd)) die("fsync");
    close(fd);

    int prot = PROT_READ, losses = 0;
    unsigned long long it, end = base;
    for (it = 0; it < iters; it++) {
        // 2. collapse the file's head read-only, no writer open. The first time,
        //    EINVAL with PROT_READ is retried with PROT_READ|PROT_EXEC (5.14-6.7
        //    collapse only exec file mappings); EINVAL then means unsupported.
        //    Later iterations retry transient errors like step 5.
        int rc = collapse_at(path, 0, prot);
        if (it == 0 && rc == EINVAL && prot == PROT_READ) {
            prot = PROT_READ | PROT_EXEC;
            rc = collapse_at(path, 0, prot);
        }
        if (it == 0 && rc == EINVAL) {
            unlink(path);
            printf("COLLAPSE_UNSUPPORTED errno=EINVAL step=2\n");
            return EXIT_UNSUPPORTED;
        }
        for (int t = 1; t < STEP5_TRIES && (rc == EINVAL || rc == EAGAIN); t++)
            rc = collapse_at(path, 0, prot);
        if (rc && rc != EINVAL && rc != EAGAIN) { errno = rc; die("madvise collapse step 2"); }

        // 3-4. append non-zero data, leave it dirty, close.
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd < 0) die("open append");
        fill(want, app, 0x10000u + (uint32_t)it);
        write_all(fd, want, app, "append");
        close(fd);
        unsigned long long append_off = end;
        end += app;

        // 5. re-collapse the head, away from the dirty tail.
        rc = EINVAL;
        for (int t = 0; t < STEP5_TRIES && (rc == EINVAL || rc == EAGAIN); t++)
            rc = collapse_at(path, 0, prot);
        if (rc && rc != EINVAL && rc != EAGAIN) { errno = rc; die("madvise collapse step 5"); }
        if (rc)
            fprintf(stderr, "note: iter=%llu step 5 collapse gave %s %d times\n", it,
                    strerrorname_np(rc), STEP5_TRIES);

        // 6. open for write: the kernel's purge runs here.
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) die("open write step 6");
        close(fd);

        // 7. read the appended bytes back on a fresh fd and compare.
        unsigned char *got = g_buf;
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die("open read");
        size_t n = 0;
        while (n < app) {
            ssize_t r = pread(fd, got + n, app - n, (off_t)(append_off + n));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) die("read back");
            if (r == 0) break;
            n += (size_t)r;
        }
        close(fd);
        memset(got + n, 0, app - n);  // a short file counts as lost bytes
        unsigned long long bad = 0, zeros = 0, first = ULLONG_MAX;
        for (size_t i = 0; i < app; i++) {
            if (got[i] != want[i]) { bad++; if (first == ULLONG_MAX) first = i; }
            if (got[i] == 0) zeros++;
        }
        if (bad) {
            printf("REPRODUCED iter=%llu bad_bytes=%llu first_bad=%llu zero_count=%llu "
                   "append_off=%llu\n", it, bad, first, zeros, append_off);
            if (!losses++) {
                size_t k = app < 64 ? app : 64;
                printf("first 64 got:");
                for (size_t i = 0; i < k; i++) printf(" %02x", got[i]);
                printf("\nfirst 64 want:");
                for (size_t i = 0; i < k; i++) printf(" %02x", want[i]);
                printf("\n");
            }
            fflush(stdout);
            if (!keep_going) break;
        }
    }
    if (unlink(path)) die("unlink");
    g_file = NULL;
    if (losses) {
        if (keep_going)
            printf("SUMMARY lost_iterations=%d iters=%llu\n", losses, iters);
        return EXIT_REPRO;
    }
    printf("NOT_REPRODUCED iters=%llu\n", iters);
    return EXIT_NOT_REPRO;
}
