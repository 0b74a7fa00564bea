/*
 * LD_PRELOAD shim for the benchmark's reference row: it lets an unmodified nginx proxy to a
 * runnel instance the way runnel's frontend does, through the instance's `port.sock`.
 *
 * An instance's port is reachable only through its channel: the frontend connects to
 * RUNNEL_HOME/i/INSTANCE/run/port.sock and reads one answer byte; with 2 ("passed") the
 * sandbox's bridge hands over, as SCM_RIGHTS, a TCP socket already connected to
 * 127.0.0.1:PORT inside the instance's network namespace, and the frontend speaks HTTP/1.1 on
 * that socket (crates/gateway/src/upstream.rs, connect_port). With this shim, nginx's
 * `connect()` to a Unix socket whose file name is `port.sock` does the same: it reads the
 * answer, puts the passed socket in place of nginx's descriptor (same number, same
 * O_NONBLOCK) and reports the connection as made. nginx then sends and reads exactly as it
 * would on any upstream TCP connection, and it keeps them alive the same way (TCP_NODELAY
 * on, as the frontend sets it).
 *
 * nginx registers a socket with epoll before it connects, and that registration belongs to
 * the socket the descriptor named then: dup2 drops it with the replaced socket. So the shim
 * remembers each descriptor's epoll registration (epoll_ctl is wrapped too) and makes it
 * again for the passed socket, which is connected and writable at once.
 *
 * Anything other than one passed descriptor (the relayed or refused answers, a closed
 * channel) fails the connect with ECONNREFUSED, which nginx logs and retries like any
 * upstream error. Connections to any other address are untouched.
 *
 * Build: cc -shared -fPIC -O2 -o port_connect.so port_connect.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PORT_PASSED 2
#define MAX_FD 65536

/* The last epoll registration of each descriptor: its epoll descriptor + 1 (0 = none). */
static int registered_on[MAX_FD];
static struct epoll_event registered_as[MAX_FD];

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    static int (*real)(int, int, int, struct epoll_event *);
    if (!real)
        real = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
    int rc = real(epfd, op, fd, event);
    if (rc == 0 && fd >= 0 && fd < MAX_FD) {
        if (op == EPOLL_CTL_DEL) {
            registered_on[fd] = 0;
        } else if (event != NULL) {
            registered_on[fd] = epfd + 1;
            registered_as[fd] = *event;
        }
    }
    return rc;
}

/* The kernel drops a socket's epoll registration when the socket is closed; so must the
 * record, or a later socket given the same number would be registered on connect with a
 * dead socket's event (and the program's own EPOLL_CTL_ADD would then fail with EEXIST). */
int close(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd < MAX_FD)
        registered_on[fd] = 0;
    return real(fd);
}

static int is_port_sock(const struct sockaddr *addr, socklen_t len)
{
    if (addr == NULL || len <= sizeof(sa_family_t) || addr->sa_family != AF_UNIX)
        return 0;
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    const char *name = strrchr(un->sun_path, '/');
    name = name ? name + 1 : un->sun_path;
    return strcmp(name, "port.sock") == 0;
}

/* The channel's answer: the passed descriptor, or -1. The channel is blocking here: the
 * bridge answers as soon as its own connect to the instance's port is done. */
static int receive_passed(int channel)
{
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n;
    do
        n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n != 1 || byte != PORT_PASSED || (msg.msg_flags & MSG_CTRUNC))
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN(sizeof(int)))
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real)
        real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    if (!is_port_sock(addr, len))
        return real(fd, addr, len);

    /* A blocking channel of our own; nginx's descriptor is replaced only on success. */
    int channel = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (channel < 0)
        return -1;
    int passed = -1;
    if (real(channel, addr, len) == 0)
        passed = receive_passed(channel);
    close(channel);
    if (passed < 0) {
        errno = ECONNREFUSED;
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    int fd_flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fd_flags < 0 || fcntl(passed, F_SETFL, flags) < 0 || dup2(passed, fd) < 0) {
        close(passed);
        errno = ECONNREFUSED;
        return -1;
    }
    close(passed);
    fcntl(fd, F_SETFD, fd_flags);
    if (fd < MAX_FD && registered_on[fd] != 0) {
        struct epoll_event event = registered_as[fd];
        if (epoll_ctl(registered_on[fd] - 1, EPOLL_CTL_ADD, fd, &event) != 0) {
            errno = ECONNREFUSED;
            return -1;
        }
    }
    /* nginx leaves Nagle on for what it believes is a Unix socket; the frontend turns it off
     * on every passed socket, and so does this, so both send the same segments. */
    const int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    return 0;
}
