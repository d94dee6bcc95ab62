//! `init`: the program `mode=run` runs; prints a greeting and exits 0.

#![no_std]
#![no_main]

guest_user::entry!(main);

fn main(_arg: u64) -> i32 {
    let msg = b"hello from ring 3\n";
    if guest_user::write(1, msg) == msg.len() as i64 {
        0
    } else {
        1
    }
}
