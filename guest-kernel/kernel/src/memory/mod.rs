//! Physical memory: the boot frame allocator, the kernel heap, kernel-half
//! mappings, and the MM core (`guest-mm`) that manages user memory.

pub mod frames;
pub mod heap;
pub mod hw;
pub mod kmap;
pub mod mm;
