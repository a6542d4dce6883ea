//! Benchmark load: many running containers. Starts COUNT detached runc containers (busybox
//! `sleep`, each with a secret at /run/secrets/token, so the agent's secret search has work in
//! every one), prints `ready` once all run, and removes them all when its stdin closes (also
//! when the bench that started it dies). Usage: credwatch-fleet COUNT

use std::io::{Read as _, Write as _};

use credwatch_tests::runc::Container;

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("COUNT");
    let fleet: Vec<Container> = (0..count)
        .map(|i| {
            let id = format!("cw-fleet-{}-{i}", std::process::id());
            let c = Container::new(&id, &[("token", "x")], &["/bin/sleep", "1000000"]);
            c.start();
            c
        })
        .collect();
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(fleet); // `runc delete --force` each, and its bundle
}
