/*
 * files-musl.c: tmpfs files, file I/O and memfd seals from an ordinary C
 * program, for `writewatch run --init` (tests/init.rs runs it on Linux and
 * in the guest and requires the same "files:" lines from both):
 *   musl-gcc -static -O2 -o files-musl resources/init/files-musl.c
 * Uses open/unlink in /dev/shm, pwrite/pread/lseek (SEEK_DATA), a shared
 * mapping of the file, stdio on a file, and F_ADD_SEALS on a memfd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void)
{
	char path[64], spath[64];
	snprintf(path, sizeof path, "/dev/shm/ww-init-%d", (int)getpid());
	snprintf(spath, sizeof spath, "/dev/shm/ww-init-%d-stdio", (int)getpid());
	int fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
	if (fd < 0)
		return 1;
	const char msg[] = "hello tmpfs";
	ssize_t n = pwrite(fd, msg, sizeof msg, 4096);
	printf("files: pwrite %zd size %ld data at %ld\n", n,
	       (long)lseek(fd, 0, SEEK_END), (long)lseek(fd, 0, SEEK_DATA));
	char *m = mmap(0, 8192, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return 2;
	printf("files: mapped \"%s\"\n", m + 4096);
	char buf[32] = { 0 };
	n = pread(fd, buf, sizeof buf, 4096);
	printf("files: pread %zd \"%s\"\n", n, buf);
	int again = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
	printf("files: exclusive create again %d %s\n", again, strerror(errno));
	unlink(path);
	int gone = open(path, O_RDWR);
	printf("files: after unlink %d %s, mapping still \"%s\"\n", gone,
	       strerror(errno), m + 4096);
	int mfd = memfd_create("seals", MFD_ALLOW_SEALING);
	int sealed = fcntl(mfd, F_ADD_SEALS, F_SEAL_GROW);
	int seals = fcntl(mfd, F_GET_SEALS);
	n = write(mfd, msg, 4);
	printf("files: seal %d seals %d grow write %zd %s\n", sealed, seals, n,
	       strerror(errno));
	FILE *f = fopen(spath, "w+");
	if (!f)
		return 3;
	fprintf(f, "via stdio %d\n", 42);
	rewind(f);
	char line[64] = { 0 };
	if (!fgets(line, sizeof line, f))
		return 4;
	fclose(f);
	unlink(spath);
	printf("files: stdio read back \"%.*s\"\n", (int)strcspn(line, "\n"), line);
	return 0;
}
