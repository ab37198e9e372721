/* Unbounded recursion: a stack overflow. */
#include <stdio.h>
__attribute__((noinline)) int recurse(volatile int n) {
    volatile char pad[128];
    pad[0] = (char)n;
    return recurse(n + 1) + pad[0];
}
int main(void) { return recurse(0); }
