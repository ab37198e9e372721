/* A root process that changes its credentials, as a setuid daemon does:
 * the kernel makes it non-dumpable (with fs.suid_dumpable=2 it is dumped
 * for root only, core_pattern %d = 2). */
#include <unistd.h>
__attribute__((noinline)) void secret_holder(volatile int *p) { *p = 1; }
int main(void) {
    if (setgid(65534) != 0 || setuid(65534) != 0) return 2;
    secret_holder(0);
    return 0;
}
