/* vsock-echo PORT: accepts one vsock connection on PORT, echoes what arrives until the peer
   closes, then exits 0. Part of the root disk of the Linux device test on hosts whose KVM runs
   guest code on the CPU (guest/linux/disk-init). Built static by build.sh. */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: vsock-echo PORT\n");
        return 2;
    }
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)atoi(argv[1])};
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 1) < 0) {
        perror("vsock-echo: listen");
        return 1;
    }
    printf("fc-run-guest: vsock-echo: listening on port %s\n", argv[1]);
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    if (c < 0) {
        perror("vsock-echo: accept");
        return 1;
    }
    printf("fc-run-guest: vsock-echo: accepted a connection\n");
    fflush(stdout);
    char buf[4096];
    ssize_t n;
    long total = 0;
    while ((n = read(c, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, (size_t)(n - off));
            if (w <= 0) {
                perror("vsock-echo: write");
                return 1;
            }
            off += w;
        }
        total += n;
        printf("fc-run-guest: vsock-echo: echoed %ld bytes so far\n", total);
        fflush(stdout);
    }
    printf("fc-run-guest: vsock-echo: echoed %ld bytes\n", total);
    fflush(stdout);
    close(c);
    return 0;
}
