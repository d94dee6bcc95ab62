//! `exit42`: exits with status 42 (the exit status reaches the kernel).

#![no_std]
#![no_main]

guest_user::entry!(main);

fn main(_arg: u64) -> i32 {
    42
}
