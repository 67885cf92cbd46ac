// turnload: RTP-rate load through already-made TURN allocations, both directions.
//
// The Python harness (benchmarks/turn) makes K allocations, each with a channel bound to one
// peer address, over UDP sockets it keeps open; it then starts this tool with those sockets
// inherited (so no port can be stolen between set-up and load) and a spec file:
//
//   line 1:        PEER_FD                        the peer socket every channel is bound to
//   lines 2..K+1:  CLIENT_FD CHANNEL RELAY_PORT   one allocation; CLIENT_FD is connected to the server
//
// usage: turnload SPEC RELAY_IP PPS SECONDS SIZE DIR DRAIN
//   DIR: out  = clients send ChannelData to the server, relayed to the peer socket
//        in   = the peer socket sends to every relay port, relayed to the clients as ChannelData
//        both = both at once (a call's two RTP directions)
//   Every stream sends PPS packets/s of SIZE payload bytes (RTP-like: 0x80, then at offset 12 the
//   sequence number, 20 the CLOCK_MONOTONIC send time in ns, 28 the stream id), for SECONDS.
//   The receiver keeps reading DRAIN seconds longer so packets in flight are not counted as lost.
//   A packet counts as received only if it arrives within DRAIN of being sent: later ones are
//   counted as "late" and lost, so that every packet of the run gets the same deadline (a
//   server that queues seconds of traffic instead of dropping it is overloaded all the same,
//   and for RTP a packet that late is lost anyway). Their latency still enters the histogram.
//
// Sending and receiving run in two processes (fork) so that a slow receiver never delays the
// send schedule; the sender reports its counts to the receiver through a pipe. The result is one
// JSON object on stdout. Latency is one-way (same clock, same machine), in an exact histogram
// of 1 us buckets, not a sample.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define HIST_US 1000000 /* latencies above 1 s land in the last bucket */
#define HDR 4          /* ChannelData header */

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void sleep_until(uint64_t t) {
  struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

typedef struct {
  int fd;
  uint16_t channel;
  struct sockaddr_in relay;
} stream_t;

// What the sender tells the receiver when it is done.
typedef struct {
  uint64_t sent[2];     /* [0] out (client -> peer), [1] in (peer -> client) */
  uint64_t errors[2];   /* send calls that failed (EAGAIN/ENOBUFS/...) */
  uint64_t max_lag_ns;  /* how far behind the schedule the sender ever was */
  double cpu_s;         /* sender user+sys CPU seconds */
} sender_report_t;

typedef struct {
  uint64_t count;
  uint64_t hist[HIST_US + 1];
} latency_t;

static void put_payload(unsigned char *p, uint64_t seq, uint64_t ts, uint32_t sid) {
  p[0] = 0x80;
  memcpy(p + 12, &seq, 8);
  memcpy(p + 20, &ts, 8);
  memcpy(p + 28, &sid, 4);
}

static double percentile(const latency_t *l, double q) {
  if (!l->count) return 0;
  uint64_t want = (uint64_t)(q * (double)l->count), acc = 0;
  if (want >= l->count) want = l->count - 1;
  for (int i = 0; i <= HIST_US; i++) {
    acc += l->hist[i];
    if (acc > want) return (double)i;
  }
  return HIST_US;
}

static double max_latency(const latency_t *l) {
  for (int i = HIST_US; i >= 0; i--)
    if (l->hist[i]) return (double)i;
  return 0;
}

static double rusage_cpu(int who) {
  struct rusage ru;
  getrusage(who, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

// Sender: one global round-robin schedule per direction, packet g of a direction belongs to
// stream g % K and is due at t0 + g / (K * PPS), so the K streams are evenly phase-spread
// (as independent calls are) instead of all firing at the same instant.
static void run_sender(stream_t *st, int k, int peer_fd, double pps, double secs, int size,
                       int dir_out, int dir_in, uint64_t t0, int report_fd) {
  sender_report_t rep;
  memset(&rep, 0, sizeof rep);
  uint64_t *seq_out = calloc((size_t)k, 8), *seq_in = calloc((size_t)k, 8);
  static unsigned char out_pkt[2048];
  static unsigned char in_pkt[BATCH][2048];
  struct mmsghdr m[BATCH];
  struct iovec io[BATCH];
  memset(out_pkt, 0, sizeof out_pkt);
  for (int i = 0; i < BATCH; i++) {
    memset(in_pkt[i], 0, (size_t)size);
    io[i].iov_base = in_pkt[i];
    io[i].iov_len = (size_t)size;
    memset(&m[i], 0, sizeof m[i]);
    m[i].msg_hdr.msg_iov = &io[i];
    m[i].msg_hdr.msg_iovlen = 1;
    m[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
  }
  double rate = pps * k;
  uint64_t end = t0 + (uint64_t)(secs * 1e9), total = (uint64_t)(rate * secs);
  uint64_t done_out = 0, done_in = 0;
  int next_out = 0, next_in = 0;
  sleep_until(t0);
  for (;;) {
    uint64_t t = now_ns();
    if (t >= end) break;
    uint64_t due = (uint64_t)((double)(t - t0) / 1e9 * rate);
    if (due > total) due = total;
    int idle = 1;
    if (dir_out && due > done_out) {
      idle = 0;
      uint64_t lag = (uint64_t)((double)(due - done_out) / rate * 1e9);
      if (lag > rep.max_lag_ns) rep.max_lag_ns = lag;
      // One send per packet: each stream has its own socket (as each SIP endpoint would).
      int n = due - done_out > BATCH ? BATCH : (int)(due - done_out);
      for (int i = 0; i < n; i++) {
        stream_t *s = &st[next_out];
        uint16_t ch = htons(s->channel), len = htons((uint16_t)size);
        memcpy(out_pkt, &ch, 2);
        memcpy(out_pkt + 2, &len, 2);
        // Stamp each packet when it is really sent: a sender preempted mid-batch must not
        // charge its own delay to the server.
        put_payload(out_pkt + HDR, seq_out[next_out], now_ns(), (uint32_t)next_out);
        if (send(s->fd, out_pkt, (size_t)(HDR + size), MSG_DONTWAIT) < 0) rep.errors[0]++;
        // A failed send still consumes the slot (the receiver counts it as lost), so a
        // struggling sender cannot hide loss by sending less.
        seq_out[next_out]++;
        done_out++;
        next_out = next_out + 1 == k ? 0 : next_out + 1;
      }
    }
    if (dir_in && due > done_in) {
      idle = 0;
      uint64_t lag = (uint64_t)((double)(due - done_in) / rate * 1e9);
      if (lag > rep.max_lag_ns) rep.max_lag_ns = lag;
      int n = due - done_in > BATCH ? BATCH : (int)(due - done_in);
      for (int i = 0; i < n; i++) {
        put_payload(in_pkt[i], seq_in[next_in], t, (uint32_t)next_in);
        seq_in[next_in]++;
        m[i].msg_hdr.msg_name = &st[next_in].relay;
        next_in = next_in + 1 == k ? 0 : next_in + 1;
      }
      int r = sendmmsg(peer_fd, m, (unsigned)n, 0);
      if (r < n) rep.errors[1] += (uint64_t)(n - (r < 0 ? 0 : r));
      done_in += (uint64_t)n;
    }
    if (idle) {
      // Sleep until a few packets are due rather than waking every few microseconds: each
      // packet is stamped when sent, so coarser pacing costs no accuracy, only CPU we need
      // for the server (the generator shares the machine with it).
      uint64_t ahead = (uint64_t)(rate * 200e-6);
      if (ahead < 1) ahead = 1;
      uint64_t base = dir_out ? done_out : done_in;
      sleep_until(t0 + (uint64_t)((double)(base + ahead) / rate * 1e9));
    }
  }
  rep.sent[0] = done_out;
  rep.sent[1] = done_in;
  rep.cpu_s = rusage_cpu(RUSAGE_SELF);
  if (write(report_fd, &rep, sizeof rep) != (ssize_t)sizeof rep) _exit(1);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: turnload SPEC RELAY_IP PPS SECONDS SIZE out|in|both DRAIN\n");
    return 2;
  }
  double pps = atof(argv[3]), secs = atof(argv[4]), drain = atof(argv[7]);
  int size = atoi(argv[5]);
  if (size < 32) size = 32;
  if (size > 1400) size = 1400;
  int dir_out = !strcmp(argv[6], "out") || !strcmp(argv[6], "both");
  int dir_in = !strcmp(argv[6], "in") || !strcmp(argv[6], "both");
  if (!dir_out && !dir_in) {
    fprintf(stderr, "DIR must be out, in or both\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "r");
  if (!f) {
    perror("spec");
    return 2;
  }
  int peer_fd, k = 0, cap = 1024;
  if (fscanf(f, "%d", &peer_fd) != 1) {
    fprintf(stderr, "spec: no peer fd\n");
    return 2;
  }
  stream_t *st = calloc((size_t)cap, sizeof *st);
  int fd, ch, port;
  while (fscanf(f, "%d %d %d", &fd, &ch, &port) == 3) {
    if (k == cap) {
      cap *= 2;
      st = realloc(st, (size_t)cap * sizeof *st);
    }
    st[k].fd = fd;
    st[k].channel = (uint16_t)ch;
    memset(&st[k].relay, 0, sizeof st[k].relay);
    st[k].relay.sin_family = AF_INET;
    inet_pton(AF_INET, argv[2], &st[k].relay.sin_addr);
    st[k].relay.sin_port = htons((uint16_t)port);
    k++;
  }
  fclose(f);
  if (k == 0) {
    fprintf(stderr, "spec: no streams\n");
    return 2;
  }

  int pfd[2];
  if (pipe(pfd)) {
    perror("pipe");
    return 1;
  }
  // Both processes agree on t0; the gap lets the receiver be in epoll_wait before packets flow.
  uint64_t t0 = now_ns() + 200000000ull;
  pid_t child = fork();
  if (child < 0) {
    perror("fork");
    return 1;
  }
  if (child == 0) {
    close(pfd[0]);
    run_sender(st, k, peer_fd, pps, secs, size, dir_out, dir_in, t0, pfd[1]);
  }
  close(pfd[1]);

  int ep = epoll_create1(0);
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  // data.u32: stream index, or k for the peer socket.
  ev.data.u32 = (uint32_t)k;
  if (dir_out && epoll_ctl(ep, EPOLL_CTL_ADD, peer_fd, &ev)) {
    perror("epoll peer");
    return 1;
  }
  for (int i = 0; dir_in && i < k; i++) {
    ev.data.u32 = (uint32_t)i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, st[i].fd, &ev)) {
      perror("epoll client");
      return 1;
    }
  }
  static latency_t lat[2];
  uint64_t *got[2] = {calloc((size_t)k, 8), calloc((size_t)k, 8)};
  uint64_t misrouted = 0, malformed = 0, other = 0, late[2] = {0, 0};
  uint64_t deadline_ns = (uint64_t)(drain * 1e9);
  static unsigned char pk[BATCH][2048];
  struct mmsghdr m[BATCH];
  struct iovec io[BATCH];
  for (int i = 0; i < BATCH; i++) {
    io[i].iov_base = pk[i];
    io[i].iov_len = sizeof pk[i];
    memset(&m[i], 0, sizeof m[i]);
    m[i].msg_hdr.msg_iov = &io[i];
    m[i].msg_hdr.msg_iovlen = 1;
  }
  struct epoll_event evs[256];
  uint64_t end = t0 + (uint64_t)((secs + drain) * 1e9);
  for (;;) {
    uint64_t t = now_ns();
    if (t >= end) break;
    int timeout_ms = (int)((end - t) / 1000000ull) + 1;
    if (timeout_ms > 100) timeout_ms = 100;
    int n = epoll_wait(ep, evs, 256, timeout_ms);
    for (int e = 0; e < n; e++) {
      uint32_t idx = evs[e].data.u32;
      int sock = idx == (uint32_t)k ? peer_fd : st[idx].fd;
      for (;;) {
        int r = recvmmsg(sock, m, BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0) break;
        uint64_t tr = now_ns();
        for (int i = 0; i < r; i++) {
          unsigned char *p = pk[i];
          unsigned len = m[i].msg_len;
          int d;
          if (idx == (uint32_t)k) {
            d = 0;  // the peer receives the client's payload as a plain UDP datagram
          } else {
            d = 1;
            // From the server to a client: ChannelData (first two bits 01). Anything else
            // (a Data indication, a STUN response) is counted, not measured.
            if (len < HDR || (p[0] & 0xC0) != 0x40) {
              other++;
              continue;
            }
            p += HDR;
            len -= HDR;
          }
          if (len < 32) {
            malformed++;
            continue;
          }
          uint64_t seq, ts;
          uint32_t sid;
          memcpy(&seq, p + 12, 8);
          memcpy(&ts, p + 20, 8);
          memcpy(&sid, p + 28, 4);
          (void)seq;
          if (sid >= (uint32_t)k || (d == 1 && sid != idx)) {
            misrouted++;
            continue;
          }
          uint64_t us = tr > ts ? (tr - ts) / 1000 : 0;
          if (tr > ts && tr - ts > deadline_ns)
            late[d]++;
          else
            got[d][sid]++;
          lat[d].hist[us > HIST_US ? HIST_US : us]++;
          lat[d].count++;
        }
        if (r < BATCH) break;
      }
    }
  }

  sender_report_t rep;
  memset(&rep, 0, sizeof rep);
  ssize_t rr = read(pfd[0], &rep, sizeof rep);
  int status = 0;
  struct rusage child_ru;
  wait4(child, &status, 0, &child_ru);
  if (rr != (ssize_t)sizeof rep) {
    fprintf(stderr, "sender did not report\n");
    return 1;
  }
  double recv_cpu = rusage_cpu(RUSAGE_SELF);

  printf("{\"streams\": %d, \"pps_per_stream\": %.3f, \"seconds\": %.3f, \"size\": %d, "
         "\"sender_cpu_s\": %.3f, \"receiver_cpu_s\": %.3f, \"sender_max_lag_ms\": %.3f, "
         "\"misrouted\": %llu, \"malformed\": %llu, \"other\": %llu, \"directions\": {",
         k, pps, secs, size, rep.cpu_s, recv_cpu, rep.max_lag_ns / 1e6,
         (unsigned long long)misrouted, (unsigned long long)malformed, (unsigned long long)other);
  const char *names[2] = {"out", "in"};
  int enabled[2] = {dir_out, dir_in}, first = 1;
  for (int d = 0; d < 2; d++) {
    if (!enabled[d]) continue;
    uint64_t received = 0;
    int lossy = 0;
    for (int i = 0; i < k; i++) {
      // Round-robin schedule: stream i sent sent/k packets, plus one if it came before the cut.
      uint64_t want = rep.sent[d] / (uint64_t)k + ((uint64_t)i < rep.sent[d] % (uint64_t)k);
      received += got[d][i];
      if (got[d][i] < want) lossy++;
    }
    uint64_t lost = rep.sent[d] > received ? rep.sent[d] - received : 0;
    printf("%s\"%s\": {\"sent\": %llu, \"received\": %llu, \"late\": %llu, \"lost\": %llu, "
           "\"loss_pct\": %.4f, "
           "\"lossy_streams\": %d, \"send_errors\": %llu, \"latency_us\": {\"p50\": %.0f, "
           "\"p99\": %.0f, \"p999\": %.0f, \"max\": %.0f}}",
           first ? "" : ", ", names[d], (unsigned long long)rep.sent[d],
           (unsigned long long)received, (unsigned long long)late[d], (unsigned long long)lost,
           rep.sent[d] ? 100.0 * (double)lost / (double)rep.sent[d] : 0.0, lossy,
           (unsigned long long)rep.errors[d], percentile(&lat[d], 0.5), percentile(&lat[d], 0.99),
           percentile(&lat[d], 0.999), max_latency(&lat[d]));
    first = 0;
  }
  printf("}}\n");
  return 0;
}
