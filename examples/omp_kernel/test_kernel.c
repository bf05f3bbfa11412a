/* The repository's own correctness test for collatz_total. */
#include <stdio.h>
#include "kernel.h"

static int failures = 0;

static void check(const char *name, long got, long want)
{
    if (got != want) {
        printf("FAIL %s: got %ld, want %ld\n", name, got, want);
        failures++;
    } else {
        printf("ok %s\n", name);
    }
}

int main(void)
{
    static long up_to[10000];
    long small[8] = {1, 2, 3, 6, 7, 9, 27, 97};
    long edge[4] = {0, -5, 1, 2};
    for (long i = 0; i < 10000; i++)
        up_to[i] = i + 1;
    check("empty", collatz_total(small, 0), 0);
    check("small", collatz_total(small, 8), 280);
    check("edge", collatz_total(edge, 4), 1);
    check("1..10000", collatz_total(up_to, 10000), 849666);
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
