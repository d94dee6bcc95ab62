//! Physical memory: frames, the kernel heap and kernel-half mappings.

pub mod frames;
pub mod heap;
pub mod kmap;
