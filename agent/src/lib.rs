//! credwatch: an eBPF agent that catches credential theft inside containers.
//!
//! Data flows through one module per stage: `probes` (load, attach, ring buffer) → `events`
//! (validated decoding) → `process` (process table) → `containers` (cgroup → container → pod)
//! → `secrets` (which credential) → `sinks` (forensic log, metrics); `pipeline` strings them
//! together. `policy` holds the policy model; `cli` and `run` are the edge.

pub mod audit;
pub mod cli;
pub mod containers;
pub mod dns;
pub mod error;
pub mod escape;
pub mod events;
pub mod learn;
pub mod pipeline;
pub mod policy;
pub mod probes;
pub mod process;
pub mod replay;
pub mod requests;
pub mod run;
pub mod secrets;
pub mod sinks;
pub mod summaries;
pub mod tls_hello;
