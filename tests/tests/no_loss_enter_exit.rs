//! The no-loss tests again, with the agent forced into its fallback probe mode (arguments
//! saved by `sys_enter` programs).

const PROBE_MODE: &str = "enter-exit";

#[path = "no_loss.rs"]
mod no_loss;
