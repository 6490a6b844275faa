/* dnsbl.c: a test plugin for petrel's integration tests (test_35_plugins.py).
 *
 * At each RCPT TO it looks the client's IPv4 address up in a DNS blocklist:
 * the A record of <reversed octets>.<zone>, asked of the one nameserver the
 * options name, with a small hand-written UDP query (no resolv.conf, no
 * libresolv). Listed (an A record in 127.0.0.0/8): the RCPT is refused with
 *   554 5.7.1 Service unavailable; client [1.2.3.4] blocked using <zone>
 * and the session goes on. Not listed (NXDOMAIN, or no A record): no
 * objection. No answer or a DNS error: PETREL_FILTER_ERROR (on_error).
 * IPv6 and unix-socket clients are not looked up.
 *
 * Options: zone (required), nameserver "ip:port" (default 127.0.0.1:53),
 * timeout_ms (per try, default 1000; two tries).
 *
 * Build: cc -shared -fPIC -Iinclude dnsbl.c -o dnsbl.so */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <petrel/filter.h>

struct dnsbl {
  char zone[256];
  struct sockaddr_in ns;
  int timeout_ms;
};

static void set_error(const struct petrel_filter_config *c, const char *msg)
{
  if (c->error != NULL && c->error_size > 0)
    snprintf(c->error, c->error_size, "%s", msg);
}

static int init(const struct petrel_filter_config *config, void **state)
{
  struct dnsbl *d = calloc(1, sizeof *d);
  size_t i;

  if (d == NULL)
    return PETREL_FILTER_ERROR;
  d->ns.sin_family = AF_INET;
  d->ns.sin_port = htons(53);
  d->ns.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  d->timeout_ms = 1000;
  for (i = 0; i < config->option_count; i++) {
    const char *k = config->options[i].key, *v = config->options[i].value;
    if (strcmp(k, "zone") == 0) {
      if (strlen(v) == 0 || strlen(v) >= sizeof d->zone - 20) {
        set_error(config, "zone: empty or too long");
        free(d);
        return PETREL_FILTER_ERROR;
      }
      strcpy(d->zone, v);
    } else if (strcmp(k, "nameserver") == 0) {
      char host[64];
      const char *colon = strrchr(v, ':');
      long port = 53;
      size_t n = colon ? (size_t)(colon - v) : strlen(v);
      if (n >= sizeof host) n = sizeof host - 1;
      memcpy(host, v, n);
      host[n] = '\0';
      if (colon != NULL)
        port = strtol(colon + 1, NULL, 10);
      if (inet_pton(AF_INET, host, &d->ns.sin_addr) != 1 || port <= 0 || port > 65535) {
        set_error(config, "nameserver: expected an IPv4 ip:port");
        free(d);
        return PETREL_FILTER_ERROR;
      }
      d->ns.sin_port = htons((unsigned short)port);
    } else if (strcmp(k, "timeout_ms") == 0) {
      d->timeout_ms = atoi(v);
      if (d->timeout_ms <= 0)
        d->timeout_ms = 1000;
    } else {
      set_error(config, "unknown option (zone, nameserver, timeout_ms)");
      free(d);
      return PETREL_FILTER_ERROR;
    }
  }
  if (d->zone[0] == '\0') {
    set_error(config, "option zone is required");
    free(d);
    return PETREL_FILTER_ERROR;
  }
  *state = d;
  return PETREL_FILTER_OK;
}

/* Writes the query for `name` IN A into buf; returns its length or -1. */
static int build_query(unsigned char *buf, size_t size, unsigned short id, const char *name)
{
  size_t pos = 12;
  const char *p = name;

  if (size < 12 + strlen(name) + 6)
    return -1;
  memset(buf, 0, 12);
  buf[0] = (unsigned char)(id >> 8);
  buf[1] = (unsigned char)id;
  buf[2] = 0x01; /* RD */
  buf[5] = 1;    /* QDCOUNT */
  while (*p) {
    const char *dot = strchr(p, '.');
    size_t n = dot ? (size_t)(dot - p) : strlen(p);
    if (n == 0 || n > 63)
      return -1;
    buf[pos++] = (unsigned char)n;
    memcpy(buf + pos, p, n);
    pos += n;
    p += n;
    if (*p == '.')
      p++;
  }
  buf[pos++] = 0;
  buf[pos++] = 0;
  buf[pos++] = 1; /* QTYPE A */
  buf[pos++] = 0;
  buf[pos++] = 1; /* QCLASS IN */
  return (int)pos;
}

/* Skips a (possibly compressed) name; returns the offset after it or -1. */
static int skip_name(const unsigned char *m, int len, int pos)
{
  while (pos < len) {
    unsigned char c = m[pos];
    if (c == 0)
      return pos + 1;
    if ((c & 0xC0) == 0xC0)
      return pos + 2 <= len ? pos + 2 : -1;
    pos += c + 1;
  }
  return -1;
}

/* 1 listed (*a = the A record), 0 not listed, -1 error. */
static int lookup(const struct dnsbl *d, const char *name, struct in_addr *a)
{
  unsigned char q[512], r[1500];
  int qlen, fd, attempt, rc = -1;
  unsigned short id;
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  id = (unsigned short)(ts.tv_nsec ^ getpid());
  qlen = build_query(q, sizeof q, id, name);
  if (qlen < 0)
    return -1;
  fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  if (connect(fd, (const struct sockaddr *)&d->ns, sizeof d->ns) != 0) {
    close(fd);
    return -1;
  }
  for (attempt = 0; attempt < 2 && rc < 0; attempt++) {
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t n;
    int an, pos, i;

    if (send(fd, q, (size_t)qlen, 0) != qlen)
      break;
    if (poll(&p, 1, d->timeout_ms) <= 0)
      continue;
    n = recv(fd, r, sizeof r, 0);
    if (n < 0 && errno == ECONNREFUSED)
      break; /* nobody listening: no point retrying */
    if (n < 12 || r[0] != q[0] || r[1] != q[1] || !(r[2] & 0x80))
      continue;
    switch (r[3] & 0x0F) {
      case 0: /* NOERROR */
        break;
      case 3: /* NXDOMAIN: not listed */
        rc = 0;
        continue;
      default:
        attempt = 2; /* SERVFAIL, REFUSED...: an error */
        continue;
    }
    an = (r[6] << 8) | r[7];
    pos = skip_name(r, (int)n, 12);
    if (pos < 0 || pos + 4 > n)
      break;
    pos += 4;
    rc = 0; /* NOERROR without an A record: not listed */
    for (i = 0; i < an; i++) {
      int type, rdlen;
      pos = skip_name(r, (int)n, pos);
      if (pos < 0 || pos + 10 > n)
        break;
      type = (r[pos] << 8) | r[pos + 1];
      rdlen = (r[pos + 8] << 8) | r[pos + 9];
      pos += 10;
      if (pos + rdlen > n)
        break;
      if (type == 1 && rdlen == 4) {
        memcpy(&a->s_addr, r + pos, 4);
        rc = 1;
        break;
      }
      pos += rdlen;
    }
  }
  close(fd);
  return rc;
}

static int on_rcpt(void *state, const struct petrel_filter_envelope *envelope,
                   const char *recipient, struct petrel_filter_result *result)
{
  const struct dnsbl *d = state;
  struct in_addr client, listed;
  unsigned char *o = (unsigned char *)&client.s_addr;
  char name[512], text[768], addr[INET_ADDRSTRLEN];
  int found;

  (void)recipient;
  if (inet_pton(AF_INET, envelope->client_address, &client) != 1)
    return PETREL_FILTER_OK; /* IPv6 or unix socket: not our business */
  snprintf(name, sizeof name, "%u.%u.%u.%u.%s", o[3], o[2], o[1], o[0], d->zone);
  found = lookup(d, name, &listed);
  if (found < 0) {
    snprintf(text, sizeof text, "lookup of %s failed", name);
    result->set_detail(result, text);
    return PETREL_FILTER_ERROR;
  }
  if (found == 0 || (ntohl(listed.s_addr) >> 24) != 127)
    return PETREL_FILTER_OK;
  inet_ntop(AF_INET, &listed, addr, sizeof addr);
  snprintf(text, sizeof text,
           "554 5.7.1 Service unavailable; client [%s] blocked using %s", envelope->client_address,
           d->zone);
  result->action = PETREL_FILTER_REJECT;
  if (result->set_reply(result, text) != PETREL_FILTER_OK)
    return PETREL_FILTER_ERROR;
  snprintf(text, sizeof text, "listed in %s as %s", d->zone, addr);
  result->set_detail(result, text);
  return PETREL_FILTER_OK;
}

static void fini(void *state)
{
  free(state);
}

static const struct petrel_filter entry = {
  .size = sizeof(struct petrel_filter),
  .abi_version = PETREL_FILTER_ABI_VERSION,
  .name = "dnsbl",
  .init = init,
  .fini = fini,
  .on_rcpt = on_rcpt,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void)
{
  return &entry;
}
