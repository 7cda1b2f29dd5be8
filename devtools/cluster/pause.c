/*
 * The pod sandbox ("pause") process of the real-node test tier: the project's own, so no
 * upstream image or registry is needed. It holds the pod's namespaces open and does nothing:
 *
 *   - SIGTERM or SIGINT: exit 0 at once (the runtime stops the sandbox with SIGTERM, then
 *     SIGKILL);
 *   - SIGCHLD: reap every exited child, as PID 1 of a pod with a shared PID namespace must;
 *   - otherwise sleep in pause(), waking only for signals.
 *
 * Built by devtools/cluster/realnode.py with: gcc -Os -Wall -Werror -static -o pause pause.c
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int handle(int sig, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(sig, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("thpcheck-pause 1");
        return 0;
    }
    if (handle(SIGTERM, on_stop, 0) < 0 || handle(SIGINT, on_stop, 0) < 0 ||
        handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("thpcheck-pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
