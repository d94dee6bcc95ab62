/*
 * hello.c: a static x86-64 Linux program for `writewatch run --init`.
 *
 * Built without a C library (the guest has no files to load one from):
 *   cc -static -nostdlib -ffreestanding -fno-pie -no-pie -fno-stack-protector \
 *      -O2 -o hello-c resources/init/hello.c
 * It uses Linux's `syscall` convention and numbers only, so the same binary
 * runs on Linux. It checks the calls a C runtime's start-up and stdio need
 * and exits with a mask of the checks that failed (0: all passed).
 */

typedef unsigned long u64;
typedef long i64;

enum {
	SYS_write = 1, SYS_mmap = 9, SYS_munmap = 11, SYS_brk = 12,
	SYS_writev = 20, SYS_getpid = 39, SYS_fork = 57, SYS_wait4 = 61,
	SYS_arch_prctl = 158, SYS_clock_gettime = 228, SYS_exit_group = 231,
};

static i64 sys6(u64 nr, u64 a, u64 b, u64 c, u64 d, u64 e, u64 f)
{
	i64 ret;
	register u64 r10 __asm__("r10") = d;
	register u64 r8 __asm__("r8") = e;
	register u64 r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static i64 sys3(u64 nr, u64 a, u64 b, u64 c)
{
	return sys6(nr, a, b, c, 0, 0, 0);
}

static u64 len(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

static void say(const char *s)
{
	sys3(SYS_write, 1, (u64)s, len(s));
}

struct iovec { const void *base; u64 len; };
struct timespec { i64 sec; i64 nsec; };

static u64 tls_block[4];

int main(long argc, char **argv, u64 *auxv)
{
	u64 failed = 0;
	int bit = 0;
#define CHECK(cond) do { if (!(cond)) failed |= 1UL << bit; bit++; } while (0)

	say("hello from C on writewatch\n");
	/* 0: the start-up stack is Linux's. */
	CHECK(argc >= 1 && argv[0][0] != 0 && argv[argc] == 0);
	/* 1: the auxiliary vector has the page size. */
	u64 pagesz = 0;
	for (u64 *a = auxv; a[0]; a += 2)
		if (a[0] == 6)
			pagesz = a[1];
	CHECK(pagesz == 4096);
	/* 2: getpid. */
	CHECK(sys3(SYS_getpid, 0, 0, 0) > 0);
	/* 3: anonymous mmap, written and read back, then munmap. */
	char *p = (char *)sys6(SYS_mmap, 0, 4 * 4096, 3, 0x22, (u64)-1, 0);
	int ok = (i64)p > 0;
	for (int i = 0; ok && i < 4 * 4096; i += 4096)
		p[i] = (char)i;
	for (int i = 0; ok && i < 4 * 4096; i += 4096)
		ok = p[i] == (char)i;
	CHECK(ok && sys3(SYS_munmap, (u64)p, 4 * 4096, 0) == 0);
	/* 4: brk grows the heap, which is writable. */
	u64 cur = sys3(SYS_brk, 0, 0, 0);
	u64 grown = sys3(SYS_brk, cur + 8192, 0, 0);
	ok = cur > 0 && grown == cur + 8192;
	if (ok)
		((volatile char *)cur)[8191] = 1;
	CHECK(ok);
	/* 5: arch_prctl(ARCH_SET_FS) sets the TLS pointer. */
	tls_block[0] = (u64)tls_block;
	tls_block[1] = 0x5eed;
	u64 via_fs = 0;
	if (sys3(SYS_arch_prctl, 0x1002, (u64)tls_block, 0) == 0)
		__asm__ volatile("mov %%fs:8, %0" : "=r"(via_fs));
	CHECK(via_fs == 0x5eed);
	/* 6: clock_gettime(CLOCK_MONOTONIC) does not go back. */
	struct timespec t0, t1;
	ok = sys3(SYS_clock_gettime, 1, (u64)&t0, 0) == 0 &&
	     sys3(SYS_clock_gettime, 1, (u64)&t1, 0) == 0;
	CHECK(ok && t0.nsec < 1000000000 && (t1.sec > t0.sec || (t1.sec == t0.sec && t1.nsec >= t0.nsec)));
	/* 7: fork, the child's exit status through wait4. */
	i64 child = sys3(SYS_fork, 0, 0, 0);
	if (child == 0)
		sys3(SYS_exit_group, 7, 0, 0);
	int status = 0;
	CHECK(child > 0 && sys6(SYS_wait4, child, (u64)&status, 0, 0, 0, 0) == child && status == 7 << 8);
	/* 8: writev, as stdio writes. */
	struct iovec iov[2] = { { "writev ", 7 }, { "works\n", 6 } };
	CHECK(sys3(SYS_writev, 1, (u64)iov, 2) == 13);
	/* 9: an unknown call is ENOSYS. */
	CHECK(sys3(4242, 0, 0, 0) == -38);

	say(failed ? "some checks failed\n" : "all checks passed\n");
	return (int)failed;
}

void start_c(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	u64 *envp = (u64 *)(argv + argc + 1);
	while (*envp)
		envp++;
	sys3(SYS_exit_group, (u64)main(argc, argv, envp + 1), 0, 0);
	for (;;)
		;
}

__asm__(".globl _start\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call start_c\n"
	"	ud2\n");
