/* A plugin built for a filter ABI petrel does not speak: check-config must
 * refuse it. */
#include <petrel/filter.h>

static int scan(void *state, const struct petrel_filter_envelope *env, const char *message,
                size_t length, struct petrel_filter_result *result) {
  (void)state, (void)env, (void)message, (void)length, (void)result;
  return PETREL_FILTER_OK;
}

static const struct petrel_filter entry = {
    .size = sizeof(struct petrel_filter),
    .abi_version = PETREL_FILTER_ABI_VERSION + 41,
    .name = "bad-abi",
    .scan = scan,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void) { return &entry; }
