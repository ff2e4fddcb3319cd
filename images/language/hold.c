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
 * passes it last). Then it waits for the run: it reads the pipe to its end (the program's
 * arguments, each ended by a NUL byte), closes it, and hands them to the runtime's hook
 * (prestart.js) in EXECUTOR_HELD_ARGS, hex-encoded, which the hook takes out of the
 * environment before anything of the program runs. So the hook needs no module to read a
 * descriptor: Node.js's first require() costs about 9 ms, which a program that requires
 * nothing would otherwise pay.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef HOLD_PATH
#define HOLD_PATH "/opt/executor/hold.so"
#endif

static void fail(const char *why) {
    static const char prefix[] = "hold.so: ";
    (void)!write(2, prefix, sizeof prefix - 1);
    (void)!write(2, why, strlen(why));
    (void)!write(2, "\n", 1);
    _exit(127);
}

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

    size_t size = 0, room = 4096;
    char *args = malloc(room);
    for (;;) {
        if (args == NULL) fail("out of memory");
        ssize_t n = read(control, args + size, room - size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("cannot read the run's arguments");
        if (n == 0) break;
        size += (size_t)n;
        if (size == room) args = realloc(args, room *= 2);
    }
    close(control);
    static const char digits[] = "0123456789abcdef";
    char *hex = malloc(2 * size + 1);
    if (hex == NULL) fail("out of memory");
    for (size_t i = 0; i < size; i++) {
        hex[2 * i] = digits[(unsigned char)args[i] >> 4];
        hex[2 * i + 1] = digits[(unsigned char)args[i] & 15];
    }
    hex[2 * size] = 0;
    free(args);
    if (setenv("EXECUTOR_HELD_ARGS", hex, 1) != 0) fail("cannot pass the run's arguments");
    free(hex);
}
