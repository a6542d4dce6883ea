//! File-open probes end to end: every way of naming a credential resolves to the same path and
//! (dev, ino); non-credentials never leave the kernel; failures and deep paths are recorded.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use credwatch_tests::{Agent, Workload, agent, dev_ino};
use serde_json::Value;

/// The agent's probe mode for this test binary: the best this kernel offers.
/// `file_opens_enter_exit.rs` runs these tests again with the fallback forced.
#[allow(dead_code)]
const PROBE_MODE: &str = "auto";

/// Deeper than the kernel's walk bound (MAX_PATH_STEPS = 40).
const DEEP_LEVELS: usize = 48;

fn prepare(work: &Path) -> String {
    let secrets = work.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let secret = secrets.join("db_password");
    std::fs::write(&secret, "not-a-real-password\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(work.join("links")).unwrap();
    std::os::unix::fs::symlink("../secrets/db_password", work.join("links/sym")).unwrap();
    // A hardlink outside every catalogue path: only the inode names it as the secret.
    std::fs::create_dir_all(work.join("elsewhere")).unwrap();
    std::fs::hard_link(&secret, work.join("elsewhere/innocent.txt")).unwrap();
    std::fs::create_dir_all(work.join("plain")).unwrap();
    std::fs::write(work.join("plain/readme.txt"), "hello\n").unwrap();
    let mut deep = work.join("deep");
    for _ in 0..DEEP_LEVELS {
        deep.push("d");
    }
    std::fs::create_dir_all(deep.join(".aws")).unwrap();
    std::fs::write(deep.join(".aws/credentials"), "[default]\n").unwrap();
    format!(
        "    - name: e2e-secrets\n      paths: [\"{}/**\"]\n    - name: e2e-host-keys\n      paths: [\"{}/keys/host_*_key\"]\n",
        secrets.display(),
        work.display()
    )
}

fn setup() -> &'static Agent {
    agent(prepare, crate::PROBE_MODE)
}

/// Adds a catalogue entry `name` for `pattern` in a policy file of its own, and waits until
/// the agent has loaded it.
fn add_catalogue_entry(agent: &Agent, file: &str, name: &str, pattern: &str) {
    let reloads = r#"credwatch_policy_reloads_total{result="success"}"#;
    let reloaded = agent.metric(reloads);
    std::fs::write(
        agent.work.join("policies").join(file),
        format!(
            "apiVersion: credwatch.dev/v1alpha1\nkind: CredentialCatalog\nmetadata:\n  name: {name}\nspec:\n  files:\n    - name: {name}\n      paths: [\"{pattern}\"]\n"
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while agent.metric(reloads) <= reloaded {
        assert!(std::time::Instant::now() < deadline, "no reload");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn secret_path(agent: &Agent) -> String {
    agent.work.join("secrets/db_password").display().to_string()
}

/// Opens through `args`, expects exactly one record, and checks it names the secret.
fn assert_names_the_secret(args: &[&str]) -> Value {
    let agent = setup();
    let secret = secret_path(agent);
    let (dev, ino) = dev_ino(Path::new(&secret));
    let workload = Workload::run(args);
    assert!(
        workload.results[0] >= 0,
        "{args:?} failed: {:?}",
        workload.results
    );
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = records.into_iter().next().unwrap();
    assert_eq!(record["file"]["path"], secret.as_str(), "{record:#}");
    assert_eq!(record["file"]["dev"], dev, "{record:#}");
    assert_eq!(record["file"]["ino"], ino, "{record:#}");
    assert_eq!(record["secret"]["name"], "e2e-secrets");
    assert_eq!(record["kind"], "file");
    assert_eq!(record["schema"], 1);
    assert_eq!(record["node"], "e2e-node");
    assert_eq!(record["process"]["pid"], workload.pid);
    assert!(
        record["process"]["exe"]
            .as_str()
            .unwrap()
            .ends_with("credwatch-opener"),
        "{record:#}"
    );
    assert_eq!(
        record["process"]["args"][0]
            .as_str()
            .map(|a| a.ends_with("credwatch-opener")),
        Some(true)
    );
    record
}

#[test]
fn probe_mode_is_reported() {
    let agent = setup();
    let modes: &[&str] = match crate::PROBE_MODE {
        "enter-exit" => &["tracepoint-enter-exit"],
        _ => &["tracepoint-exit", "tracepoint-enter-exit"],
    };
    for probe in ["open", "openat", "openat2", "creat", "open_by_handle_at"] {
        let attached: f64 = modes
            .iter()
            .map(|mode| {
                agent.metric(&format!(
                    "credwatch_probe_attached{{mode=\"{mode}\",probe=\"{probe}\"}}"
                ))
            })
            .sum();
        assert_eq!(
            attached,
            1.0,
            "{probe} attached in one of {modes:?}:\n{}",
            agent.metrics()
        );
    }
}

#[test]
fn absolute_path() {
    let secret = secret_path(setup());
    let record = assert_names_the_secret(&["openat", &secret]);
    assert_eq!(record["file"]["raw_path"], secret.as_str());
    assert_eq!(record["file"]["syscall"], "openat");
    assert_eq!(record["file"]["flags"][0], "O_RDONLY");
}

#[test]
fn relative_path_after_chdir() {
    let dir = setup().work.join("secrets").display().to_string();
    let record = assert_names_the_secret(&["chdir-open", &dir, "db_password"]);
    assert_eq!(record["file"]["raw_path"], "db_password");
}

#[test]
fn openat_with_a_dirfd() {
    let dir = setup().work.join("secrets").display().to_string();
    let record = assert_names_the_secret(&["openat-dir", &dir, "db_password"]);
    assert_eq!(record["file"]["raw_path"], "db_password");
}

#[test]
fn through_a_symlink() {
    let link = setup().work.join("links/sym").display().to_string();
    let record = assert_names_the_secret(&["openat", &link]);
    assert_eq!(record["file"]["raw_path"], link.as_str());
}

#[test]
fn through_a_hardlink_made_elsewhere() {
    let link = setup()
        .work
        .join("elsewhere/innocent.txt")
        .display()
        .to_string();
    let record = assert_names_the_secret(&["openat", &link]);
    assert_eq!(record["file"]["opened_path"], link.as_str(), "{record:#}");
}

#[test]
fn through_dot_dot_segments() {
    let path = setup()
        .work
        .join("secrets/../links/../secrets/./db_password")
        .display()
        .to_string();
    let record = assert_names_the_secret(&["openat", &path]);
    assert_eq!(record["file"]["raw_path"], path.as_str());
}

#[test]
fn through_proc_self_root() {
    let path = format!("/proc/self/root{}", secret_path(setup()));
    assert_names_the_secret(&["openat", &path]);
}

#[test]
fn every_open_syscall() {
    let secret = secret_path(setup());
    for syscall in ["open", "openat2", "by-handle"] {
        let record = assert_names_the_secret(&[syscall, &secret]);
        let expected = if syscall == "by-handle" {
            "open_by_handle_at"
        } else {
            syscall
        };
        assert_eq!(record["file"]["syscall"], expected);
    }
    // creat makes a new file: a new inode, named by its path.
    let agent = setup();
    let created = agent
        .work
        .join("secrets/created_by_creat")
        .display()
        .to_string();
    let workload = Workload::run(&["creat", &created]);
    let records = agent.wait_records(workload.pid, 1);
    let (dev, ino) = dev_ino(Path::new(&created));
    assert_eq!(records[0]["file"]["path"], created.as_str());
    assert_eq!(
        (
            records[0]["file"]["dev"].as_u64(),
            records[0]["file"]["ino"].as_u64()
        ),
        (Some(dev), Some(ino))
    );
    assert_eq!(records[0]["file"]["syscall"], "creat");
    let flags: Vec<&str> = records[0]["file"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(flags, ["O_WRONLY", "O_CREAT", "O_TRUNC"]);
}

/// io_uring opens never enter an open syscall: IORING_OP_OPENAT is followed to its completion
/// and judged like any open. An open into a fixed-file slot has no fd to follow, and one that
/// skips its completion is not traced: both are counted (`unmatched`), not lost silently.
#[test]
fn io_uring_opens() {
    let agent = setup();
    let secret = secret_path(agent);
    let record = assert_names_the_secret(&["io_uring", &secret]);
    assert_eq!(record["file"]["syscall"], "io_uring_open", "{record:#}");
    assert_eq!(record["file"]["flags"][0], "O_RDONLY", "{record:#}");
    // The path as the process gave it, kept from the submission (io_uring frees it before
    // the completion).
    assert_eq!(record["file"]["raw_path"], secret.as_str(), "{record:#}");
    assert_eq!(record["file"]["flags"][1], "O_CLOEXEC", "{record:#}");

    let series = r#"credwatch_kernel_events_total{outcome="unmatched",probe="io_uring_open"}"#;
    let before = agent.metric(series);
    // A fixed-slot open and one without a completion, then an ordinary one from the same
    // process as a positive control.
    let workload = Workload::run(&[
        "io_uring-fixed",
        &secret,
        "--next",
        "io_uring-skip",
        &secret,
        "--next",
        "io_uring",
        &secret,
    ]);
    assert_eq!(workload.results[..2], [0, 0]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["file"]["syscall"], "io_uring_open");
    assert_eq!(agent.metric(series) - before, 2.0, "{}", agent.metrics());
    assert_eq!(
        agent.metric(r#"credwatch_probe_attached{mode="tp_btf",probe="io_uring_open"}"#),
        1.0
    );
}

#[test]
fn non_credential_opens_stay_in_the_kernel() {
    let agent = setup();
    let series = r#"credwatch_kernel_events_total{outcome="filtered",probe="openat"}"#;
    let before = agent.metric(series);
    let plain = agent.work.join("plain/readme.txt").display().to_string();
    let secret = secret_path(agent);
    // 1000 plain opens, then one secret open from the same process as a positive control.
    let workload = Workload::run(&["openat", &plain, "x1000", "--next", "openat", &secret]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(
        records.len(),
        1,
        "only the secret is reported: {records:#?}"
    );
    assert_eq!(records[0]["file"]["path"], secret.as_str());
    let after = agent.metric(series);
    assert!(
        after - before >= 1000.0,
        "filtered counter rose by {} (before {before}, after {after})",
        after - before
    );
}

/// A prefix key that ends inside a file name (`…/keys/host_*_key`): its directory is one the
/// kernel must always walk, however many other files there it has already decided on. The
/// key is created now, after the agent's secret search, so only its path can name it.
#[test]
fn a_prefix_ending_inside_a_file_name_is_matched_after_other_files_there() {
    let agent = setup();
    let keys = agent.work.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let other = keys.join("other.txt");
    std::fs::write(&other, "x").unwrap();
    let key = keys.join(format!("host_{}_key", std::process::id()));
    std::fs::write(&key, "not-a-real-key").unwrap();
    let (other, key) = (other.display().to_string(), key.display().to_string());
    let workload = Workload::run(&["openat", &other, "x3", "--next", "openat", &key]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["file"]["path"], key.as_str());
    assert_eq!(records[0]["secret"]["name"], "e2e-host-keys");
}

/// The kernel remembers per directory that no prefix key can match a file there; a catalogue
/// change must make it decide again, or a remembered "no" would hide the new entry's files.
/// The file read after the change is new, so only its path (not the secret search) names it.
#[test]
fn a_directory_decided_before_a_catalogue_change_is_decided_again() {
    let agent = setup();
    let dir = agent.work.join(format!("later-{}", crate::PROBE_MODE));
    std::fs::create_dir_all(&dir).unwrap();
    let before_change = dir.join("notes.txt");
    std::fs::write(&before_change, "x").unwrap();
    let before_change = before_change.display().to_string();
    // Decided with today's keys, and remembered: not a credential.
    let plain = agent.work.join("plain/readme.txt").display().to_string();
    let secret = secret_path(agent);
    let workload = Workload::run(&[
        "openat",
        &before_change,
        "x3",
        "--next",
        "openat",
        &plain,
        "--next",
        "openat",
        &secret,
    ]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "only the control: {records:#?}");
    assert_eq!(records[0]["file"]["path"], secret.as_str());

    add_catalogue_entry(
        agent,
        "e2e-later.yaml",
        "e2e-later",
        &format!("{}/**", dir.display()),
    );
    let after_change = dir.join("new.txt");
    std::fs::write(&after_change, "x").unwrap();
    let after_change = after_change.display().to_string();
    let workload = Workload::run(&["openat", &after_change]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["file"]["path"], after_change.as_str());
    assert_eq!(records[0]["secret"]["name"], "e2e-later");
}

/// The kernel remembers files it found not to be credentials; when the secret inodes change
/// it must decide them again. A file read (and remembered) before it got a hardlink under a
/// catalogue path is reported by its inode once the agent's secret search has found the link.
#[test]
fn a_file_remembered_as_harmless_is_decided_again_when_it_becomes_a_secret() {
    let agent = setup();
    let dir = agent.work.join(format!("remembered-{}", crate::PROBE_MODE));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data.bin");
    std::fs::write(&file, "x").unwrap();
    let file = file.display().to_string();
    let secret = secret_path(agent);
    let workload = Workload::run(&["openat", &file, "x3", "--next", "openat", &secret]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "only the control: {records:#?}");
    assert_eq!(records[0]["file"]["path"], secret.as_str());

    let link = agent
        .work
        .join(format!("secrets/linked-{}", std::process::id()));
    std::fs::hard_link(&file, &link).unwrap();
    // The secret search runs every 10 s; read the file until it is reported by its inode.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let record = loop {
        let workload = Workload::run(&["openat", &file]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Some(record) = agent.records_of(workload.pid).into_iter().next() {
            break record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported after it became a secret's hardlink"
        );
    };
    // Named by the secret it is (the link the search found), read through its own path.
    assert_eq!(
        record["file"]["path"],
        link.display().to_string(),
        "{record:#}"
    );
    assert_eq!(record["file"]["opened_path"], file.as_str(), "{record:#}");
    assert_eq!(record["secret"]["name"], "e2e-secrets", "{record:#}");
}

/// Whether a file named like a credential (`credentials`) is one depends on its directories,
/// which a rename higher up changes without changing anything of the file: read at another
/// path before, it must still be reported once its directory is renamed back (`**/.aws/…`
/// has no literal directory, so no secret search names it by inode).
#[test]
fn a_credential_read_before_its_directory_was_renamed_back_is_reported() {
    let agent = setup();
    let home = agent.work.join(format!("home-{}", crate::PROBE_MODE));
    let aws = home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(aws.join("credentials"), "[default]\n").unwrap();
    let elsewhere = home.join("x");
    std::fs::rename(&aws, &elsewhere).unwrap();
    let moved = elsewhere.join("credentials").display().to_string();
    let secret = secret_path(agent);
    let workload = Workload::run(&["openat", &moved, "x3", "--next", "openat", &secret]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "only the control: {records:#?}");
    assert_eq!(records[0]["file"]["path"], secret.as_str());

    std::fs::rename(&elsewhere, &aws).unwrap();
    let back = aws.join("credentials").display().to_string();
    let workload = Workload::run(&["openat", &back]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["file"]["path"], back.as_str());
    assert_eq!(records[0]["secret"]["name"], "aws-shared-credentials");
}

/// What the kernel remembers per file and per directory is keyed by dentries, which a rename
/// of a directory keeps: a directory whose files were decided (not credentials) elsewhere and
/// then moved onto a prefix key's way must have them decided again at once, not when the
/// secret search (every 10 s) finds them there. The file is new to the search and read right
/// after the move, so only its path can name it.
#[test]
fn a_directory_moved_onto_a_prefix_keys_way_is_decided_again_at_once() {
    let agent = setup();
    let place = agent.work.join(format!("moved-{}", crate::PROBE_MODE));
    let stage = agent.work.join(format!("stage-{}", crate::PROBE_MODE));
    std::fs::create_dir_all(&place).unwrap();
    std::fs::create_dir_all(stage.join("vault")).unwrap();
    // A catalogue entry for `<place>/vault/**`, loaded before anything below is decided.
    add_catalogue_entry(
        agent,
        &format!("e2e-moved-{}.yaml", crate::PROBE_MODE),
        "e2e-moved",
        &format!("{}/vault/**", place.display()),
    );
    let staged = stage.join("vault/stuff.dat");
    std::fs::write(&staged, "x").unwrap();
    let staged = staged.display().to_string();
    let secret = secret_path(agent);
    // Decided and remembered: not a credential where it is.
    let workload = Workload::run(&["openat", &staged, "x3", "--next", "openat", &secret]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "only the control: {records:#?}");
    assert_eq!(records[0]["file"]["path"], secret.as_str());

    std::fs::rename(stage.join("vault"), place.join("vault")).unwrap();
    let moved = place.join("vault/stuff.dat").display().to_string();
    let workload = Workload::run(&["openat", &moved]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["file"]["path"], moved.as_str());
    assert_eq!(records[0]["secret"]["name"], "e2e-moved");

    // A directory of any name moved below the key (`mv /tmp/x /run/secrets/x`), through a
    // relative name from the directory it lands in.
    let other = stage.join("x7/other.dat");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, "x").unwrap();
    let other = other.display().to_string();
    let workload = Workload::run(&["openat", &other, "x3", "--next", "openat", &secret]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "only the control: {records:#?}");
    let status = std::process::Command::new("mv")
        .arg(stage.join("x7"))
        .arg("x7")
        .current_dir(place.join("vault"))
        .status()
        .unwrap();
    assert!(status.success());
    let below = place.join("vault/x7/other.dat").display().to_string();
    let workload = Workload::run(&["openat", &below]);
    let records = agent.wait_records(workload.pid, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["file"]["path"], below.as_str());
    assert_eq!(records[0]["secret"]["name"], "e2e-moved");
}

#[test]
fn failed_opens_are_recorded_with_their_errno() {
    let agent = setup();
    let missing = agent
        .work
        .join("secrets/does/../not_there")
        .display()
        .to_string();
    let workload = Workload::run(&["openat", &missing]);
    assert_eq!(workload.results[0], -libc::ENOENT as i64);
    let record = &agent.wait_records(workload.pid, 1)[0];
    assert_eq!(record["file"]["errno"], "ENOENT", "{record:#}");
    assert_eq!(record["file"]["result"], -libc::ENOENT as i64);
    assert_eq!(record["file"]["raw_path"], missing.as_str());
    assert_eq!(
        record["file"]["path"],
        agent.work.join("secrets/not_there").display().to_string()
    );
    assert_eq!(record["file"]["path_unresolved"], true);
    assert!(record["file"].get("ino").is_none());

    // The secret is 0600 root: an unprivileged reader gets EACCES, relative to its cwd.
    let dir = agent.work.join("secrets").display().to_string();
    let workload = Workload::run_as(65534, &["chdir-open", &dir, "db_password"]);
    assert_eq!(workload.results[0], -libc::EACCES as i64);
    let record = &agent.wait_records(workload.pid, 1)[0];
    assert_eq!(record["file"]["errno"], "EACCES", "{record:#}");
    assert_eq!(record["file"]["path"], secret_path(agent).as_str());
    assert_eq!(record["process"]["uid"], 65534);
}

#[test]
fn paths_deeper_than_the_walk_bound_are_recorded_as_truncated() {
    let agent = setup();
    let mut deep = agent.work.join("deep");
    for _ in 0..DEEP_LEVELS {
        deep.push("d");
    }
    let file = deep.join(".aws/credentials");
    let (dev, ino) = dev_ino(&file);
    let series = r#"credwatch_kernel_events_total{outcome="truncated",probe="openat"}"#;
    let before = agent.metric(series);
    let workload = Workload::run(&["openat", &file.display().to_string()]);
    let record = &agent.wait_records(workload.pid, 1)[0];
    assert_eq!(record["file"]["path_truncated"], true, "{record:#}");
    assert_eq!(record["secret"]["name"], "aws-shared-credentials");
    let path = record["file"]["path"].as_str().unwrap();
    assert!(path.ends_with("/d/d/.aws/credentials"), "{path}");
    assert!(
        file.display().to_string().ends_with(path),
        "{path} is a tail of the real path"
    );
    assert_eq!(
        (
            record["file"]["dev"].as_u64(),
            record["file"]["ino"].as_u64()
        ),
        (Some(dev), Some(ino))
    );
    assert!(agent.metric(series) > before);
    // And the kernel said so itself (`--kernel-log warn`), naming the probe and the thread
    // (probe 1: openat; the opener has one thread). The kernel prints at most one line per
    // CPU every 10 ms, so another line just before could take this one's turn: try again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut pid = workload.pid;
    loop {
        let said = format!("path walk incomplete: probe 1 thread {pid}");
        std::thread::sleep(std::time::Duration::from_millis(500));
        if std::fs::read_to_string(&agent.stderr)
            .unwrap()
            .contains(&said)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel log line {said:?}"
        );
        pid = Workload::run(&["openat", &file.display().to_string()]).pid;
    }
}

/// An open that blocks (a FIFO without a writer) while other opens run on its CPU, and that
/// wakes up on another CPU, still gets its saved arguments back at exit. (Removing the spill
/// makes the first case fail; the second is served by the spill or by the search of other
/// CPUs' slots, depending on whether anything else opened a file on CPU 0 meanwhile.)
#[test]
fn blocked_opens_keep_their_arguments() {
    let agent = setup();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, migrate) in [("fifo_spill", false), ("fifo_migrate", true)] {
        let fifo = agent.work.join("secrets").join(name);
        let c_path = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let fifo_arg = fifo.display().to_string();
        let reader = {
            let fifo_arg = fifo_arg.clone();
            std::thread::spawn(move || Workload::run(&["--cpu", "0", "openat", &fifo_arg]))
        };
        // Wait until the reader is blocked inside open().
        let pid = loop {
            if let Some(pid) = credwatch_tests::find_process(&fifo_arg) {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat.split(' ').nth(2) == Some("S") {
                    break pid;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if migrate && cpus > 1 {
            credwatch_tests::pin_to_cpu(pid, 1);
        } else {
            // Other opens on the blocked reader's CPU take over its per-CPU slot.
            let secret = secret_path(agent);
            let other = Workload::run(&["--cpu", "0", "openat", &secret, "x20"]);
            agent.wait_records(other.pid, 1);
        }
        let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let reader = reader.join().unwrap();
        drop(writer);
        assert_eq!(reader.pid, pid);
        assert!(reader.results[0] >= 0);
        let record = &agent.wait_records(pid, 1)[0];
        assert_eq!(record["file"]["path"], fifo_arg.as_str(), "{record:#}");
        assert_eq!(
            record["file"]["raw_path"],
            fifo_arg.as_str(),
            "arguments survived: {record:#}"
        );
    }
}

/// A reader that has exited long before the record is written (`sh -c 'cat …'`) is still named
/// with its program, arguments and parent chain: the process table keeps them.
#[test]
fn short_lived_readers_keep_exe_args_and_ancestors() {
    let agent = setup();
    let secret = secret_path(agent);
    // A unique raw path (through the symlink, with a marker) to find this test's record.
    let raw = format!("{}/../links/./sym", agent.work.join("links").display());
    let script = format!("/bin/cat '{raw}' > /dev/null; exit 0");
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    let record = agent.wait_record_for_path(&raw);
    assert_eq!(record["file"]["path"], secret.as_str(), "{record:#}");
    // exe is the executable the kernel ran, symlinks resolved (/bin/sh may be dash).
    let canonical = |p: &str| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(
        record["process"]["exe"],
        canonical("/bin/cat"),
        "{record:#}"
    );
    assert_eq!(record["process"]["args"][1], raw.as_str(), "{record:#}");
    let parent = &record["process"]["ancestors"][0];
    assert_eq!(parent["exe"], canonical("/bin/sh"), "{record:#}");
    assert_eq!(parent["args"][1], "-c", "{record:#}");
    assert_eq!(record["process"]["ppid"], parent["pid"]);
    assert!(record["process"]["start_time"].is_string());
    let pid = record["process"]["pid"].as_u64().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the reader has exited"
    );
}

/// Hostile strings from a workload (a file name with a newline, quotes and an invalid UTF-8
/// byte; control characters in comm; invalid UTF-8 in argv; a ~4 KiB path) are escaped, never
/// dropped, and every record stays one parseable JSON line.
#[test]
fn hostile_strings_are_escaped_and_round_trip() {
    use std::os::unix::ffi::OsStrExt as _;
    let agent = setup();
    let dir = agent.work.join("secrets");
    let evil = std::ffi::OsStr::from_bytes(b"evil\n\"name\xff");
    let evil_path = dir.join(evil);
    std::fs::write(&evil_path, "x").unwrap();
    let mut long = dir.join("long");
    for i in 0..15 {
        long.push(format!("{i:x}{}", "d".repeat(250)));
    }
    std::fs::create_dir_all(&long).unwrap();
    let long_file = long.join("secret");
    std::fs::write(&long_file, "x").unwrap();
    assert!(long_file.as_os_str().len() > 3800);

    let mut child = std::process::Command::new(credwatch_tests::helper_binary("credwatch-opener"))
        .args(["--comm", "a\x1b[31m\"b", "--hold", "openat"])
        .arg(&evil_path)
        .arg(std::ffi::OsStr::from_bytes(b"\xfe\x01\"junk"))
        .args(["--next", "openat"])
        .arg(&long_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let records = agent.wait_records(pid, 2);
    drop(child.stdin.take());
    child.wait().unwrap();
    // Every line of the log is one JSON object (the newline in the name did not split one).
    // (records() parses every whole line and panics on one that is not JSON.)
    agent.records();
    let evil_record = records
        .iter()
        .find(|r| r["file"]["path"].as_str().unwrap().contains("evil"))
        .unwrap();
    let expected = format!("{}/evil\n\"name\\xff", dir.display());
    assert_eq!(
        evil_record["file"]["path"],
        expected.as_str(),
        "{evil_record:#}"
    );
    assert_eq!(evil_record["process"]["comm"], "a\x1b[31m\"b");
    assert_eq!(
        evil_record["process"]["args"][6], "\\xfe\x01\"junk",
        "{evil_record:#}"
    );
    let long_record = records
        .iter()
        .find(|r| r["file"]["path"].as_str().unwrap().ends_with("/secret"))
        .unwrap();
    assert_eq!(
        long_record["file"]["path"],
        long_file.display().to_string().as_str()
    );
    assert_eq!(
        long_record["file"]["raw_path"].as_str().unwrap().len(),
        1023,
        "raw path kept up to its bound"
    );
}
