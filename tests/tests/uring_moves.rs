//! A rename through io_uring that is never seen to end (IOSQE_CQE_SKIP_SUCCESS: its completion
//! is not traced) and that runs later (linked behind a read from an empty pipe): the kernel
//! filter must not keep what it remembered between its submission and its execution. Its own
//! test binary (and agent): after such a rename the agent's filter remembers nothing until the
//! agent restarts, which the other tests' agents must not inherit.

use std::{
    ffi::CString,
    path::Path,
    time::{Duration, Instant},
};

use credwatch_tests::{Agent, Workload, agent};
use io_uring::{opcode, squeue::Flags, types};

fn prepare(work: &Path) -> String {
    let control = work.join("secrets");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::write(control.join("control"), "x").unwrap();
    format!(
        "    - name: e2e-control\n      paths: [\"{}/**\"]\n    - name: e2e-uring-moved\n      paths: [\"{}/place/vault/**\"]\n",
        control.display(),
        work.display()
    )
}

fn setup() -> &'static Agent {
    agent(prepare, "auto")
}

#[test]
fn a_delayed_io_uring_rename_without_completion_outlives_nothing_remembered() {
    let agent = setup();
    let stage = agent.work.join("stage/vault");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::create_dir_all(agent.work.join("place")).unwrap();
    let staged = stage.join("stuff.dat");
    std::fs::write(&staged, "x").unwrap();
    let control = agent.work.join("secrets/control").display().to_string();

    // The rename, linked behind a one-byte read from an empty pipe: submitted now, run later.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe(2) with room for two fds.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let old = CString::new(stage.display().to_string()).unwrap();
    let new = CString::new(agent.work.join("place/vault").display().to_string()).unwrap();
    let mut byte = [0u8; 1];
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    let read = opcode::Read::new(types::Fd(pipe[0]), byte.as_mut_ptr(), 1)
        .build()
        .flags(Flags::IO_LINK)
        .user_data(1);
    let rename = opcode::RenameAt::new(
        types::Fd(libc::AT_FDCWD),
        old.as_ptr(),
        types::Fd(libc::AT_FDCWD),
        new.as_ptr(),
    )
    .build()
    .flags(Flags::SKIP_SUCCESS)
    .user_data(2);
    // SAFETY: the names and the buffer outlive the requests (the ring lives to the end).
    unsafe {
        let mut sq = ring.submission();
        sq.push(&read).expect("submission queue full");
        sq.push(&rename).expect("submission queue full");
    }
    ring.submit().expect("io_uring_enter");

    // Decided while the rename waits: not a credential where it is now.
    let staged = staged.display().to_string();
    let workload = Workload::run(&["openat", &staged, "x3", "--next", "openat", &control]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "only the control: {records:#?}");

    // Release the rename and wait for it to have happened.
    // SAFETY: writing one byte from a valid buffer to the pipe's write end.
    assert_eq!(unsafe { libc::write(pipe[1], b"x".as_ptr().cast(), 1) }, 1);
    let moved = agent.work.join("place/vault/stuff.dat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !moved.exists() {
        assert!(Instant::now() < deadline, "the io_uring rename never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved = moved.display().to_string();
    let workload = Workload::run(&["openat", &moved]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["file"]["path"], moved.as_str());
    assert_eq!(records[0]["secret"]["name"], "e2e-uring-moved");
    let unseen = r#"credwatch_kernel_events_total{outcome="unmatched",probe="tree_move"}"#;
    assert!(agent.metric(unseen) >= 1.0, "{}", agent.metrics());
    drop(ring);
    // SAFETY: closing the pipe's two fds, not used after.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
}
