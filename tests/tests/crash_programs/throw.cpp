// An uncaught exception thrown from an inlined function: std::terminate,
// abort through libstdc++ and glibc (no frame pointers there).
#include <stdexcept>
#include <cstdio>
namespace app {
__attribute__((always_inline)) inline void validate(int v) {
    if (v < 100) throw std::runtime_error("value too small");
}
__attribute__((noinline)) int process(int v) {
    validate(v);
    std::printf("ok\n");
    return v * 2;
}
}
int main(int argc, char **) { return app::process(argc); }
