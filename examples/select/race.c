/* candidate: parallel for without a reduction: every thread adds to one shared total. */
/* Total number of Collatz steps of every value in x[0..n-1]. Values below 2 take no step;
 * a chain is cut off after MAX_STEPS steps so any input terminates. */
#define MAX_STEPS 1000

static long steps_of(long value)
{
    unsigned long v = (unsigned long)value;
    long s = 0;
    if (value < 2)
        return 0;
    while (v != 1 && s < MAX_STEPS) {
        v = (v & 1) ? 3 * v + 1 : v / 2;
        s++;
    }
    return s;
}

long collatz_total(const long *x, long n)
{
    long total = 0;
#pragma omp parallel for
    for (long i = 0; i < n; i++)
        total += steps_of(x[i]);
    return total;
}
