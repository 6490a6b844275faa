/* Claims a struct petrel_filter smaller than ABI version 1's. */
#include <petrel/filter.h>

static const struct petrel_filter entry = {
    .size = sizeof(size_t) + sizeof(unsigned),
    .abi_version = PETREL_FILTER_ABI_VERSION,
    .name = "short",
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void) { return &entry; }
