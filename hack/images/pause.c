/*
 * The pod sandbox ("pause") container for hack/images.sh: holds the pod's namespaces open and does
 * nothing else. It sleeps until a signal arrives, exits 0 on SIGTERM or SIGINT (so a pod deletion
 * does not wait out its grace period), and reaps any child it inherits as PID 1 on SIGCHLD.
 *
 *   gcc -static -Os -o pause pause.c
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_chld(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int handle(int sig, void (*fn)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
    return sigaction(sig, &sa, NULL);
}

int main(void) {
    if (getpid() != 1) {
        static const char warn[] = "pause: not running as PID 1\n";
        (void)!write(2, warn, sizeof warn - 1);
    }
    if (handle(SIGTERM, on_term) < 0 || handle(SIGINT, on_term) < 0 || handle(SIGCHLD, on_chld) < 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
