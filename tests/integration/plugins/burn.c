/* burn.c: a CPU-bound filter plugin for scripts/bench-filters.sh.
 *
 * scan hashes the message over and over until the worker has spent
 * `cpu_ms` milliseconds of CPU time on it (CLOCK_THREAD_CPUTIME_ID, so the
 * cost per message stays the same however many workers share the cores),
 * then answers CONTINUE with "X-Burn: <passes> passes". It stands in for a
 * CPU-heavy scanner (a large ruleset, a Bayes classifier) to measure how
 * filter throughput scales with parallel sessions.
 *
 * Options: cpu_ms (default 20).
 * Build: cc -O2 -shared -fPIC -Iinclude burn.c -o burn.so */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <petrel/filter.h>

struct burn {
  long cpu_ns;
};

static int init(const struct petrel_filter_config *config, void **state)
{
  struct burn *b = calloc(1, sizeof *b);
  size_t i;

  if (b == NULL)
    return PETREL_FILTER_ERROR;
  b->cpu_ns = 20L * 1000000L;
  for (i = 0; i < config->option_count; i++) {
    if (strcmp(config->options[i].key, "cpu_ms") == 0) {
      long ms = strtol(config->options[i].value, NULL, 10);
      if (ms < 0 || ms > 10000) {
        snprintf(config->error, config->error_size, "cpu_ms: expected 0..10000");
        free(b);
        return PETREL_FILTER_ERROR;
      }
      b->cpu_ns = ms * 1000000L;
    }
  }
  *state = b;
  return PETREL_FILTER_OK;
}

static long cpu_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static int scan(void *state, const struct petrel_filter_envelope *envelope,
                const char *message, size_t length, struct petrel_filter_result *result)
{
  const struct burn *b = state;
  long start = cpu_now();
  unsigned long long h = 1469598103934665603ULL; /* FNV-1a */
  volatile unsigned long long sink;
  unsigned long passes = 0;
  char text[64];
  size_t i;

  (void)envelope;
  do {
    for (i = 0; i < length; i++)
      h = (h ^ (unsigned char)message[i]) * 1099511628211ULL;
    for (i = 0; i < 4096; i++) /* so a tiny message still takes real work per pass */
      h = (h ^ i) * 1099511628211ULL;
    passes++;
  } while (cpu_now() - start < b->cpu_ns);
  sink = h;
  (void)sink;
  snprintf(text, sizeof text, "%lu passes", passes);
  return result->add_header(result, "X-Burn", text);
}

static void fini(void *state)
{
  free(state);
}

static const struct petrel_filter entry = {
  .size = sizeof(struct petrel_filter),
  .abi_version = PETREL_FILTER_ABI_VERSION,
  .name = "burn",
  .init = init,
  .scan = scan,
  .fini = fini,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void)
{
  return &entry;
}
