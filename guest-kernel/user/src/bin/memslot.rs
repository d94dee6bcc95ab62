//! `memslot`: stores its argument in a global and exits with the value that
//! was there before. Two processes running it must not see each other's
//! values (separate address spaces), while one process sees its own value
//! on its next run.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

guest_user::entry!(main);

static SLOT: AtomicU64 = AtomicU64::new(0);

fn main(arg: u64) -> i32 {
    SLOT.swap(arg, Ordering::SeqCst) as i32
}
