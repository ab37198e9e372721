/* A call through a NULL function pointer: pc = 0, no module, no CFI. */
typedef void (*fn)(void);
volatile fn target = 0;
__attribute__((noinline)) void level2(void) { target(); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void level1(void) { level2(); __asm__ volatile("" ::: "memory"); }
int main(void) { level1(); return 0; }
