/* Needs a function nothing provides: RTLD_NOW makes loading it fail. */
#include <petrel/filter.h>

extern int petrel_test_no_such_function(void);

static int scan(void *state, const struct petrel_filter_envelope *env, const char *message,
                size_t length, struct petrel_filter_result *result) {
  (void)state, (void)env, (void)message, (void)length, (void)result;
  return petrel_test_no_such_function();
}

static const struct petrel_filter entry = {
    .size = sizeof(struct petrel_filter),
    .abi_version = PETREL_FILTER_ABI_VERSION,
    .name = "missing-symbol",
    .scan = scan,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void) { return &entry; }
