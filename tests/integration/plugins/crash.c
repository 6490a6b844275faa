/* crash.c: a test plugin for petrel's integration tests (test_35_plugins.py).
 *
 * scan dereferences NULL (a real SIGSEGV) when the message's header holds
 * "Subject: crash", and spins forever (until petrel's timeout watchdog ends
 * the worker) on "Subject: hang"; every other message gets
 * "X-Crash-Test: survived" and goes on. Core dumps are switched off first so
 * a test run leaves none behind.
 *
 * Build: cc -shared -fPIC -Iinclude crash.c -o crash.so */
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include <petrel/filter.h>

/* True when the header holds the line "Subject: <word>". */
static int subject_is(const char *message, size_t length, const char *word)
{
  char marker[64];
  size_t n, i;

  n = (size_t)snprintf(marker, sizeof marker, "\nSubject: %s\n", word);
  for (i = 0; i + n <= length; i++) {
    if (message[i] == '\n' && i + 1 < length && message[i + 1] == '\n')
      return 0; /* end of the header */
    if (memcmp(message + i, marker, n) == 0)
      return 1;
  }
  return 0;
}

static int scan(void *state, const struct petrel_filter_envelope *envelope,
                const char *message, size_t length, struct petrel_filter_result *result)
{
  (void)state;
  (void)envelope;
  if (subject_is(message, length, "crash")) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    *(volatile int *)0 = 1;
  }
  if (subject_is(message, length, "hang")) {
    volatile unsigned long spin = 0;
    for (;;)
      spin++;
  }
  return result->add_header(result, "X-Crash-Test", "survived");
}

static const struct petrel_filter entry = {
  .size = sizeof(struct petrel_filter),
  .abi_version = PETREL_FILTER_ABI_VERSION,
  .name = "crash",
  .scan = scan,
};

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void)
{
  return &entry;
}
