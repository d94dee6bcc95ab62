//! Small identifiers for objects the MM core keeps in maps: address spaces,
//! anon_vmas, shmem objects, open files, hugetlb files and reservation maps, and
//! processes. Ids are never reused.

/// An address space (`struct mm_struct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MmId(pub u64);

/// An anonymous-memory reverse-map root (`struct anon_vma`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AnonVmaId(pub u64);

/// A shared-memory object (`shmem` inode / `struct address_space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShmemId(pub u64);

/// An open file (`struct file`), shared by the descriptors `fork` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u64);

/// A hugetlbfs file (the inode behind every `MAP_HUGETLB` mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HugeFileId(pub u64);

/// A private hugetlb mapping's reservation map (`struct resv_map` hung
/// on the owner's VMA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResvId(pub u64);

/// A userfaultfd context (`struct userfaultfd_ctx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UffdId(pub u64);

/// A process id.
pub type Pid = u32;
