//! Benchmark load: one io_uring NOP submitted and waited for, N times; prints the mean ns per
//! NOP. Every io_uring request passes credwatch's io_uring programs (submission and
//! completion), and a NOP is the cheapest request, so this is their worst case.
//! Usage: credwatch-uringloop ITERATIONS

use std::time::Instant;

fn main() {
    let iterations: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("ITERATIONS");
    let mut ring = io_uring::IoUring::new(8).expect("io_uring_setup");
    let nop = io_uring::opcode::Nop::new().build();
    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop).expect("submission queue full") };
        ring.submit_and_wait(1).expect("io_uring_enter");
        ring.completion().next().expect("a completion");
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{ns:.1}");
}
