/* Dies in scan: for the integration test that a crashing plugin costs one
 * session only (the client sees 4xx or a dropped connection; the next session
 * works; the master lives). */
#include <signal.h>
#include <petrel/filter.h>

static int scan(void *state, const struct petrel_filter_envelope *env, const char *message,
                size_t length, struct petrel_filter_result *result) {
  (void)state, (void)env, (void)message, (void)length, (void)result;
  raise(SIGSEGV);
  return PETREL_FILTER_OK;
}

static const struct petrel_filter entry = {
    .size = sizeof(struct petrel_filter),
    .abi_version = PETREL_FILTER_ABI_VERSION,
    .name = "crash",
    .scan = scan,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void) { return &entry; }
