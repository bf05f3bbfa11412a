/* Times collatz_total on a fixed pseudo-random input (same input every run). */
#include <stdio.h>
#include <stdlib.h>
#include "kernel.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 400001;
    long *x = malloc(sizeof(long) * (size_t)n);
    unsigned long seed = 12345;
    if (!x)
        return 1;
    for (long i = 0; i < n; i++) {
        seed = seed * 6364136223846793005UL + 1442695040888963407UL;
        x[i] = 1 + (long)((seed >> 33) % 1000000);
    }
    printf("%ld\n", collatz_total(x, n));
    free(x);
    return 0;
}
