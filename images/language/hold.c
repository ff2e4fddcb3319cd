/* A held start (EXECUTOR_PRESTART=held; executor/runner.py, "_Prestarted"): preloaded into a
 * runtime that a warm container starts in advance, it holds the process once the dynamic
 * linker is done, before the runtime's main() has made anything (no heap, no threads): the
 * linking and relocation of its libraries (most of what Node.js's own start costs before
 * its heap, about 25 ms) are off the execution's path, for about 2 MiB while it waits, where
 * a runtime held after its start keeps all of its heap (Node.js: 13 MiB).
 *
 * It acts only when LD_PRELOAD names exactly this library and the process's highest
 * descriptor (RLIMIT_NOFILE's soft limit less one: where the runner puts the control pipe)
 * is a pipe. It first removes its trace from what the program can read: LD_PRELOAD leaves
 * the environment (so no child process loads this library), and its text in the process's
 * initial environment block (/proc/self/environ) is overwritten with NUL bytes (the runner
 * passes it last). Then it waits until the pipe is readable (the run's arguments) or closed,
 * and returns: the runtime starts as it would have, and its own hook reads the arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#ifndef HOLD_PATH
#define HOLD_PATH "/opt/executor/hold.so"
#endif

__attribute__((constructor)) static void hold(void) {
    char *value = getenv("LD_PRELOAD");
    if (value == NULL || strcmp(value, HOLD_PATH) != 0) return;
    char *entry = value - strlen("LD_PRELOAD=");
    unsetenv("LD_PRELOAD");
    memset(entry, 0, strlen(entry));

    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) != 0 || files.rlim_cur < 4 ||
        files.rlim_cur == RLIM_INFINITY)
        return;
    int control = (int)(files.rlim_cur - 1);
    struct stat st;
    if (fstat(control, &st) != 0 || !S_ISFIFO(st.st_mode)) return;
    struct pollfd wait = {.fd = control, .events = POLLIN};
    while (poll(&wait, 1, -1) < 0 && errno == EINTR) {
    }
}
