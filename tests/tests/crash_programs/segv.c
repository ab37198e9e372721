/* Three levels of calls, then a write through NULL. */
#include <stdio.h>
__attribute__((noinline)) void level3(int *p) { *p = 42; __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void level2(int *p) { level3(p); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void level1(int *p) { level2(p); __asm__ volatile("" ::: "memory"); }
int main(int argc, char **argv) { level1(argc > 5 ? &argc : NULL); (void)argv; return 0; }
