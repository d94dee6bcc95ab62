//! `getpid`: exits with its own process id.

#![no_std]
#![no_main]

guest_user::entry!(main);

fn main(_arg: u64) -> i32 {
    guest_user::getpid() as i32
}
