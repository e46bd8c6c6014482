/*
 * RADIUS accounting load generator for bench/bench_collector.py: many Accounting-Requests in
 * flight over several UDP sockets, sendmmsg/recvmmsg, one thread, no libraries beyond libc.
 *
 * Why C: radclient and a Python generator run out of CPU long before the servers under test
 * do (issue 3). The RADIUS Identifier is 8 bits, so each socket carries at most 256 requests
 * in flight; more sockets give a larger window.
 *
 * Every request is distinct (its own Acct-Session-Id/counters/Event-Timestamp), so a server
 * that keeps one record per fact must keep exactly `count` records. A request unanswered after
 * --timeout-ms is sent again from the same socket and Identifier with Acct-Delay-Time raised and
 * the Request Authenticator re-signed, as a NAS does; a response is accepted when its Response
 * Authenticator verifies against any transmission of that request. Latency is measured from the
 * first transmission to the verified response.
 *
 *   loadgen --port 1813 --secret s --count 200000 --window 4096 --sockets 32 --mode interim
 *   loadgen ... --mode burst    (count/2 Stops of old sessions + count/2 Starts, a BNG reboot)
 *
 * The last line of output is machine-readable:
 *   LOADGEN mode=... sent=... acked=... retransmits=... unanswered=... stale=... bad=...
 *           duration_s=... pps=... p50_ms=... p99_ms=... max_ms=...
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- MD5 (RFC 1321), written for this file; public domain ------------------------------ */

static const uint32_t MD5_K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
    0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
    0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
    0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
    0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
    0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
    0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391,
};
static const uint8_t MD5_R[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9,  14, 20, 5, 9,
    14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
};

static void md5_block(uint32_t h[4], const uint8_t *p) {
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[i * 4] | (uint32_t)p[i * 4 + 1] << 8 | (uint32_t)p[i * 4 + 2] << 16 |
               (uint32_t)p[i * 4 + 3] << 24;
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
        } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) & 15;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) & 15;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) & 15;
        }
        uint32_t t = d;
        d = c;
        c = b;
        uint32_t x = a + f + MD5_K[i] + w[g];
        b = b + (x << MD5_R[i] | x >> (32 - MD5_R[i]));
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
}

static void md5(const uint8_t *data, size_t len, uint8_t out[16]) {
    uint32_t h[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    size_t i = 0;
    for (; i + 64 <= len; i += 64) md5_block(h, data + i);
    uint8_t tail[128] = {0};
    size_t rest = len - i;
    memcpy(tail, data + i, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int k = 0; k < 8; k++) tail[tail_len - 8 + k] = (uint8_t)(bits >> (8 * k));
    md5_block(h, tail);
    if (tail_len == 128) md5_block(h, tail + 64);
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++) out[k * 4 + j] = (uint8_t)(h[k] >> (8 * j));
}

/* ---- RADIUS packets -------------------------------------------------------------------- */

enum { ACCOUNTING_REQUEST = 4, ACCOUNTING_RESPONSE = 5 };
enum { STATUS_START = 1, STATUS_STOP = 2, STATUS_INTERIM = 3 };
enum { MODE_INTERIM, MODE_BURST };

#define MAX_PACKET 512
#define MAX_SECRET 128
#define MAX_SENDS 8
#define MAX_SOCKETS 256

static char opt_host[64] = "127.0.0.1";
static int opt_port = 1813;
static char opt_secret[MAX_SECRET] = "testing123";
static size_t secret_len;
static long opt_count = 10000;
static int opt_window = 4096;
static int opt_sockets = 32;
static int opt_mode = MODE_INTERIM;
static int opt_timeout_ms = 3000;
static int opt_retries = 5;
static long opt_sessions = 10000;
static char opt_prefix[48] = "lg";
static uint32_t opt_event_time;
static double opt_max_seconds = 600;
static int opt_rcvbuf = 4 << 20;

typedef struct {
    uint8_t buf[MAX_PACKET];
    uint16_t len;
    uint8_t in_flight;
    uint8_t sends;
    uint8_t auths[MAX_SENDS][16];
    uint32_t index;
    double first_sent;
    double last_sent;
} slot_t;

typedef struct {
    int fd;
    int in_flight;
    int nfree;
    uint8_t free_ids[256];
    slot_t slots[256];
    int nout;
    struct mmsghdr out[256];
    struct iovec outv[256];
} sock_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint8_t *put_attr(uint8_t *p, uint8_t type, const void *value, size_t len) {
    p[0] = type;
    p[1] = (uint8_t)(len + 2);
    memcpy(p + 2, value, len);
    return p + 2 + len;
}

static uint8_t *put_int(uint8_t *p, uint8_t type, uint32_t value) {
    uint32_t be = htonl(value);
    return put_attr(p, type, &be, 4);
}

/* The request for packet `index`, with the given Acct-Delay-Time, signed (RFC 2866 3). */
static void build_request(slot_t *s, uint8_t id, uint32_t delay) {
    uint8_t *pkt = s->buf;
    uint8_t *p = pkt + 20;
    char text[96];
    uint32_t index = s->index;
    uint32_t status, session_time, in_octets, out_octets, in_packets, out_packets, event_time;
    int n;
    if (opt_mode == MODE_INTERIM) {
        /* Sessions take turns; each turn reports larger counters: every request is a new fact. */
        uint32_t session = (uint32_t)(index % (uint32_t)opt_sessions);
        uint32_t round = (uint32_t)(index / (uint32_t)opt_sessions) + 1;
        status = STATUS_INTERIM;
        n = snprintf(text, sizeof text, "%s-%u", opt_prefix, session);
        session_time = 300 * round;
        in_octets = round * 1048576u + session;
        out_octets = round * 4194304u + session;
        in_packets = round * 1000u + session % 1000u;
        out_packets = round * 3000u + session % 1000u;
        event_time = opt_event_time + 300 * round;
    } else {
        /* A BNG reboot: the Stop of each old session, then the Start of its replacement. */
        uint32_t pair = index / 2;
        int stop = (index % 2) == 0;
        status = stop ? STATUS_STOP : STATUS_START;
        n = snprintf(text, sizeof text, "%s-%s-%u", opt_prefix, stop ? "old" : "new", pair);
        session_time = stop ? 3600 + pair % 3600 : 0;
        in_octets = stop ? 100000u + pair : 0;
        out_octets = stop ? 900000u + pair : 0;
        in_packets = stop ? 1000u + pair % 1000u : 0;
        out_packets = stop ? 3000u + pair % 1000u : 0;
        event_time = opt_event_time + (stop ? 0 : 30);
    }
    char user[32];
    int user_len = snprintf(user, sizeof user, "user%u",
                            (unsigned)(opt_mode == MODE_INTERIM ? index % (uint32_t)opt_sessions
                                                                : index / 2));
    uint32_t nas_ip = htonl(INADDR_LOOPBACK);
    uint32_t framed = htonl(0x64400000u + (index % 4000000u)); /* 100.64.0.0/10 */
    p = put_attr(p, 1, user, (size_t)user_len);                /* User-Name */
    p = put_attr(p, 4, &nas_ip, 4);                             /* NAS-IP-Address */
    p = put_int(p, 40, status);                                 /* Acct-Status-Type */
    p = put_attr(p, 44, text, (size_t)n);                       /* Acct-Session-Id */
    p = put_attr(p, 8, &framed, 4);                             /* Framed-IP-Address */
    p = put_int(p, 46, session_time);                           /* Acct-Session-Time */
    p = put_int(p, 42, in_octets);                              /* Acct-Input-Octets */
    p = put_int(p, 43, out_octets);                             /* Acct-Output-Octets */
    p = put_int(p, 47, in_packets);                             /* Acct-Input-Packets */
    p = put_int(p, 48, out_packets);                            /* Acct-Output-Packets */
    p = put_int(p, 55, event_time);                             /* Event-Timestamp */
    p = put_int(p, 41, delay);                                  /* Acct-Delay-Time */
    if (status == STATUS_STOP) p = put_int(p, 49, 11);          /* Acct-Terminate-Cause NAS-Reboot */
    uint16_t len = (uint16_t)(p - pkt);
    pkt[0] = ACCOUNTING_REQUEST;
    pkt[1] = id;
    pkt[2] = (uint8_t)(len >> 8);
    pkt[3] = (uint8_t)len;
    memset(pkt + 4, 0, 16);
    uint8_t signing[MAX_PACKET + MAX_SECRET];
    memcpy(signing, pkt, len);
    memcpy(signing + len, opt_secret, secret_len);
    md5(signing, len + secret_len, pkt + 4);
    s->len = len;
    memcpy(s->auths[s->sends < MAX_SENDS ? s->sends : MAX_SENDS - 1], pkt + 4, 16);
}

/* Response Authenticator = MD5(Code+ID+Length+RequestAuth+Attributes+Secret) (RFC 2866 3). */
static int response_verifies(const uint8_t *resp, size_t len, const uint8_t request_auth[16]) {
    uint8_t signing[MAX_PACKET + MAX_SECRET];
    if (len > MAX_PACKET) return 0;
    memcpy(signing, resp, len);
    memcpy(signing + 4, request_auth, 16);
    memcpy(signing + len, opt_secret, secret_len);
    uint8_t digest[16];
    md5(signing, len + secret_len, digest);
    return memcmp(digest, resp + 4, 16) == 0;
}

/* ---- the run --------------------------------------------------------------------------- */

static sock_t *socks;
static int per_socket_cap;
static uint32_t *latency_us;
static long acked, unanswered, retransmits, sent, stale, bad, send_errors;
static long in_flight_total;

static void queue_send(sock_t *k, slot_t *s) {
    k->outv[k->nout].iov_base = s->buf;
    k->outv[k->nout].iov_len = s->len;
    memset(&k->out[k->nout].msg_hdr, 0, sizeof k->out[k->nout].msg_hdr);
    k->out[k->nout].msg_hdr.msg_iov = &k->outv[k->nout];
    k->out[k->nout].msg_hdr.msg_iovlen = 1;
    k->nout++;
}

static void flush(sock_t *k) {
    int done = 0;
    while (done < k->nout) {
        int r = sendmmsg(k->fd, k->out + done, (unsigned)(k->nout - done), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            /* ECONNREFUSED (nobody listening yet) and friends: the timeout resends it. */
            send_errors++;
            done++;
            continue;
        }
        done += r;
    }
    k->nout = 0;
}

static void release(sock_t *k, uint8_t id) {
    k->slots[id].in_flight = 0;
    k->free_ids[k->nfree++] = id;
    k->in_flight--;
    in_flight_total--;
}

static void receive(sock_t *k, double now) {
    enum { VLEN = 256, RBUF = 256 };
    static uint8_t bufs[VLEN][RBUF];
    static struct mmsghdr msgs[VLEN];
    static struct iovec iovs[VLEN];
    for (;;) {
        for (int i = 0; i < VLEN; i++) {
            iovs[i].iov_base = bufs[i];
            iovs[i].iov_len = RBUF;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(k->fd, msgs, VLEN, MSG_DONTWAIT, NULL);
        if (r < 0 && errno == ECONNREFUSED) continue; /* the error is cleared; read again */
        if (r <= 0) return;
        for (int i = 0; i < r; i++) {
            const uint8_t *resp = bufs[i];
            size_t len = msgs[i].msg_len;
            if (len < 20 || resp[0] != ACCOUNTING_RESPONSE || ((size_t)resp[2] << 8 | resp[3]) != len) {
                bad++;
                continue;
            }
            slot_t *s = &k->slots[resp[1]];
            if (!s->in_flight) {
                stale++; /* the answer to a retransmission we already had an answer for */
                continue;
            }
            int ok = 0;
            int sends = s->sends < MAX_SENDS ? s->sends : MAX_SENDS;
            for (int a = 0; a < sends && !ok; a++) ok = response_verifies(resp, len, s->auths[a]);
            if (!ok) {
                bad++;
                continue;
            }
            double us = (now - s->first_sent) * 1e6;
            latency_us[acked++] = us > 4e9 ? 4000000000u : (uint32_t)us;
            release(k, resp[1]);
        }
        if (r < VLEN) return;
    }
}

static void check_timeouts(double now) {
    double timeout = opt_timeout_ms / 1000.0;
    for (int i = 0; i < opt_sockets; i++) {
        sock_t *k = &socks[i];
        if (!k->in_flight) continue;
        for (int id = 0; id < 256; id++) {
            slot_t *s = &k->slots[id];
            if (!s->in_flight || now - s->last_sent < timeout) continue;
            if (s->sends > opt_retries) {
                unanswered++;
                release(k, (uint8_t)id);
                continue;
            }
            uint32_t delay = (uint32_t)(now - s->first_sent + 0.5);
            build_request(s, (uint8_t)id, delay ? delay : 1);
            s->sends++;
            s->last_sent = now;
            retransmits++;
            queue_send(k, s);
        }
        if (k->nout) flush(k);
    }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_ms(const uint32_t *sorted, long n, double q) {
    if (n == 0) return 0;
    long i = (long)(q * (double)(n - 1) + 0.5);
    return sorted[i] / 1000.0;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--host 127.0.0.1] [--port 1813] [--secret S] [--count N] [--window W]\n"
            "          [--sockets K] [--mode interim|burst] [--timeout-ms 3000] [--retries 5]\n"
            "          [--sessions 10000] [--prefix lg] [--event-time UNIX] [--max-seconds 600]\n",
            argv0);
    exit(2);
}

static void parse(int argc, char **argv) {
    static struct option options[] = {
        {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},     {"secret", 1, 0, 's'},
        {"count", 1, 0, 'n'},    {"window", 1, 0, 'w'},   {"sockets", 1, 0, 'k'},
        {"mode", 1, 0, 'm'},     {"timeout-ms", 1, 0, 't'}, {"retries", 1, 0, 'r'},
        {"sessions", 1, 0, 'S'}, {"prefix", 1, 0, 'P'},   {"event-time", 1, 0, 'e'},
        {"max-seconds", 1, 0, 'M'}, {"rcvbuf", 1, 0, 'b'}, {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (c) {
        case 'h': snprintf(opt_host, sizeof opt_host, "%s", optarg); break;
        case 'p': opt_port = atoi(optarg); break;
        case 's': snprintf(opt_secret, sizeof opt_secret, "%s", optarg); break;
        case 'n': opt_count = atol(optarg); break;
        case 'w': opt_window = atoi(optarg); break;
        case 'k': opt_sockets = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "interim")) opt_mode = MODE_INTERIM;
            else if (!strcmp(optarg, "burst")) opt_mode = MODE_BURST;
            else usage(argv[0]);
            break;
        case 't': opt_timeout_ms = atoi(optarg); break;
        case 'r': opt_retries = atoi(optarg); break;
        case 'S': opt_sessions = atol(optarg); break;
        case 'P': snprintf(opt_prefix, sizeof opt_prefix, "%s", optarg); break;
        case 'e': opt_event_time = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'M': opt_max_seconds = atof(optarg); break;
        case 'b': opt_rcvbuf = atoi(optarg); break;
        default: usage(argv[0]);
        }
    }
    secret_len = strlen(opt_secret);
    if (opt_sockets < 1 || opt_sockets > MAX_SOCKETS || opt_window < 1 || opt_count < 1 ||
        opt_sessions < 1 || opt_retries < 0 || opt_retries > MAX_SENDS - 1 || !secret_len)
        usage(argv[0]);
    if (opt_mode == MODE_BURST && opt_count % 2) opt_count++;
    if (!opt_event_time) opt_event_time = (uint32_t)time(NULL) - 86400;
}

int main(int argc, char **argv) {
    parse(argc, argv);
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    if (inet_pton(AF_INET, opt_host, &server.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad --host %s\n", opt_host);
        return 2;
    }
    socks = calloc((size_t)opt_sockets, sizeof *socks);
    latency_us = calloc((size_t)opt_count, sizeof *latency_us);
    struct pollfd *pfds = calloc((size_t)opt_sockets, sizeof *pfds);
    if (!socks || !latency_us || !pfds) {
        perror("calloc");
        return 1;
    }
    per_socket_cap = (opt_window + opt_sockets - 1) / opt_sockets;
    if (per_socket_cap > 256) per_socket_cap = 256;
    for (int i = 0; i < opt_sockets; i++) {
        sock_t *k = &socks[i];
        k->fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (k->fd < 0) {
            perror("socket");
            return 1;
        }
        if (setsockopt(k->fd, SOL_SOCKET, SO_RCVBUFFORCE, &opt_rcvbuf, sizeof opt_rcvbuf) < 0)
            setsockopt(k->fd, SOL_SOCKET, SO_RCVBUF, &opt_rcvbuf, sizeof opt_rcvbuf);
        if (connect(k->fd, (struct sockaddr *)&server, sizeof server) < 0) {
            perror("connect");
            return 1;
        }
        /* Identifiers in a shuffled-free order is not needed: any order is a valid NAS. */
        for (int id = 255; id >= 0; id--) k->free_ids[k->nfree++] = (uint8_t)id;
        pfds[i].fd = k->fd;
        pfds[i].events = POLLIN;
    }

    long next = 0;
    int rr = 0;
    double started = now_s(), last_ack = started, last_scan = started;
    double deadline = started + opt_max_seconds;
    while (acked + unanswered < opt_count) {
        double now = now_s();
        if (now > deadline) {
            fprintf(stderr, "loadgen: --max-seconds reached\n");
            break;
        }
        /* Fill the window, spreading new requests over the sockets. */
        int idle = 0;
        while (next < opt_count && in_flight_total < opt_window && idle < opt_sockets) {
            sock_t *k = &socks[rr];
            rr = (rr + 1) % opt_sockets;
            if (k->in_flight >= per_socket_cap || !k->nfree) {
                idle++;
                continue;
            }
            idle = 0;
            uint8_t id = k->free_ids[--k->nfree];
            slot_t *s = &k->slots[id];
            s->index = (uint32_t)next++;
            s->sends = 0;
            build_request(s, id, 0);
            s->sends = 1;
            s->in_flight = 1;
            s->first_sent = s->last_sent = now;
            k->in_flight++;
            in_flight_total++;
            sent++;
            queue_send(k, s);
            if (k->nout == 256) flush(k);
        }
        for (int i = 0; i < opt_sockets; i++)
            if (socks[i].nout) flush(&socks[i]);

        int ready = poll(pfds, (nfds_t)opt_sockets, 5);
        now = now_s();
        if (ready > 0) {
            long before = acked;
            for (int i = 0; i < opt_sockets; i++)
                /* POLLERR: an ICMP port unreachable (no server yet); recvmmsg clears it. */
                if (pfds[i].revents & (POLLIN | POLLERR)) receive(&socks[i], now);
            if (acked > before) last_ack = now;
        }
        if (now - last_scan > 0.05) {
            check_timeouts(now);
            last_scan = now;
        }
    }
    double duration = last_ack - started;
    qsort(latency_us, (size_t)acked, sizeof *latency_us, cmp_u32);
    printf("LOADGEN mode=%s sent=%ld acked=%ld retransmits=%ld unanswered=%ld stale=%ld bad=%ld "
           "send_errors=%ld window=%d sockets=%d duration_s=%.3f pps=%.0f p50_ms=%.3f p99_ms=%.3f "
           "max_ms=%.3f\n",
           opt_mode == MODE_INTERIM ? "interim" : "burst", sent, acked, retransmits,
           unanswered + (opt_count - acked - unanswered), stale, bad, send_errors,
           per_socket_cap * opt_sockets < opt_window ? per_socket_cap * opt_sockets : opt_window,
           opt_sockets, duration, duration > 0 ? (double)acked / duration : 0.0,
           percentile_ms(latency_us, acked, 0.50), percentile_ms(latency_us, acked, 0.99),
           acked ? latency_us[acked - 1] / 1000.0 : 0.0);
    return acked == opt_count ? 0 : 1;
}
