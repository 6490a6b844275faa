/* Never returns from scan: the filter's timeout must end the worker. */
#include <unistd.h>
#include <petrel/filter.h>

static int scan(void *state, const struct petrel_filter_envelope *env, const char *message,
                size_t length, struct petrel_filter_result *result) {
  (void)state, (void)env, (void)message, (void)length, (void)result;
  for (;;) pause();
  return PETREL_FILTER_OK;
}

static const struct petrel_filter entry = {
    .size = sizeof(struct petrel_filter),
    .abi_version = PETREL_FILTER_ABI_VERSION,
    .name = "hang",
    .scan = scan,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void) { return &entry; }
