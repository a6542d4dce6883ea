//! The network tests again, with the agent forced into its fallback probe mode (no
//! `bpf_task_pt_regs`): connect(2) needs no saved registers, so everything must still work.

const PROBE_MODE: &str = "enter-exit";

#[path = "network.rs"]
mod network;
