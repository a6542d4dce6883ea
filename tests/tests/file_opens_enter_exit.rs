//! The file-open tests again, with the agent forced into its fallback probe mode: arguments
//! saved by `sys_enter` programs (kernels or architectures without `bpf_task_pt_regs`).

const PROBE_MODE: &str = "enter-exit";

#[path = "file_opens.rs"]
mod file_opens;
