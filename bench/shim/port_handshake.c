/*
 * LD_PRELOAD shim for the benchmark's diagnostic rows only: it lets an unmodified nginx
 * serve an instance's `port.sock` itself, without runnel's in-sandbox bridge.
 *
 * runnel's frontend connects to RUNNEL_HOME/i/INSTANCE/run/port.sock and expects the
 * channel's handshake byte (1 = "the workload took the connection", see
 * crates/runtime/src/sandbox/channels.rs and crates/gateway/src/upstream.rs::connect_port)
 * before the HTTP/1.1 stream. Inside a sandbox the bridge sends that byte and then copies
 * bytes between port.sock and 127.0.0.1:PORT. With this shim, every connection accepted
 * on a Unix socket whose file name is `port.sock` gets that byte from nginx directly, so
 * the frontend talks HTTP to nginx with no hop in between. Connections on any other socket
 * are untouched.
 *
 * Build: cc -shared -fPIC -O2 -o port_handshake.so port_handshake.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int handshake(int listener, int conn)
{
    struct sockaddr_un addr;
    socklen_t len = sizeof addr;
    if (conn < 0)
        return conn;
    if (getsockname(listener, (struct sockaddr *)&addr, &len) != 0 || addr.sun_family != AF_UNIX)
        return conn;
    const char *name = strrchr(addr.sun_path, '/');
    name = name ? name + 1 : addr.sun_path;
    if (strcmp(name, "port.sock") == 0) {
        const char connected = 1;
        /* A fresh connection's send buffer is empty: one byte never blocks. */
        if (write(conn, &connected, 1) != 1) {
            close(conn);
            return -1;
        }
    }
    return conn;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    return handshake(fd, real(fd, addr, len, flags));
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    return handshake(fd, real(fd, addr, len));
}
