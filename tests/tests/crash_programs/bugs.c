/* Ten different bugs, chosen by argv[1] (0..9), each in its own function. */
#include <assert.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define NI __attribute__((noinline))
volatile int zero = 0;
int *volatile nullp;
char *volatile badp = (char *)1;
NI void bug0(void) { *nullp = 1; }
NI void bug1(void) { abort(); }
NI void bug2(void) { assert(zero == 1); }
NI void bug3(void) { volatile int x = 100 / zero; (void)x; }
NI void bug4(void) { raise(SIGSEGV); }
NI void bug5(void) { __builtin_trap(); }
NI void bug6(void) { strcpy(badp, "x"); }
NI void bug7(void) { nullp[4096] = 1; }
NI void bug8(void) { kill(getpid(), SIGBUS); }
NI void bug9(void) { int *volatile p = malloc(16); free(p); free(p); }
int main(int argc, char **argv) {
    void (*bugs[])(void) = {bug0, bug1, bug2, bug3, bug4, bug5, bug6, bug7, bug8, bug9};
    int i = argc > 1 ? atoi(argv[1]) : 0;
    bugs[i % 10]();
    __asm__ volatile("" ::: "memory");
    return 0;
}
