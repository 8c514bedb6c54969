/* aoefloor: a minimal batched AoE responder and a batched sequential reader.
 *
 * Written for the benchmark only (tools/bench builds it with the system compiler into a
 * scratch directory; it is never installed). The reader measures a target's capacity
 * without pyaoe's initiator in the way; the responder, read by the same reader, is the
 * floor: what a userspace AoE pair reaches on this kernel with batched system calls.
 *
 *   aoefloor serve IFACE SHELF SLOT FILE         answer Query Config, IDENTIFY, READ/WRITE EXT
 *   aoefloor serve-copy IFACE SHELF SLOT FILE    the same, but each read's data is pread into
 *                                                 a buffer first (two copies per byte, as
 *                                                 aoe serve and vblade do) instead of being
 *                                                 sent straight from a mapping of FILE
 *   aoefloor read IFACE SHELF SLOT BYTES [WINDOW [OUT]]
 *                                                 read BYTES from sector 0; prints
 *                                                 "bytes seconds retransmits"; with OUT,
 *                                                 each batch's data is also written to
 *                                                 that file at its offset (pwritev of the
 *                                                 runs of consecutive sectors, straight
 *                                                 from the receive buffers)
 *
 * Frames: Ethernet (14) + AoE (10) + ATA (12) = 36 header bytes, then data.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define ETH_P_AOE 0x88A2
#define BATCH 64
#define HDR 36
#define FRAME 9216
#define MAXWIN 1024
/* The reader resends after this much silence. A target capped at 25 % of a 100 ms CFS
   period may be held for 75 ms at a time; a shorter silence would resend whole windows
   to a target that is only waiting for its quota, and measure the timer, not the target. */
#define SILENCE_MS 250
#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

struct aoe {
    uint8_t dst[6], src[6];
    uint16_t type;
    uint8_t verfl, err;
    uint16_t major;
    uint8_t minor, cmd;
    uint32_t tag;
    uint8_t aflags, feature, count, status;
    uint8_t lba[6];
    uint8_t res[2];
} __attribute__((packed));

static int ifindex, mtu;
static uint8_t mymac[6];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int open_sock(const char *iface) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_AOE));
    if (s < 0) die("socket");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", iface);
    if (ioctl(s, SIOCGIFINDEX, &ifr) < 0) die(iface);
    ifindex = ifr.ifr_ifindex;
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) die("SIOCGIFHWADDR");
    memcpy(mymac, ifr.ifr_hwaddr.sa_data, 6);
    if (ioctl(s, SIOCGIFMTU, &ifr) < 0) die("SIOCGIFMTU");
    mtu = ifr.ifr_mtu;
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_AOE),
                              .sll_ifindex = ifindex};
    if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind");
    int one = 1, big = 8 << 20;
    setsockopt(s, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    return s;
}

static uint64_t get_lba(const struct aoe *h) {
    uint64_t v = 0;
    for (int i = 5; i >= 0; i--) v = v << 8 | h->lba[i];
    return v;
}

static void put_lba(struct aoe *h, uint64_t v) {
    for (int i = 0; i < 6; i++, v >>= 8) h->lba[i] = v & 0xff;
}

/* Send the first n prepared messages, in as many calls as the kernel needs. */
static void send_all(int s, struct mmsghdr *smsg, int n) {
    for (int done = 0; done < n;) {
        int k = sendmmsg(s, smsg + done, n - done, 0);
        if (k < 0) {
            if (errno == EINTR || errno == ENOBUFS) continue;
            die("sendmmsg");
        }
        done += k;
    }
}

/* ---- responder ---------------------------------------------------------------------- */

static _Noreturn void serve(const char *iface, int shelf, int slot, const char *path,
                            int copy) {
    int s = open_sock(iface);
    int fd = open(path, O_RDWR);
    if (fd < 0) die(path);
    struct stat st;
    fstat(fd, &st);
    uint64_t sectors = st.st_size / 512;
    uint8_t *disk = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (disk == MAP_FAILED) die("mmap");
    static uint8_t rx[BATCH][FRAME], tx[BATCH][HDR + 512];
    struct mmsghdr rmsg[BATCH], smsg[BATCH];
    struct iovec riov[BATCH], siov[BATCH][2];
    memset(rmsg, 0, sizeof rmsg);
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = rx[i];
        riov[i].iov_len = FRAME;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
    }
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = ifindex,
                             .sll_halen = 6};
    int maxsec = (mtu - HDR) / 512;
    if (maxsec > 255) maxsec = 255;
    fprintf(stdout, "ready\n");
    fflush(stdout);
    for (;;) {
        int n = recvmmsg(s, rmsg, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("recvmmsg");
        }
        int out = 0;
        for (int i = 0; i < n; i++) {
            struct aoe *q = (struct aoe *)rx[i];
            unsigned len = rmsg[i].msg_len;
            if (len < 24 || ntohs(q->type) != ETH_P_AOE || (q->verfl & 0x08)) continue;
            unsigned major = ntohs(q->major);
            if ((major != (unsigned)shelf && major != 0xffff) ||
                (q->minor != slot && q->minor != 0xff))
                continue;
            struct aoe *r = (struct aoe *)tx[out];
            memcpy(r, q, HDR);
            memcpy(r->dst, q->src, 6);
            memcpy(r->src, mymac, 6);
            r->verfl = 0x18;
            r->err = 0;
            r->major = htons(shelf);
            r->minor = slot;
            struct iovec *v = siov[out];
            v[0].iov_base = r;
            v[1].iov_len = 0;
            int nv = 1;
            if (q->cmd == 1) { /* Query Config: buffer count, firmware, max sectors, version */
                uint8_t *c = (uint8_t *)r + 24;
                memset(c, 0, 8);
                c[0] = 0, c[1] = 64, c[4] = maxsec, c[5] = 0x10;
                v[0].iov_len = 24 + 8;
            } else if (q->cmd == 0 && len >= HDR) {
                uint64_t lba = get_lba(q);
                if (!(q->aflags & 0x40)) lba &= 0x0fffffff; /* LBA28: byte 3 high nibble is the device register */
                unsigned cnt = q->count;
                v[0].iov_len = HDR;
                r->status = 0x40;
                r->feature = 0;
                if (q->status == 0xEC) { /* IDENTIFY DEVICE */
                    uint16_t *id = (uint16_t *)((uint8_t *)r + HDR);
                    memset(id, 0, 512);
                    id[49] = 1 << 9, id[83] = 1 << 14 | 1 << 10, id[86] = 1 << 10;
                    for (int k = 0; k < 4; k++) id[100 + k] = (sectors >> (16 * k)) & 0xffff;
                    id[60] = sectors & 0xffff, id[61] = (sectors >> 16) & 0xffff;
                    v[0].iov_len = HDR + 512;
                } else if ((q->status == 0x24 || q->status == 0x20) && lba + cnt <= sectors &&
                           (int)cnt <= maxsec) {
                    v[1].iov_base = disk + lba * 512;
                    v[1].iov_len = cnt * 512;
                    nv = 2;
                    if (copy) {
                        static uint8_t data[BATCH][FRAME];
                        ssize_t want = (ssize_t)(cnt * 512);
                        if (pread(fd, data[out], want, (off_t)(lba * 512)) != want)
                            die("pread");
                        v[1].iov_base = data[out];
                    }
                } else if ((q->status == 0x34 || q->status == 0x30) && lba + cnt <= sectors &&
                           len >= HDR + cnt * 512) {
                    memcpy(disk + lba * 512, rx[i] + HDR, cnt * 512);
                    r->count = 0;
                } else if (q->status == 0xE7 || q->status == 0xEA) { /* FLUSH CACHE */
                } else {
                    r->status = 0x41, r->feature = 0x04; /* ERR, ABRT */
                }
            } else {
                r->verfl |= 0x04, r->err = 1; /* unrecognised command */
                v[0].iov_len = 24;
            }
            memset(&smsg[out], 0, sizeof smsg[out]);
            smsg[out].msg_hdr.msg_iov = v;
            smsg[out].msg_hdr.msg_iovlen = nv;
            smsg[out].msg_hdr.msg_name = &to;
            smsg[out].msg_hdr.msg_namelen = sizeof to;
            memcpy(to.sll_addr, q->src, 6);
            out++;
        }
        send_all(s, smsg, out);
    }
}

/* ---- reader ------------------------------------------------------------------------- */

struct slot {
    uint64_t lba;
    unsigned count;
    uint32_t tag;
    int busy;
};

static int find_target(int s, int shelf, int slot, uint8_t mac[6]) {
    uint8_t f[60], rx[FRAME];
    memset(f, 0, sizeof f);
    struct aoe *h = (struct aoe *)f;
    memset(h->dst, 0xff, 6);
    memcpy(h->src, mymac, 6);
    h->type = htons(ETH_P_AOE);
    h->verfl = 0x10, h->major = htons(shelf), h->minor = slot, h->cmd = 1;
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = 6};
    memset(to.sll_addr, 0xff, 6);
    for (int tries = 0; tries < 50; tries++) {
        sendto(s, f, sizeof f, 0, (struct sockaddr *)&to, sizeof to);
        struct pollfd p = {.fd = s, .events = POLLIN};
        double end = now() + 0.1;
        while (now() < end && poll(&p, 1, 20) >= 0) {
            ssize_t n = recv(s, rx, sizeof rx, MSG_DONTWAIT);
            struct aoe *r = (struct aoe *)rx;
            if (n >= 24 && (r->verfl & 0x08) && r->cmd == 1 && ntohs(r->major) == shelf &&
                r->minor == slot) {
                memcpy(mac, r->src, 6);
                int maxsec = rx[24 + 4];
                return maxsec ? maxsec : 2;
            }
        }
    }
    fprintf(stderr, "no answer from %d.%d\n", shelf, slot);
    exit(1);
}

/* Runs of consecutive sectors received in one batch, written with one pwritev each. */
struct output {
    int fd;
    uint64_t start, end; /* byte range of the run gathered so far */
    int n;
    struct iovec iov[BATCH];
};

static void out_flush(struct output *o) {
    if (o->n == 0)
        return;
    uint64_t left = o->end - o->start, at = o->start;
    struct iovec *v = o->iov;
    int n = o->n;
    while (left) {
        ssize_t w = pwritev(o->fd, v, n, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("pwritev");
        left -= (uint64_t)w, at += (uint64_t)w;
        while (n && (size_t)w >= v->iov_len) w -= (ssize_t)v->iov_len, v++, n--;
        if (n) v->iov_base = (uint8_t *)v->iov_base + w, v->iov_len -= (size_t)w;
    }
    o->n = 0;
}

static void out_add(struct output *o, uint64_t at, void *data, size_t len) {
    if (o->n && (at != o->end || o->n == BATCH))
        out_flush(o);
    if (o->n == 0)
        o->start = o->end = at;
    o->iov[o->n].iov_base = data;
    o->iov[o->n].iov_len = len;
    o->n++;
    o->end += len;
}

static int reader(const char *iface, int shelf, int slot, uint64_t bytes, int window,
                  const char *path) {
    static struct output sink = {.fd = -1};
    if (path && (sink.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0)
        die("open");
    int s = open_sock(iface);
    uint8_t mac[6];
    int maxsec = find_target(s, shelf, slot, mac);
    int persec = (mtu - HDR) / 512;
    if (persec > maxsec) persec = maxsec;
    if (persec > 255) persec = 255;
    if (persec < 1) persec = 1;
    if (window > MAXWIN) window = MAXWIN;
    uint64_t total = bytes / 512, next = 0, done = 0;
    static struct slot slots[MAXWIN];
    static uint8_t txh[MAXWIN][HDR], rx[BATCH][FRAME];
    struct mmsghdr rmsg[BATCH], smsg[MAXWIN];
    struct iovec riov[BATCH], siov[MAXWIN];
    memset(rmsg, 0, sizeof rmsg);
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = rx[i];
        riov[i].iov_len = FRAME;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
    }
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = 6};
    memcpy(to.sll_addr, mac, 6);
    uint32_t gen = 1;
    unsigned long retrans = 0;
    int pending[MAXWIN], npend = 0;
    for (int i = 0; i < window; i++) pending[npend++] = i;
    double t0 = now(), last = t0;
    while (done < total) {
        /* fill free slots with the next requests, send them in one call */
        int out = 0;
        for (int k = 0; k < npend; k++) {
            int i = pending[k];
            struct slot *sl = &slots[i];
            if (!sl->busy) {
                if (next >= total) continue;
                sl->lba = next;
                sl->count = total - next < (uint64_t)persec ? (unsigned)(total - next) : (unsigned)persec;
                next += sl->count;
                sl->tag = (gen++ << 10) | i;
                sl->busy = 1;
            }
            struct aoe *h = (struct aoe *)txh[i];
            memset(h, 0, HDR);
            memcpy(h->dst, mac, 6);
            memcpy(h->src, mymac, 6);
            h->type = htons(ETH_P_AOE);
            h->verfl = 0x10, h->major = htons(shelf), h->minor = slot, h->cmd = 0;
            h->tag = htonl(sl->tag);
            h->aflags = 0x40, h->count = sl->count, h->status = 0x24;
            put_lba(h, sl->lba);
            siov[out].iov_base = h;
            siov[out].iov_len = 60; /* the Ethernet minimum: real NICs pad */
            memset(&smsg[out], 0, sizeof smsg[out]);
            smsg[out].msg_hdr.msg_iov = &siov[out];
            smsg[out].msg_hdr.msg_iovlen = 1;
            smsg[out].msg_hdr.msg_name = &to;
            smsg[out].msg_hdr.msg_namelen = sizeof to;
            out++;
        }
        npend = 0;
        send_all(s, smsg, out);
        struct pollfd p = {.fd = s, .events = POLLIN};
        int ready = poll(&p, 1, SILENCE_MS);
        if (ready <= 0) { /* a silence: send every outstanding request again */
            if (now() - last > 30) {
                fprintf(stderr, "target stopped answering\n");
                return 1;
            }
            for (int i = 0; i < window; i++)
                if (slots[i].busy) pending[npend++] = i, retrans++;
            continue;
        }
        int n = recvmmsg(s, rmsg, BATCH, MSG_DONTWAIT, NULL);
        for (int j = 0; j < n; j++) {
            struct aoe *r = (struct aoe *)rx[j];
            if (rmsg[j].msg_len < HDR || !(r->verfl & 0x08) || r->cmd != 0) continue;
            uint32_t tag = ntohl(r->tag);
            int i = tag & 1023;
            if (i >= window || !slots[i].busy || slots[i].tag != tag) continue;
            if ((r->verfl & 0x04) || (r->status & 0x01) ||
                rmsg[j].msg_len < HDR + slots[i].count * 512) {
                fprintf(stderr, "error answer at sector %llu\n",
                        (unsigned long long)slots[i].lba);
                return 1;
            }
            if (sink.fd >= 0)
                out_add(&sink, slots[i].lba * 512, rx[j] + HDR, slots[i].count * 512u);
            done += slots[i].count;
            slots[i].busy = 0;
            pending[npend++] = i;
            last = now();
        }
        if (sink.fd >= 0)
            out_flush(&sink); /* the receive buffers are used again by the next batch */
    }
    if (sink.fd >= 0 && close(sink.fd) < 0)
        die("close");
    printf("%llu %.6f %lu\n", (unsigned long long)(done * 512), now() - t0, retrans);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 6 && (!strcmp(argv[1], "serve") || !strcmp(argv[1], "serve-copy")))
        serve(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5], !strcmp(argv[1], "serve-copy"));
    if (argc >= 6 && !strcmp(argv[1], "read"))
        return reader(argv[2], atoi(argv[3]), atoi(argv[4]), strtoull(argv[5], NULL, 0),
                      argc > 6 ? atoi(argv[6]) : 64, argc > 7 ? argv[7] : NULL);
    fprintf(stderr, "usage: aoefloor serve|serve-copy IFACE SHELF SLOT FILE\n"
                    "       aoefloor read IFACE SHELF SLOT BYTES [WINDOW [OUT]]\n");
    return 2;
}
