//! tmpfs names: one directory, `/dev/shm`, whose files are shmem inodes
//! (the ones memfds and shared anonymous mappings use) reached by name
//! with `open`/`openat` and removed with `unlink`.
//!
//! Mirrors `fs/namei.c` (`do_filp_open`'s create, exclusive and truncate
//! rules, `may_open`'s permission check on an existing file) and
//! `fs/open.c` (`build_open_flags`) as of Linux 6.18, for a process that
//! is not root and owns every file (so only the owner bits of the mode
//! count). The directory holds names only: paths that resolve anywhere
//! else are `ENOENT`, and a name outlives neither `unlink` nor, with its
//! last descriptor and mapping gone, its inode.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::file::{O_ACCMODE, O_WRONLY};
use crate::hw::Hw;
use crate::ids::{Pid, ShmemId};
use crate::system::{MemSystem, Shmem};

/// `O_CREAT`.
pub const O_CREAT: u32 = 0o100;
/// `O_EXCL`.
pub const O_EXCL: u32 = 0o200;
/// `O_NOCTTY`.
pub const O_NOCTTY: u32 = 0o400;
/// `O_TRUNC`.
pub const O_TRUNC: u32 = 0o1000;
/// `O_DIRECTORY`.
pub const O_DIRECTORY: u32 = 0o200000;
/// `O_TMPFILE` (with its `O_DIRECTORY` bit).
pub const O_TMPFILE: u32 = 0o20000000 | O_DIRECTORY;
/// `AT_FDCWD`.
pub const AT_FDCWD: i32 = -100;
/// `PATH_MAX`, the terminating NUL included.
const PATH_MAX: usize = 4096;
/// `NAME_MAX`.
const NAME_MAX: usize = 255;
/// The umask every guest process has (Linux's default).
const UMASK: u32 = 0o022;
/// The tmpfs directory.
const DIR: [&[u8]; 2] = [b"dev", b"shm"];

impl<H: Hw> MemSystem<H> {
    /// `openat(dirfd, path, flags, mode)` (`open` is `dirfd ==
    /// AT_FDCWD`; the working directory is `/`). Returns the descriptor.
    pub fn openat(
        &mut self,
        pid: Pid,
        dirfd: i32,
        path: u64,
        flags: u32,
        mode: u32,
    ) -> Result<u64, Errno> {
        self.proc_mm(pid)?;
        let path = self.path_from_user(pid, path)?;
        if path == b"/proc/self/pagemap" {
            return self.open_pagemap(pid, flags);
        }
        if path == b"/proc/self/clear_refs" {
            return self.open_clear_refs(pid, flags);
        }
        if path.first() != Some(&b'/') && dirfd != AT_FDCWD {
            // Relative to a descriptor: none of ours is a directory.
            self.open_file(pid, dirfd as u64)?;
            return Err(Errno::ENOTDIR);
        }
        let name = tmpfs_name(&path)?;
        if flags & O_TMPFILE == O_TMPFILE {
            return Err(Errno::EOPNOTSUPP);
        }
        let acc = flags & O_ACCMODE;
        let (obj, created) = match self.names.get(&name).copied() {
            Some(_) if flags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL => return Err(Errno::EEXIST),
            Some(obj) => (obj, false),
            None if flags & O_CREAT == 0 => return Err(Errno::ENOENT),
            None => {
                let id = ShmemId(self.new_id());
                let mut s = Shmem::new(0);
                s.mode = mode & 0o7777 & !UMASK;
                s.linked = true;
                self.shmems.insert(id, s);
                self.names.insert(name, id);
                (id, true)
            }
        };
        if !created {
            if flags & O_DIRECTORY != 0 {
                return Err(Errno::ENOTDIR);
            }
            // may_open: a file just created is not checked; O_TRUNC and
            // O_APPEND ask for write permission.
            let mode = self.shmems[&obj].mode;
            let wants_read = acc != O_WRONLY;
            let wants_write = acc != 0 || flags & O_TRUNC != 0;
            if (wants_read && mode & 0o400 == 0) || (wants_write && mode & 0o200 == 0) {
                return Err(Errno::EACCES);
            }
            if flags & O_TRUNC != 0 {
                self.shmem_set_size(obj, 0)?;
            }
        }
        let kept = flags & !(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC);
        Ok(self.install_fd(pid, obj, kept))
    }

    /// `unlink(path)`: the name goes; the inode stays while descriptors
    /// or mappings hold it.
    pub fn unlink(&mut self, pid: Pid, path: u64) -> Result<(), Errno> {
        self.proc_mm(pid)?;
        let path = self.path_from_user(pid, path)?;
        let name = tmpfs_name(&path)?;
        let obj = self.names.remove(&name).ok_or(Errno::ENOENT)?;
        self.shmems.get_mut(&obj).expect("live shmem").linked = false;
        self.shmem_release_if_unused(obj);
        Ok(())
    }

    /// `strncpy_from_user` of a path: `EFAULT` on a bad address,
    /// `ENAMETOOLONG` without a NUL in `PATH_MAX` bytes, `ENOENT` if empty.
    fn path_from_user(&mut self, pid: Pid, va: u64) -> Result<Vec<u8>, Errno> {
        let mut path = Vec::new();
        loop {
            let mut b = [0u8];
            self.copy_from_user(
                pid,
                va.checked_add(path.len() as u64).ok_or(Errno::EFAULT)?,
                &mut b,
            )?;
            if b[0] == 0 {
                break;
            }
            path.push(b[0]);
            if path.len() >= PATH_MAX {
                return Err(Errno::ENAMETOOLONG);
            }
        }
        if path.is_empty() {
            return Err(Errno::ENOENT);
        }
        Ok(path)
    }
}

/// The name inside `/dev/shm` that `path` (absolute, or relative to `/`)
/// refers to.
fn tmpfs_name(path: &[u8]) -> Result<Vec<u8>, Errno> {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if parts.iter().any(|c| c.len() > NAME_MAX) {
        return Err(Errno::ENAMETOOLONG);
    }
    match parts.as_slice() {
        [d, s, name] if [*d, *s] == DIR && *name != b".." => Ok(name.to_vec()),
        _ => Err(Errno::ENOENT),
    }
}
