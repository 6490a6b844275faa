/*
 * petrel content-filter plugins: the public C ABI (SPEC §8, petrel-filters(7)).
 *
 * A plugin is a shared object exporting one function, petrel_filter_entry(),
 * which returns a pointer to a static struct petrel_filter describing it. Only
 * C types cross this boundary: no C++ types, and no exception may escape a
 * callback.
 *
 * Lifecycle, and the process each call runs in:
 *   init         master, once per configured filter, before any fork and again
 *                on every reload (SIGHUP) with the new options. Build read-only
 *                state here (compiled rules): workers share it copy-on-write.
 *                No threads, sockets or open connections: they would be shared
 *                by every worker.
 *   worker_init  each worker (one SMTP session), before its first callback.
 *   on_connect, on_helo, on_mail, on_rcpt
 *                the worker, at that SMTP stage; NULL = not interested.
 *   scan         the worker, once per message, after DATA, before the reply.
 *   worker_exit  the worker, when the session ends.
 *   fini         master, on reload (after the new state's init succeeded) or at
 *                shutdown. Never in a worker.
 * A worker runs one callback at a time (no threads). A crash in a callback
 * ends that worker's session only; a scan that outlives the filter's timeout
 * ends it too (SIGALRM).
 *
 * Compatibility: every struct starts with its size in bytes and only ever
 * grows at the end. The host checks abi_version and that the plugin's struct
 * petrel_filter covers at least version 1; a plugin must check `size` (see
 * PETREL_FILTER_HAS) before reading a field added after version 1 of a struct
 * the host passes in.
 */
#ifndef PETREL_FILTER_H
#define PETREL_FILTER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PETREL_FILTER_ABI_VERSION 1

/* Marks petrel_filter_entry as exported even when built with
 * -fvisibility=hidden. */
#if defined(__GNUC__)
#define PETREL_FILTER_EXPORT __attribute__((visibility("default")))
#else
#define PETREL_FILTER_EXPORT
#endif

/* True when the struct *p (as sized by whoever filled it) has `field`. */
#define PETREL_FILTER_HAS(type, p, field) \
  ((p)->size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* What a callback answers. */
enum petrel_filter_action {
  PETREL_FILTER_CONTINUE = 0, /* no objection: the next filter runs */
  PETREL_FILTER_ACCEPT = 1,   /* accept now, skip the remaining filters */
  PETREL_FILTER_REJECT = 2,   /* 5xx; scan: the message is refused */
  PETREL_FILTER_TEMPFAIL = 3, /* 4xx; the client retries later */
  PETREL_FILTER_DISCARD = 4   /* scan only: answer 250 and store nothing */
};

/* Callback return values. PETREL_FILTER_ERROR applies the filter's
 * on_error (tempfail by default), whatever the result says. */
#define PETREL_FILTER_OK 0
#define PETREL_FILTER_ERROR (-1)

struct petrel_filter_option {
  const char *key;
  const char *value; /* "" for an option written without a value */
};

/* Passed to init. Valid only during the call: copy what you keep. */
struct petrel_filter_config {
  size_t size;
  const char *name;       /* the filter's name in petrel.yaml */
  const char *config_dir; /* folder of petrel.yaml: resolve relative paths against it */
  const struct petrel_filter_option *options; /* `options:` in file order */
  size_t option_count;
  char *error;       /* on failure, init may write a NUL-terminated reason here */
  size_t error_size; /* bytes available at error */
};

/* The session and transaction. Strings are never NULL ("" when unknown or not
 * applicable); valid only during the call. */
struct petrel_filter_envelope {
  size_t size;
  const char *queue_id;       /* "" before MAIL */
  const char *client_address; /* "192.0.2.1", "2001:db8::1"; "" for unix sockets */
  unsigned client_port;
  const char *helo;      /* "" before HELO/EHLO */
  const char *auth_user; /* "" unless authenticated */
  int tls;               /* 1 when the session is encrypted */
  const char *tls_version;
  const char *tls_cipher;
  const char *hostname; /* ours */
  const char *sender;   /* "" for <> and before MAIL */
  const char *const *recipients; /* accepted so far */
  size_t recipient_count;
};

/* Filled by the plugin through the host's functions; the host sets size,
 * action (CONTINUE) and the function pointers before each call. */
struct petrel_filter_result {
  size_t size;
  int action; /* enum petrel_filter_action */
  void *host; /* the host's; do not touch */
  /* The SMTP reply for REJECT/TEMPFAIL: "550 5.7.1 text" (a code of the
   * action's class), or just the text. Unset: petrel's default. */
  int (*set_reply)(struct petrel_filter_result *r, const char *text);
  /* scan only: appends "name: value" to the header (value may be folded
   * with "\n\t"). Ignored unless the action is CONTINUE or ACCEPT. */
  int (*add_header)(struct petrel_filter_result *r, const char *name, const char *value);
  /* scan only: removes every existing header field of that name (before
   * this result's own add_header()s). */
  int (*delete_header)(struct petrel_filter_result *r, const char *name);
  /* Free text appended to petrel's log line for this verdict
   * (e.g. "score=12.3 tests=GTUBE"). */
  int (*set_detail)(struct petrel_filter_result *r, const char *text);
};

struct petrel_filter {
  size_t size;          /* sizeof(struct petrel_filter) as the plugin built it */
  unsigned abi_version; /* PETREL_FILTER_ABI_VERSION */
  const char *name;     /* the plugin's own name, for messages */

  /* All callbacks may be NULL; a plugin needs scan or at least one on_*. */
  int (*init)(const struct petrel_filter_config *config, void **state);
  int (*worker_init)(void *state);
  int (*scan)(void *state, const struct petrel_filter_envelope *envelope,
              const char *message, size_t length, struct petrel_filter_result *result);
  void (*worker_exit)(void *state);
  void (*fini)(void *state);

  /* Per-stage checks before DATA: answer CONTINUE, ACCEPT (no objection,
   * and the later filters' hooks for this stage are skipped), REJECT or
   * TEMPFAIL (that command is refused, the session goes on). */
  int (*on_connect)(void *state, const struct petrel_filter_envelope *envelope,
                    struct petrel_filter_result *result);
  int (*on_helo)(void *state, const struct petrel_filter_envelope *envelope,
                 struct petrel_filter_result *result);
  int (*on_mail)(void *state, const struct petrel_filter_envelope *envelope,
                 struct petrel_filter_result *result);
  int (*on_rcpt)(void *state, const struct petrel_filter_envelope *envelope,
                 const char *recipient, struct petrel_filter_result *result);
};

/* `message` (scan) has LF line ends, starts with petrel's Received: header and
 * is not NUL-terminated. */

PETREL_FILTER_EXPORT const struct petrel_filter *petrel_filter_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* PETREL_FILTER_H */
