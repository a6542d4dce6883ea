//! What the agent's packet program (`endpoint_requests`, cgroup_skb egress on the cgroup2
//! root) costs every packet a node sends, against the floor: an empty cgroup_skb egress program
//! attached beside it, which sees the same packets. The load is a TCP stream over loopback of
//! one-byte writes (one segment each, plus the ACKs), none to a credential endpoint: what every
//! ordinary connection pays.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// Writes per round.
const WRITES: u64 = 200_000;

pub fn egress(agent: &Path, rounds: u32) -> Result<()> {
    let empty = EmptyEgress::attach()?;
    let mut ours = Vec::new();
    let mut reading = Vec::new();
    let mut floor = Vec::new();
    for round in 1..=rounds {
        let tracer = super::start_tracer("credwatch", agent)?.context("the agent")?;
        let before = program_stats()?;
        stream(WRITES)?;
        let middle = program_stats()?;
        // The same stream while one other connection is being read: a connect to port 443 of
        // an address nothing named (its ClientHello would be read), held open, silent.
        let held = HeldConnection::open()?;
        stream(WRITES)?;
        let after = program_stats()?;
        drop(held);
        super::stop(tracer);
        let per_packet = |from: &Stats, to: &Stats, name: &str| -> Result<f64> {
            let find = |stats: &Stats| {
                stats
                    .iter()
                    .find(|(n, _)| n.starts_with(name))
                    .map(|(_, v)| *v)
            };
            let (ns0, n0) = find(from).unwrap_or_default();
            let (ns1, n1) = find(to).context(format!("program {name} not loaded"))?;
            if n1 <= n0 {
                bail!("program {name} did not run");
            }
            Ok((ns1 - ns0) as f64 / (n1 - n0) as f64)
        };
        let e = per_packet(&before, &middle, EMPTY_NAME)?;
        let o = per_packet(&before, &middle, AGENT_NAME)?;
        let r = per_packet(&middle, &after, AGENT_NAME)?;
        println!(
            "round {round}/{rounds}: egress program {o:.1} ns/packet ({r:.1} while a connection is read), empty cgroup_skb {e:.1} ns/packet"
        );
        floor.push(e);
        ours.push(o);
        reading.push(r);
    }
    drop(empty);
    println!();
    println!(
        "cgroup_skb egress program time per packet (kernel.bpf_stats_enabled), loopback TCP stream of {WRITES} one-byte writes, median of {rounds} rounds, against an empty cgroup_skb egress program"
    );
    super::print_table(
        "program ns per packet",
        &[
            "empty cgroup_skb",
            "endpoint_requests",
            "endpoint_requests, one connection being read",
        ],
        &mut [floor, ours, reading],
    );
    Ok(())
}

type Stats = std::collections::HashMap<String, (u64, u64)>;

/// A silent TCP connection to 127.0.0.1:443 (a host-name endpoint's port, at an address
/// nothing named): the agent's connect hook asks the packet program to read its first
/// payloads, so while it is open every packet takes the slower path.
struct HeldConnection {
    _client: TcpStream,
    _server: TcpStream,
}

impl HeldConnection {
    fn open() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:443").context("listening on 127.0.0.1:443")?;
        let client = TcpStream::connect("127.0.0.1:443")?;
        let (server, _) = listener.accept()?;
        Ok(HeldConnection {
            _client: client,
            _server: server,
        })
    }
}

/// Names as the kernel keeps them (15 bytes).
const AGENT_NAME: &str = "endpoint_reques";
const EMPTY_NAME: &str = "cw_bench_empty";

/// (run_time_ns, run_cnt) of every loaded program, by name (`bpftool prog show`; names as the
/// kernel keeps them, or whole from BTF).
fn program_stats() -> Result<std::collections::HashMap<String, (u64, u64)>> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let programs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut stats = std::collections::HashMap::new();
    for p in programs.as_array().context("bpftool prog show")? {
        if let (Some(name), Some(ns), Some(runs)) = (
            p["name"].as_str(),
            p["run_time_ns"].as_u64(),
            p["run_cnt"].as_u64(),
        ) {
            let entry = stats.entry(name.to_string()).or_insert((0, 0));
            entry.0 += ns;
            entry.1 += runs;
        }
    }
    Ok(stats)
}

/// One-byte writes over loopback TCP, each its own segment, read by a second thread.
fn stream(writes: u64) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut peer, _) = listener.accept()?;
        let mut buf = [0u8; 4096];
        let mut total = 0u64;
        loop {
            let n = peer.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut client = TcpStream::connect(address)?;
    client.set_nodelay(true)?;
    for _ in 0..writes {
        client.write_all(b"x")?;
    }
    drop(client);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    if read != writes {
        bail!("read {read} of {writes} bytes");
    }
    Ok(())
}

/// An empty cgroup_skb egress program (`r0 = 1; exit`: let everything through) on the cgroup2
/// root, loaded and attached with bpf(2) directly (multi-attach, beside the agent's link).
struct EmptyEgress {
    program: OwnedFd,
    cgroup: std::fs::File,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_F_ALLOW_MULTI: u32 = 2;

impl EmptyEgress {
    fn attach() -> Result<Self> {
        // mov64 r0, 1; exit
        let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
        // log_size, log_buf, kern_version, prog_flags, prog_name[16], ...
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SKB.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..48 + EMPTY_NAME.len()].copy_from_slice(EMPTY_NAME.as_bytes());
        attr[68..72].copy_from_slice(&BPF_CGROUP_INET_EGRESS.to_ne_bytes());
        // SAFETY: a valid bpf_attr of the size given, pointing at live buffers.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), 128) };
        if fd < 0 {
            bail!(
                "loading an empty cgroup_skb program: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a fresh fd we own.
        let program = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let cgroup = std::fs::File::open(cgroup2_root()?)?;
        let ok = Self::attach_op(BPF_PROG_ATTACH, &cgroup, &program);
        if ok < 0 {
            bail!("attaching it: {}", std::io::Error::last_os_error());
        }
        Ok(EmptyEgress { program, cgroup })
    }

    fn attach_op(op: libc::c_long, cgroup: &std::fs::File, program: &OwnedFd) -> libc::c_long {
        // BPF_PROG_ATTACH/DETACH: target_fd, attach_bpf_fd, attach_type, attach_flags (detach
        // takes none).
        let flags = if op == BPF_PROG_ATTACH {
            BPF_F_ALLOW_MULTI
        } else {
            0
        };
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_CGROUP_INET_EGRESS.to_ne_bytes());
        attr[12..16].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: a valid bpf_attr of the size given.
        unsafe { libc::syscall(libc::SYS_bpf, op, attr.as_ptr(), 128) }
    }
}

impl Drop for EmptyEgress {
    fn drop(&mut self) {
        if Self::attach_op(BPF_PROG_DETACH, &self.cgroup, &self.program) < 0 {
            eprintln!(
                "xtask: detaching the empty cgroup_skb program failed ({}): `bpftool cgroup show` it",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The last cgroup2 mount in mountinfo (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> Result<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .rev()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next() == Some("cgroup2")).then(|| left.split(' ').nth(4))?
        })
        .map(str::to_string)
        .context("no cgroup2 mount")
}
