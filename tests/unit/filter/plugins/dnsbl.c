/* A DNSBL check at RCPT time, for petrel's integration tests (and as an
 * example of a per-stage plugin). Build:
 *   cc -shared -fPIC -Iinclude tests/unit/filter/plugins/dnsbl.c -o dnsbl.so -lresolv
 * Options:
 *   zone        the DNSBL zone, e.g. "bl.test" (required)
 *   nameserver  "ip" or "ip:port" to ask instead of /etc/resolv.conf's
 * For an IPv4 client a.b.c.d it looks up d.c.b.a.ZONE (A). An answer in
 * 127.0.0.0/8 refuses every RCPT with "554 5.7.1 Service unavailable; client
 * [a.b.c.d] blocked using ZONE"; no answer, NXDOMAIN or a DNS failure lets the
 * client through (a broken list must not stop mail). IPv6 clients and unix
 * sockets are not checked. The answer is looked up once per session. */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <petrel/filter.h>

struct dnsbl {
  char zone[256];
  char ns_ip[64];
  unsigned ns_port;
  /* per session (worker) */
  char checked_ip[64];
  int listed;
};

static int init(const struct petrel_filter_config *config, void **state) {
  struct dnsbl *d = calloc(1, sizeof *d);
  size_t i;
  if (!d) return PETREL_FILTER_ERROR;
  for (i = 0; i < config->option_count; i++) {
    const char *k = config->options[i].key, *v = config->options[i].value;
    if (strcmp(k, "zone") == 0) {
      snprintf(d->zone, sizeof d->zone, "%s", v);
    } else if (strcmp(k, "nameserver") == 0) {
      const char *colon = strchr(v, ':');
      size_t n = colon ? (size_t)(colon - v) : strlen(v);
      struct in_addr a;
      if (n >= sizeof d->ns_ip) n = sizeof d->ns_ip - 1;
      memcpy(d->ns_ip, v, n);
      d->ns_ip[n] = '\0';
      d->ns_port = colon ? (unsigned)atoi(colon + 1) : 53;
      if (inet_pton(AF_INET, d->ns_ip, &a) != 1 || d->ns_port == 0 || d->ns_port > 65535) {
        snprintf(config->error, config->error_size, "bad nameserver \"%s\"", v);
        free(d);
        return PETREL_FILTER_ERROR;
      }
    } else {
      snprintf(config->error, config->error_size, "unknown option \"%s\"", k);
      free(d);
      return PETREL_FILTER_ERROR;
    }
  }
  if (!d->zone[0]) {
    snprintf(config->error, config->error_size, "option zone is required");
    free(d);
    return PETREL_FILTER_ERROR;
  }
  *state = d;
  return PETREL_FILTER_OK;
}

/* 1 listed, 0 not listed (or lookup failed). */
static int lookup(struct dnsbl *d, const char *ip) {
  struct __res_state res;
  struct in_addr a;
  unsigned char *b, answer[NS_PACKETSZ];
  char name[512];
  ns_msg msg;
  int len, i, count, listed = 0;

  if (inet_pton(AF_INET, ip, &a) != 1) return 0;
  b = (unsigned char *)&a.s_addr;
  snprintf(name, sizeof name, "%u.%u.%u.%u.%s", b[3], b[2], b[1], b[0], d->zone);
  memset(&res, 0, sizeof res);
  if (res_ninit(&res) != 0) return 0;
  if (d->ns_ip[0]) {
    res.nscount = 1;
    res.nsaddr_list[0].sin_family = AF_INET;
    res.nsaddr_list[0].sin_port = htons((unsigned short)d->ns_port);
    inet_pton(AF_INET, d->ns_ip, &res.nsaddr_list[0].sin_addr);
  }
  res.retrans = 2;
  res.retry = 2;
  len = res_nquery(&res, name, ns_c_in, ns_t_a, answer, sizeof answer);
  if (len > 0 && ns_initparse(answer, len, &msg) == 0) {
    count = ns_msg_count(msg, ns_s_an);
    for (i = 0; i < count; i++) {
      ns_rr rr;
      if (ns_parserr(&msg, ns_s_an, i, &rr) != 0) break;
      if (ns_rr_type(rr) == ns_t_a && ns_rr_rdlen(rr) == 4 && ns_rr_rdata(rr)[0] == 127) listed = 1;
    }
  }
  res_nclose(&res);
  return listed;
}

static int on_rcpt(void *state, const struct petrel_filter_envelope *env, const char *rcpt,
                   struct petrel_filter_result *result) {
  struct dnsbl *d = state;
  char reply[600];
  (void)rcpt;
  if (!env->client_address[0] || strchr(env->client_address, ':')) return PETREL_FILTER_OK;
  if (strcmp(d->checked_ip, env->client_address) != 0) {
    snprintf(d->checked_ip, sizeof d->checked_ip, "%s", env->client_address);
    d->listed = lookup(d, env->client_address);
  }
  if (d->listed) {
    snprintf(reply, sizeof reply, "554 5.7.1 Service unavailable; client [%s] blocked using %s",
             env->client_address, d->zone);
    result->action = PETREL_FILTER_REJECT;
    result->set_reply(result, reply);
    result->set_detail(result, "dnsbl=listed");
  }
  return PETREL_FILTER_OK;
}

static void fini(void *state) { free(state); }

static const struct petrel_filter entry = {
    .size = sizeof(struct petrel_filter),
    .abi_version = PETREL_FILTER_ABI_VERSION,
    .name = "dnsbl",
    .init = init,
    .fini = fini,
    .on_rcpt = on_rcpt,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void) { return &entry; }
