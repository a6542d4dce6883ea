//! Nothing is lost to a flood or a sweep: a container opening one secret hundreds of thousands
//! of times is reported as a few records whose `count`s add up exactly, while a distinct
//! access inside the flood and another container's access are still recorded; a container
//! sweeping thousands of distinct secret files in one burst gets a record for every file.
//! In both cases the kernel ring buffer loses nothing.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use credwatch_tests::{Agent, agent, helper_binary, runc::Container};
use serde_json::{Value, json};

/// This binary's probe mode (`no_loss_enter_exit.rs` runs the tests in the fallback mode).
#[allow(dead_code)]
const PROBE_MODE: &str = "auto";

const FLOOD_OPENS: u64 = 200_000;
const SWEEP_FILES: usize = 5_000;
/// Summaries come once a ~1 s window is over and the agent looks (every 0.5 s).
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(30);

fn prepare(_work: &Path) -> String {
    "    - name: e2e-run-secrets\n      paths: [\"/run/secrets/**\"]\n".to_string()
}

fn setup() -> &'static Agent {
    agent(prepare, crate::PROBE_MODE)
}

fn id(suffix: &str) -> String {
    format!("cw-{}-{suffix}", std::process::id())
}

fn lost(agent: &Agent) -> f64 {
    agent.metric(r#"credwatch_events_lost_total{stage="kernel_ringbuf"}"#)
}

/// Records of container `id` for `path`.
fn records_for(agent: &Agent, id: &str, path: &str) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|r| r["container"]["id"] == id && r["file"]["path"] == path)
        .collect()
}

/// The sum of a metric family's series whose labels include every one of `labels`
/// (`name="value"` each).
fn metric_sum(agent: &Agent, family: &str, labels: &[&str]) -> f64 {
    let prefix = format!("{family}{{");
    agent
        .metrics()
        .lines()
        .filter(|l| l.starts_with(&prefix) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `n` containers that each read their own secret `reads` times, `pause` seconds apart (each
/// read by another `cat` process, so each its own record): the victims of the storm tests.
fn bystanders(name: &str, n: usize, reads: usize, pause: &str) -> Vec<(String, Container)> {
    (0..n)
        .map(|v| {
            let id = id(&format!("{name}{v}"));
            let script = format!(
                "for i in $(seq {reads}); do cat /run/secrets/db_password >/dev/null; sleep {pause}; done"
            );
            let c = Container::new(&id, &[("db_password", "x")], &["/bin/sh", "-c", &script]);
            (id, c)
        })
        .collect()
}

/// How many accesses the records stand for (`count` absent = 1).
fn accesses(records: &[Value]) -> u64 {
    records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum()
}

/// A container that can run this crate's helper binaries: the host's /usr (libc) read-only.
fn helper_container(id: &str, secrets: &[(&str, &str)], args: &[&str]) -> Container {
    let rootfs = credwatch_tests::runc::rootfs();
    std::fs::create_dir_all(rootfs.join("usr")).unwrap();
    for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        let _ = std::os::unix::fs::symlink(to, rootfs.join(link));
    }
    let target = rootfs.join("opt/openloop");
    if !target.exists() {
        std::fs::write(&target, "").unwrap();
    }
    let helper = helper_binary("credwatch-openloop");
    Container::with_spec(id, secrets, args, |spec| {
        let mounts = spec["mounts"].as_array_mut().unwrap();
        mounts.push(
            json!({"destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["rbind", "ro"]}),
        );
        mounts.push(
            json!({"destination": "/opt/openloop", "type": "bind", "source": helper,
            "options": ["bind", "ro"]}),
        );
    })
}

#[test]
fn a_flood_of_one_access_is_counted_exactly_and_hides_nothing() {
    let agent = setup();
    let lost_before = lost(agent);
    let attacker = id("flood");
    let victim = id("victim");
    let flood = helper_container(
        &attacker,
        &[("token", "t"), ("other", "o")],
        &[
            "/opt/openloop",
            "/run/secrets/token",
            &FLOOD_OPENS.to_string(),
            "/run/secrets/other",
        ],
    );
    let neighbour = Container::new(
        &victim,
        &[("db_password", "x")],
        &["/bin/sh", "-c", "sleep 0.2; cat /run/secrets/db_password"],
    );
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| flood.run_to_completion());
        s.spawn(|| neighbour.run_to_completion());
    });
    let flood_took = started.elapsed();
    // The distinct access inside the flood and the neighbour's are both there.
    agent.wait_record("the read hidden in the flood", |r| {
        r["container"]["id"] == attacker.as_str() && r["file"]["path"] == "/run/secrets/other"
    });
    agent.wait_record("the neighbour's read", |r| {
        r["container"]["id"] == victim.as_str() && r["file"]["path"] == "/run/secrets/db_password"
    });
    // Every one of the flood's opens is accounted for, in a handful of records.
    let deadline = Instant::now() + SUMMARY_TIMEOUT;
    let records = loop {
        let records = records_for(agent, &attacker, "/run/secrets/token");
        if accesses(&records) >= FLOOD_OPENS || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "flood of {FLOOD_OPENS} opens in {flood_took:?}: {} records",
        records.len()
    );
    assert_eq!(accesses(&records), FLOOD_OPENS, "{:#}", json!(records));
    assert!(records.len() <= 40, "{} records", records.len());
    let summaries: Vec<_> = records.iter().filter(|r| r["count"].is_u64()).collect();
    assert!(!summaries.is_empty());
    for s in &summaries {
        assert!(s["first_ts"].as_str() <= s["last_ts"].as_str(), "{s:#}");
        assert!(s["repeat_of"].is_string(), "{s:#}");
        assert_eq!(s["verdict"], "undeclared");
        // The summary names the process like the record it repeats.
        let first = records
            .iter()
            .find(|r| r["event_id"] == s["repeat_of"])
            .expect("the repeated record is in the log");
        assert_eq!(first["process"]["pid"], s["process"]["pid"]);
        assert_eq!(first["file"]["inode"], s["file"]["inode"]);
    }
    // The metric counts accesses, not records.
    let container = format!(r#"container="{attacker}""#);
    let secret = format!(
        r#"secret="{}""#,
        records[0]["secret"]["name"].as_str().unwrap()
    );
    let counted = metric_sum(
        agent,
        "credwatch_credential_access_total",
        &[&container, &secret],
    );
    // (the flood's token accesses and the one read of `other`)
    let others: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|r| {
            r["container"]["id"] == attacker.as_str() && r["file"]["path"] != "/run/secrets/token"
        })
        .map(|r| {
            json!([
                r["file"]["path"],
                r["file"]["raw_path"],
                r["process"]["exe"],
                r["count"],
                r["verdict"]
            ])
        })
        .collect();
    assert_eq!(
        counted,
        (FLOOD_OPENS + 1) as f64,
        "the attacker's other records: {others:?}"
    );
    assert_eq!(lost(agent), lost_before, "nothing lost in the kernel");
}

#[test]
fn a_sweep_of_thousands_of_secret_files_is_recorded_whole() {
    let agent = setup();
    let lost_before = lost(agent);
    let sweeper = id("sweep");
    let names: Vec<String> = (0..SWEEP_FILES).map(|i| format!("s{i:05}")).collect();
    let secrets: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
    // One process opens every file as fast as it can (busybox cat, one burst).
    let c = Container::new(
        &sweeper,
        &secrets,
        &["/bin/sh", "-c", "cat /run/secrets/s* >/dev/null"],
    );
    let started = Instant::now();
    c.run_to_completion();
    let expected: std::collections::BTreeSet<String> =
        names.iter().map(|n| format!("/run/secrets/{n}")).collect();
    let deadline = Instant::now() + SUMMARY_TIMEOUT;
    let seen = loop {
        let seen: std::collections::BTreeSet<String> = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == sweeper.as_str())
            .filter_map(|r| r["file"]["path"].as_str().map(str::to_string))
            .collect();
        if seen.is_superset(&expected) || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let missing_paths: Vec<_> = expected.difference(&seen).collect();
    let missing = missing_paths.len();
    let other: Vec<_> = seen.difference(&expected).collect();
    eprintln!(
        "sweep of {SWEEP_FILES} files: {} of them recorded {:?} after the start; other paths: {other:?}; missing (first 10): {:?}; agent log: {}",
        SWEEP_FILES - missing,
        started.elapsed(),
        &missing_paths[..missing.min(10)],
        agent.log.display()
    );
    assert_eq!(missing, 0, "every swept file has its record");
    assert_eq!(lost(agent), lost_before, "nothing lost in the kernel");
}

#[test]
fn a_container_over_its_budget_is_summarised_and_blinds_no_one() {
    const FILES: usize = 30_000;
    const VICTIMS: usize = 3;
    const READS: usize = 5;
    let agent = setup();
    let lost_before = lost(agent);
    let attacker = id("storm");
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:05}")).collect();
    let secrets: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    // Far more distinct files than its burst (10,000 records), as fast as it can.
    let storm = Container::new(
        &attacker,
        &secrets,
        &["/bin/sh", "-c", "cat /run/secrets/f* >/dev/null"],
    );
    let victims = bystanders("bystander", VICTIMS, READS, "0.1");
    std::thread::scope(|s| {
        s.spawn(|| storm.run_to_completion());
        for (_, c) in &victims {
            s.spawn(|| c.run_to_completion());
        }
    });
    // Every bystander read is its own record (each `cat` is another process).
    for (id, _) in &victims {
        let deadline = Instant::now() + SUMMARY_TIMEOUT;
        loop {
            let reads = records_for(agent, id, "/run/secrets/db_password");
            if accesses(&reads) == READS as u64 {
                // Who started the container ends the ancestry, not the host's chain above it
                // (the test process, its shells): that chain was most of a record's bytes.
                let ancestors = reads[0]["process"]["ancestors"].as_array().unwrap();
                let pids: Vec<u64> = ancestors.iter().filter_map(|a| a["pid"].as_u64()).collect();
                assert_eq!(
                    ancestors.last().unwrap()["args"][0],
                    "runc",
                    "{:#}",
                    reads[0]
                );
                assert!(!pids.contains(&std::process::id().into()), "{:#}", reads[0]);
                break;
            }
            let n = accesses(&reads);
            assert!(
                Instant::now() < deadline,
                "{id}: {n} of {READS} reads recorded"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The attacker's accesses: records for some files, summaries for the rest, exactly.
    let deadline = Instant::now() + SUMMARY_TIMEOUT;
    let (records, summaries) = loop {
        let mine: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == attacker.as_str())
            // (its 30,000 files are also over its secret-file budget: reported apart)
            .filter(|r| r["kind"] != "budget")
            .collect();
        let (summaries, records): (Vec<Value>, Vec<Value>) =
            mine.into_iter().partition(|r| r["verdict"] == "suppressed");
        let total = records.len() as u64 + accesses(&summaries);
        if total >= FILES as u64 || Instant::now() > deadline {
            break (records, summaries);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let suppressed = accesses(&summaries);
    eprintln!(
        "storm of {FILES} files: {} records, {suppressed} suppressed in {} summaries",
        records.len(),
        summaries.len()
    );
    assert_eq!(records.len() as u64 + suppressed, FILES as u64);
    assert!(suppressed > 0, "the storm went over its budget");
    assert!(
        records.len() >= 10_000,
        "its burst was recorded: {}",
        records.len()
    );
    for s in &summaries {
        // Named like the records of the same files.
        assert_eq!(s["secret"]["name"], records[0]["secret"]["name"], "{s:#}");
        assert!(s["first_ts"].as_str() <= s["last_ts"].as_str(), "{s:#}");
    }
    let container = format!(r#"container="{attacker}""#);
    let over = metric_sum(agent, "credwatch_over_budget_total", &[&container]);
    assert_eq!(
        over, suppressed as f64,
        "the attacker is named in the metric"
    );
    assert_eq!(lost(agent), lost_before, "nothing lost in the kernel");
}

#[test]
fn a_container_full_of_secret_files_does_not_stop_inode_tracking_for_others() {
    const FILES: usize = 20_000;
    let agent = setup();
    let hoarder = id("hoarder");
    let names: Vec<String> = (0..FILES).map(|i| format!("h{i:05}")).collect();
    let secrets: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    let hoard = Container::new(&hoarder, &secrets, &["/bin/sleep", "30"]);
    hoard.start();
    // Wait until the agent has searched the hoarder's filesystem and named it.
    let series = format!(r#"container="{hoarder}""#);
    let deadline = Instant::now() + SUMMARY_TIMEOUT;
    let found = loop {
        let found = metric_sum(agent, "credwatch_secret_files_over_budget", &[&series]);
        if found > 0.0 || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(found > 1024.0, "the hoarder is reported: {found}");
    // ...and named in the log, once.
    let reported = agent.wait_record("the hoarder's budget record", |r| {
        r["container"]["id"] == hoarder.as_str() && r["kind"] == "budget"
    });
    assert_eq!(reported["verdict"], "over_budget", "{reported:#}");
    assert_eq!(reported["budget"]["budget"], "secret_files", "{reported:#}");
    assert_eq!(reported["budget"]["limit"], 1024, "{reported:#}");
    assert!(
        reported["budget"]["found"].as_u64().unwrap() > 1024,
        "{reported:#}"
    );
    assert!(reported.get("secret").is_none(), "{reported:#}");
    // Another container reads its own secret through a hardlink outside every catalogue
    // path: only its inode names it, so its inode must still be tracked.
    let victim = id("linked");
    let data = std::env::temp_dir().join(format!("credwatch-bundle-{victim}/data"));
    let c = Container::with_spec(
        &victim,
        &[("db_password", "x")],
        // Reads until the agent's search has reached this container: its inode is tracked from
        // then on (before that, the link's path names nothing the catalogue knows).
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 60 ]; do cat /data/innocent.txt; sleep 0.5; i=$((i+1)); done",
        ],
        |spec| {
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/data", "type": "bind", "source": data,
                "options": ["rbind", "ro"]}));
        },
    );
    std::fs::create_dir_all(&data).unwrap();
    std::fs::hard_link(c.secrets.join("db_password"), data.join("innocent.txt")).unwrap();
    let etc_data = credwatch_tests::runc::rootfs().join("data");
    std::fs::create_dir_all(&etc_data).unwrap();
    c.start();
    let record = agent.wait_record("the read through a hardlink", |r| {
        r["container"]["id"] == victim.as_str() && r["file"]["raw_path"] == "/data/innocent.txt"
    });
    assert_eq!(
        record["file"]["path"], "/run/secrets/db_password",
        "{record:#}"
    );
    c.stop();
    hoard.stop();
}

/// A container sweeps its 5,000 secret files once a second for 20 s (100,000 opens): past its
/// record budget in the kernel and past its share of the forensic log (20,000 records an hour)
/// in the agent. Every open is a record or counted in a summary, its records stay within its
/// share (it cannot rotate the others' evidence out of the log), three containers reading their
/// secret every 2 s meanwhile are each recorded in full, and nothing is lost.
#[test]
fn a_sustained_storm_keeps_to_its_share_of_the_log() {
    const FILES: usize = 5_000;
    const ROUNDS: usize = 20;
    const SHARE: u64 = 20_000;
    const VICTIMS: usize = 3;
    const READS: usize = 10;
    let agent = setup();
    let lost_before = lost(agent);
    let attacker = id("sustained");
    let names: Vec<String> = (0..FILES).map(|i| format!("s{i:05}")).collect();
    let secrets: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    let script =
        format!("for i in $(seq {ROUNDS}); do cat /run/secrets/s* >/dev/null; sleep 1; done");
    let storm = Container::new(&attacker, &secrets, &["/bin/sh", "-c", &script]);
    let victims = bystanders("steady", VICTIMS, READS, "2");
    std::thread::scope(|s| {
        s.spawn(|| storm.run_to_completion());
        for (_, c) in &victims {
            s.spawn(|| c.run_to_completion());
        }
    });

    let total = (FILES * ROUNDS) as u64;
    let by_reason = |records: &[Value], reason: &str| -> u64 {
        accesses(
            &records
                .iter()
                .filter(|r| r["verdict"] == "suppressed" && r["reason"] == reason)
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (records, mine) = loop {
        let mine: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == attacker.as_str() && r["kind"] == "file")
            .collect();
        let records = mine.iter().filter(|r| r["verdict"] != "suppressed").count() as u64;
        if accesses(&mine) >= total || Instant::now() > deadline {
            break (records, mine);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let budget_cut = by_reason(&mine, "container over its record budget");
    let share_cut = by_reason(&mine, "container over its log share");
    eprintln!(
        "sustained storm of {total} opens: {records} records, {budget_cut} cut by the record budget, {share_cut} by the log share"
    );
    assert_eq!(
        records + budget_cut + share_cut,
        total,
        "every open accounted for"
    );
    assert!(share_cut > 0, "the storm went over its log share");
    // Its share, plus what the share refills during the storm (20,000 an hour).
    assert!(
        records <= SHARE + 200,
        "{records} records: more than its share"
    );
    let over = agent.wait_record("the storm over its log share", |r| {
        r["container"]["id"] == attacker.as_str()
            && r["kind"] == "budget"
            && r["budget"]["budget"] == "log_records"
    });
    assert_eq!(over["budget"]["limit"], SHARE, "{over:#}");
    // The metrics count every access, whatever the log holds.
    let container = format!(r#"container="{attacker}""#);
    assert_eq!(
        metric_sum(agent, "credwatch_credential_access_total", &[&container]),
        total as f64
    );
    assert_eq!(
        metric_sum(
            agent,
            "credwatch_budget_exceeded_total",
            &[&container, r#"budget="log_records""#]
        ),
        share_cut as f64
    );
    for (id, _) in &victims {
        let reads = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == id.as_str() && r["verdict"] != "suppressed")
            .filter(|r| r["file"]["path"] == "/run/secrets/db_password")
            .count();
        assert_eq!(reads, READS, "{id}: every read its own record");
    }
    assert_eq!(lost(agent), lost_before, "nothing lost in the kernel");
}
