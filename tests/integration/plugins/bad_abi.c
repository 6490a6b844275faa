/* bad_abi.c: a test plugin for petrel's integration tests (test_35_plugins.py).
 *
 * Built as is, it exports petrel_filter_entry with a struct claiming ABI
 * version 999: petrel must refuse to load it. Built with -DMISSING_SYMBOL it
 * also calls a function no library defines, so dlopen(RTLD_NOW) fails.
 * Either way `petrel check-config` exits 78 naming the file and the reason.
 *
 * Build: cc -shared -fPIC -Iinclude bad_abi.c -o bad_abi.so */
#include <petrel/filter.h>

#define BAD_ABI_VERSION 999

#ifdef MISSING_SYMBOL
extern int petrel_test_no_such_function(void);
#endif

static int scan(void *state, const struct petrel_filter_envelope *envelope,
                const char *message, size_t length, struct petrel_filter_result *result)
{
  (void)state;
  (void)envelope;
  (void)message;
  (void)length;
  (void)result;
#ifdef MISSING_SYMBOL
  return petrel_test_no_such_function();
#else
  return PETREL_FILTER_OK;
#endif
}

static const struct petrel_filter entry = {
  .size = sizeof(struct petrel_filter),
#ifdef MISSING_SYMBOL
  .abi_version = PETREL_FILTER_ABI_VERSION,
#else
  .abi_version = BAD_ABI_VERSION,
#endif
  .name = "bad_abi",
  .scan = scan,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void)
{
  return &entry;
}
