//! The process table forgets every process that exits, whenever it exits: here hundreds of
//! processes exit while the agent starts (before, during and after its programs load), the
//! moment a table seeded from /proc can miss their exits.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use credwatch_tests::agent;

const SLEEPERS: usize = 400;
/// The agent keeps exited processes this long (process::EXITED_GRACE), then forgets them at
/// its next 5 s housekeeping; a missed exit takes one more look to be confirmed.
const FORGET_WITHIN: Duration = Duration::from_secs(30 + 5 + 5 + 15);

fn prepare(_work: &Path) -> String {
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

fn live_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

#[test]
fn processes_exiting_while_the_agent_starts_are_not_leaked() {
    let mut sleepers: Vec<_> = (0..SLEEPERS)
        .map(|_| {
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawning sleep")
        })
        .collect();
    // One exits every 5 ms from the moment the agent is spawned, so exits fall before,
    // while and after it reads /proc and loads its programs; the rest go once it is ready.
    let ready = Arc::new(AtomicBool::new(false));
    let killer = {
        let ready = ready.clone();
        std::thread::spawn(move || {
            let mut killed_before_ready = 0;
            while let Some(mut child) = sleepers.pop() {
                let _ = child.kill();
                let _ = child.wait();
                if !ready.load(Ordering::SeqCst) {
                    killed_before_ready += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            killed_before_ready
        })
    };
    // Its housekeeping in the agent's log, should this ever fail again.
    // SAFETY: no other thread reads the environment now (the killer only kills and waits).
    unsafe { std::env::set_var("RUST_LOG", "info,credwatch::pipeline=debug") };
    let agent = agent(prepare, "auto");
    ready.store(true, Ordering::SeqCst);
    let killed_before_ready = killer.join().unwrap();
    eprintln!("{killed_before_ready} of {SLEEPERS} sleepers exited while the agent started");
    assert!(
        killed_before_ready > 20,
        "the exits must overlap the agent's start-up to test anything"
    );

    let deadline = Instant::now() + FORGET_WITHIN;
    let (mut table, mut live);
    loop {
        table = agent.metric("credwatch_processes");
        live = live_processes() as f64;
        if table <= live + 25.0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        table <= live + 25.0,
        "process table holds {table} entries against {live} live processes {FORGET_WITHIN:?} after the exits\n{}\nagent stderr:\n{}",
        agent.metrics(),
        agent.stderr_tail()
    );
}
