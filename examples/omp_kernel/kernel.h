#ifndef KERNEL_H
#define KERNEL_H

/* Total number of Collatz steps of every value in x[0..n-1]. Values below 2 take no
 * step; a chain is cut off after MAX_STEPS steps so any input terminates. */
#define MAX_STEPS 1000

long collatz_total(const long *x, long n);

#endif
