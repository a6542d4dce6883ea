// Empty on the host: this lets the agent name the crate as a build-dependency so cargo rebuilds
// the agent when the kernel programs change. The programs themselves are in `main.rs`.
#![no_std]
