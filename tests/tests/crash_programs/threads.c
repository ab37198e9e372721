/* 40 threads parked in worker_wait, then main crashes. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#define N 40
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int ready = 0;
__attribute__((noinline)) void worker_wait(void) {
    pthread_mutex_lock(&m);
    ready++;
    for (;;) pthread_cond_wait(&c, &m);
}
void *worker(void *a) { (void)a; worker_wait(); return NULL; }
__attribute__((noinline)) void crash_now(void) { abort(); }
int main(void) {
    pthread_t t[N];
    for (int i = 0; i < N; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (;;) { pthread_mutex_lock(&m); int r = ready; pthread_mutex_unlock(&m); if (r == N) break; usleep(1000); }
    usleep(20000);
    crash_now();
    return 0;
}
