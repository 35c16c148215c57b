// LD_PRELOAD: split the main executable's text mapping into 4 KiB VMAs (alternating
// r-x / rwx) so the kernel's fault-around cannot map neighbours: pagemap then shows exactly
// the text pages the process touched. Measurement aid only.
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
__attribute__((constructor)) static void split(void) {
    char exe[4096]; ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return; exe[n] = 0;
    FILE *f = fopen("/proc/self/maps", "r"); if (!f) return;
    char line[8192]; unsigned long lo = 0, hi = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b; char perm[8]; char path[4096] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %4095s", &a, &b, perm, path) >= 3 &&
            strcmp(path, exe) == 0 && perm[2] == 'x') { lo = a; hi = b; }
    }
    fclose(f);
    for (unsigned long p = lo; p < hi; p += 8192)
        mprotect((void *)p, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
    // Drop what was mapped so far (the loader's and this constructor's faults).
    madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
