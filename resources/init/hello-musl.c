/*
 * hello-musl.c: an ordinary C program, built against musl and linked
 * statically, for `writewatch run --init`:
 *   musl-gcc -static -O2 -o hello-musl resources/init/hello-musl.c
 * It runs unchanged: musl's start-up (auxiliary vector, TLS through
 * arch_prctl, set_tid_address), stdio (writev), malloc (brk, then mmap for
 * large blocks), fork and waitpid, clock_gettime and usleep, and a 1 MiB
 * stack frame.
 * Exits 0 when its own checks pass.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	int failed = 0;
	char *small = malloc(100);       /* from brk */
	char *large = malloc(1 << 20);   /* from mmap */
	if (!small || !large)
		return 1;
	strcpy(small, "small");
	memset(large, 0x5a, 1 << 20);
	failed |= (large[(1 << 20) - 1] != 0x5a) << 1;
	printf("hello from musl: malloc gave %s and 1 MiB blocks\n", small);
	free(large);
	free(small);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	usleep(20000);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long slept_us = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
	failed |= (slept_us < 20000) << 2;

	pid_t child = fork();
	if (child == 0) {
		printf("child %d of %d\n", getpid(), getppid());
		exit(3);
	}
	int status = 0;
	failed |= (waitpid(child, &status, 0) != child || WEXITSTATUS(status) != 3) << 3;

	errno = 0;
	failed |= (syscall(4242) != -1 || errno != ENOSYS) << 4;

	/* A megabyte on the stack, as ordinary programs take for granted. */
	volatile char frame[1 << 20];
	for (int i = 0; i < (1 << 20); i += 4096)
		frame[i] = (char)i;
	failed |= (frame[(1 << 20) - 4096] != (char)((1 << 20) - 4096)) << 5;

	printf(failed ? "some checks failed: %#x\n" : "all checks passed\n", failed);
	return failed;
}
