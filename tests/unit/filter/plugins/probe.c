/* Exercises the whole ABI for the unit tests. Options:
 *   reject_rcpt   on_rcpt refuses this recipient with "554 5.7.1 <rcpt> is not wanted"
 *   tempfail_helo on_helo answers TEMPFAIL (default reply) for this HELO name
 *   accept_mail   on_mail answers ACCEPT for this sender (later filters skipped)
 *   verdict       scan's action: continue, accept, reject, tempfail, discard, error
 *   fail_init     init fails with this message
 * scan adds "X-Probe: <queue id> <sender> <n recipients> <worker_init count>",
 * deletes X-Remove-Me, and replies "reject from probe" on reject. Every
 * callback appends its name to the file named by option `trace`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <petrel/filter.h>

struct probe {
  char reject_rcpt[256];
  char tempfail_helo[256];
  char accept_mail[256];
  char verdict[32];
  char trace[512];
  int worker_inits;
};

static void trace(struct probe *p, const char *what) {
  if (!p->trace[0]) return;
  FILE *f = fopen(p->trace, "a");
  if (!f) return;
  fprintf(f, "%s\n", what);
  fclose(f);
}

static void copy(char *dst, size_t n, const char *src) {
  snprintf(dst, n, "%s", src ? src : "");
}

static int init(const struct petrel_filter_config *config, void **state) {
  struct probe *p = calloc(1, sizeof *p);
  size_t i;
  if (!p) return PETREL_FILTER_ERROR;
  copy(p->verdict, sizeof p->verdict, "continue");
  for (i = 0; i < config->option_count; i++) {
    const char *k = config->options[i].key, *v = config->options[i].value;
    if (strcmp(k, "reject_rcpt") == 0) copy(p->reject_rcpt, sizeof p->reject_rcpt, v);
    else if (strcmp(k, "tempfail_helo") == 0) copy(p->tempfail_helo, sizeof p->tempfail_helo, v);
    else if (strcmp(k, "accept_mail") == 0) copy(p->accept_mail, sizeof p->accept_mail, v);
    else if (strcmp(k, "verdict") == 0) copy(p->verdict, sizeof p->verdict, v);
    else if (strcmp(k, "trace") == 0) copy(p->trace, sizeof p->trace, v);
    else if (strcmp(k, "fail_init") == 0) {
      snprintf(config->error, config->error_size, "%s", v);
      free(p);
      return PETREL_FILTER_ERROR;
    }
  }
  trace(p, "init");
  *state = p;
  return PETREL_FILTER_OK;
}

static int worker_init(void *state) {
  struct probe *p = state;
  p->worker_inits++;
  trace(p, "worker_init");
  return PETREL_FILTER_OK;
}

static int scan(void *state, const struct petrel_filter_envelope *env, const char *message,
                size_t length, struct petrel_filter_result *result) {
  struct probe *p = state;
  char value[512];
  (void)message, (void)length;
  trace(p, "scan");
  if (strcmp(p->verdict, "error") == 0) return PETREL_FILTER_ERROR;
  if (strcmp(p->verdict, "accept") == 0) result->action = PETREL_FILTER_ACCEPT;
  if (strcmp(p->verdict, "reject") == 0) result->action = PETREL_FILTER_REJECT;
  if (strcmp(p->verdict, "tempfail") == 0) result->action = PETREL_FILTER_TEMPFAIL;
  if (strcmp(p->verdict, "discard") == 0) result->action = PETREL_FILTER_DISCARD;
  if (strcmp(p->verdict, "badaction") == 0) result->action = 42;
  if (result->action == PETREL_FILTER_REJECT) result->set_reply(result, "reject from probe");
  snprintf(value, sizeof value, "%s %s %zu %d", env->queue_id, env->sender,
           env->recipient_count, p->worker_inits);
  if (result->delete_header(result, "X-Remove-Me") != PETREL_FILTER_OK) return PETREL_FILTER_ERROR;
  if (result->add_header(result, "X-Probe", value) != PETREL_FILTER_OK) return PETREL_FILTER_ERROR;
  result->set_detail(result, "probe=yes");
  return PETREL_FILTER_OK;
}

static void worker_exit(void *state) { trace(state, "worker_exit"); }

static void fini(void *state) {
  trace(state, "fini");
  free(state);
}

static int on_helo(void *state, const struct petrel_filter_envelope *env,
                   struct petrel_filter_result *result) {
  struct probe *p = state;
  if (p->tempfail_helo[0] && strcmp(env->helo, p->tempfail_helo) == 0)
    result->action = PETREL_FILTER_TEMPFAIL;
  return PETREL_FILTER_OK;
}

static int on_mail(void *state, const struct petrel_filter_envelope *env,
                   struct petrel_filter_result *result) {
  struct probe *p = state;
  if (p->accept_mail[0] && strcmp(env->sender, p->accept_mail) == 0)
    result->action = PETREL_FILTER_ACCEPT;
  return PETREL_FILTER_OK;
}

static int on_rcpt(void *state, const struct petrel_filter_envelope *env, const char *rcpt,
                   struct petrel_filter_result *result) {
  struct probe *p = state;
  char reply[512];
  (void)env;
  if (p->reject_rcpt[0] && strcmp(rcpt, p->reject_rcpt) == 0) {
    result->action = PETREL_FILTER_REJECT;
    snprintf(reply, sizeof reply, "554 5.7.1 <%s> is not wanted", rcpt);
    result->set_reply(result, reply);
  }
  return PETREL_FILTER_OK;
}

static const struct petrel_filter entry = {
    .size = sizeof(struct petrel_filter),
    .abi_version = PETREL_FILTER_ABI_VERSION,
    .name = "probe",
    .init = init,
    .worker_init = worker_init,
    .scan = scan,
    .worker_exit = worker_exit,
    .fini = fini,
    .on_connect = NULL,
    .on_helo = on_helo,
    .on_mail = on_mail,
    .on_rcpt = on_rcpt,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void) { return &entry; }
