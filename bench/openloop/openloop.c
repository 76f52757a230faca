/* Open-loop HTTP/1.1 load at a constant rate, for latency without coordinated omission.
 *
 * Request i is due at start + i / rate, whatever happened to the requests before it. A due
 * request goes out on the first idle keep-alive connection; when all are busy it waits, and
 * that wait counts: latency runs from the scheduled time to the last byte of the response, so
 * a server that stalls for 20 ms shows 20 ms for every request due during the stall, which a
 * closed-loop client (wrk, hey -q) would never have sent.
 *
 * usage: openloop HOST PORT PATH RATE SECONDS CONNECTIONS [TOKENS_FILE]
 * RATE 0: each token once, as fast as the connections go (closed loop; SECONDS is ignored):
 * the bench's first-sight pass, which a Python client would cap.
 * prints: one line "sent=N completed=N errors=N rate=R p50_us=.. p99_us=.. p999_us=.. max_us=.."
 * Tokens, one per line, go out in turn as "Authorization: Bearer ...". Responses must carry
 * Content-Length (fairgate and nginx answer so). Built by bench/openloop.py with gcc -O2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    int busy;
    int64_t due_ns;  /* scheduled time of the request in flight */
    char buf[65536];
    size_t have;
} conn_t;

static struct sockaddr_in addr;
static char **tokens;
static size_t token_count;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int dial(int ep, conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) return -1;  /* blocking: loopback */
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->busy = 0;
    c->have = 0;
    return 0;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void load_tokens(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    size_t cap = 1024;
    tokens = malloc(cap * sizeof *tokens);
    char *line = NULL;
    size_t n = 0;
    ssize_t len;
    while ((len = getline(&line, &n, f)) > 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (token_count == cap) tokens = realloc(tokens, (cap *= 2) * sizeof *tokens);
        tokens[token_count++] = strdup(line);
    }
    free(line);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s HOST PORT PATH RATE SECONDS CONNECTIONS [TOKENS_FILE]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argv[3];
    double rate = atof(argv[4]), seconds = atof(argv[5]);
    int nconn = atoi(argv[6]);
    if (argc > 7) load_tokens(argv[7]);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); return 2; }

    size_t total = rate > 0 ? (size_t)(rate * seconds) : token_count;
    if (!total) { fprintf(stderr, "nothing to send\n"); return 2; }
    int64_t *latency = malloc((total + 1) * sizeof *latency);
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    int ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++)
        if (dial(ep, &conns[i]) < 0) { perror("connect"); return 1; }

    double interval_ns = rate > 0 ? 1e9 / rate : 0;
    size_t next = 0, completed = 0, errors = 0, token = 0;
    int64_t start = now_ns() + 1000000;  /* 1 ms to settle */
    /* 5 s for stragglers; a first-sight pass (rate 0) takes as long as it takes, up to 10 min. */
    int64_t deadline = start + (rate > 0 ? (int64_t)(seconds * 1e9) + 5000000000LL : 600000000000LL);
    char request[8192];
    struct epoll_event events[256];
    size_t finished = 0;
    while (finished < total && now_ns() < deadline) {
        int64_t now = now_ns();
        /* Every due request takes an idle connection; the rest stay due (and keep ageing). */
        for (int i = 0; i < nconn && next < total && start + (int64_t)(next * interval_ns) <= now; i++) {
            conn_t *c = &conns[i];
            if (c->busy) continue;
            int len;
            if (token_count)
                len = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n",
                               path, host, tokens[token++ % token_count]);
            else
                len = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);
            c->due_ns = start + (int64_t)(next * interval_ns);
            next++;
            if (write(c->fd, request, (size_t)len) != len) {  /* a small request fits a fresh socket buffer */
                errors++; finished++;
                close(c->fd); dial(ep, c);
                continue;
            }
            c->busy = 1;
            c->have = 0;
        }
        int idle = 0;
        for (int i = 0; i < nconn && !idle; i++) idle = !conns[i].busy;
        int timeout_ms = 10;  /* all busy: the next response wakes the loop */
        if (next < total && idle) {
            int64_t wait = start + (int64_t)(next * interval_ns) - now_ns();
            timeout_ms = wait <= 0 ? 0 : (int)(wait / 1000000);
        }
        int ready = epoll_wait(ep, events, 256, timeout_ms);
        for (int e = 0; e < ready; e++) {
            conn_t *c = events[e].data.ptr;
            ssize_t got = read(c->fd, c->buf + c->have, sizeof c->buf - c->have - 1);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                if (c->busy) { errors++; finished++; }
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                dial(ep, c);
                continue;
            }
            c->have += (size_t)got;
            c->buf[c->have] = 0;
            char *head_end = strstr(c->buf, "\r\n\r\n");
            if (!head_end) continue;
            char *cl = strcasestr(c->buf, "\r\ncontent-length:");
            size_t body = cl && cl < head_end ? (size_t)strtoul(cl + 17, NULL, 10) : 0;
            size_t need = (size_t)(head_end + 4 - c->buf) + body;
            if (c->have < need) continue;
            int status = atoi(c->buf + 9);
            if (c->busy) {
                if (status >= 200 && status < 400) latency[completed++] = now_ns() - c->due_ns;
                else errors++;
                finished++;
            }
            c->busy = 0;
            c->have = 0;  /* one response per request: nothing follows it */
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    if (rate > 0 && elapsed > seconds && finished == total) elapsed = seconds;  /* the rate of the schedule, not of the tail */
    qsort(latency, completed, sizeof *latency, cmp64);
#define PCT(p) (completed ? latency[(size_t)((double)(completed - 1) * (p))] / 1000 : -1)
    printf("sent=%zu completed=%zu errors=%zu unfinished=%zu rate=%.1f p50_us=%lld p99_us=%lld p999_us=%lld max_us=%lld\n",
           next, completed, errors, total - finished, (double)completed / elapsed, (long long)PCT(0.50),
           (long long)PCT(0.99), (long long)PCT(0.999), (long long)(completed ? latency[completed - 1] / 1000 : -1));
    return 0;
}
