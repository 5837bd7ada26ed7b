/*
 * The kernel's floor under a default answer, for scripts/bench: the reads an
 * answer makes of the kernel, and nothing else (no parsing beyond finding the
 * ranges, no report, no rendering), made from outside the worker.
 *
 * Per round, of worker PID and its master PPID:
 *   - /proc/PID/maps, whole;
 *   - /proc/PID/status, /proc/PPID/status and /proc/PPID/cmdline;
 *   - /proc/PID/pagemap over the program files' private writable mappings
 *     (the answer's copied-on-write pages of nginx and its libraries) and over
 *     every private anonymous writable mapping ([heap], arenas, chunks,
 *     stacks: what the answer's mincore calls cover; mincore works only on
 *     the caller's own memory, so the floor asks pagemap, 8 bytes a page
 *     against mincore's 1).
 *
 * Usage: floor PID PPID ROUNDS; prints the microseconds per round.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char text[1 << 20];
static uint64_t entries[4096];

/* Reads a whole /proc file into `text`; returns its length. */
static size_t read_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t len = 0;
    ssize_t n;
    if (fd < 0)
        return 0;
    while (len < sizeof(text) - 1 && (n = read(fd, text + len, sizeof(text) - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    text[len] = '\0';
    return len;
}

/* Present pages of [start, end) by pagemap. */
static uint64_t present_pages(int pagemap, uint64_t start, uint64_t end, uint64_t page)
{
    uint64_t present = 0;
    for (uint64_t at = start; at < end;) {
        uint64_t pages = (end - at) / page;
        if (pages > sizeof(entries) / 8)
            pages = sizeof(entries) / 8;
        ssize_t got = pread(pagemap, entries, pages * 8, (off_t)(at / page * 8));
        if (got <= 0)
            break;
        for (ssize_t i = 0; i < got / 8; i++)
            present += entries[i] >> 63;
        at += (uint64_t)got / 8 * page;
    }
    return present;
}

static uint64_t round_once(const char *pid, const char *ppid, uint64_t page)
{
    char path[64];
    uint64_t present = 0;
    snprintf(path, sizeof(path), "/proc/%s/status", ppid);
    read_file(path);
    snprintf(path, sizeof(path), "/proc/%s/cmdline", ppid);
    read_file(path);
    snprintf(path, sizeof(path), "/proc/%s/status", pid);
    read_file(path);
    snprintf(path, sizeof(path), "/proc/%s/pagemap", pid);
    int pagemap = open(path, O_RDONLY | O_CLOEXEC);
    snprintf(path, sizeof(path), "/proc/%s/maps", pid);
    read_file(path);
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        unsigned long long start, end, inode;
        char perms[8], name[512] = "";
        if (sscanf(line, "%llx-%llx %7s %*s %*s %llu %511s", &start, &end, perms, &inode, name) >= 4
            && perms[0] == 'r' && perms[1] == 'w' && perms[3] == 'p'
            && (inode != 0 || name[0] == '\0' || strcmp(name, "[heap]") == 0
                || strcmp(name, "[stack]") == 0))
            present += present_pages(pagemap, start, end, page);
        line = next;
    }
    close(pagemap);
    return present;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s PID PPID ROUNDS\n", argv[0]);
        return 2;
    }
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), sink = 0;
    long rounds = atol(argv[3]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++)
        sink += round_once(argv[1], argv[2], page);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / rounds;
    printf("%.1f %llu\n", us, (unsigned long long)(sink / (rounds ? rounds : 1)));
    return 0;
}
