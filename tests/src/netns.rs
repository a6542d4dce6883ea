//! A network namespace a test creates, with the instance-metadata address (169.254.169.254)
//! as a local address, Python HTTP servers, dnsmasq answering production host names, and runc
//! containers joined to it.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::runc::Container;

/// A network namespace with the metadata address and three HTTP servers.
pub struct Netns {
    pub name: String,
    servers: Vec<Child>,
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ip(&["-n", name, "addr", "add", "169.254.169.254/32", "dev", "lo"]);
        let mut ns = Netns {
            name: name.to_string(),
            servers: Vec::new(),
        };
        for (addr, port) in [
            ("169.254.169.254", "80"),
            ("127.0.0.1", "8200"),
            ("127.0.0.1", "8080"),
        ] {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    name,
                    "python3",
                    "-m",
                    "http.server",
                    "--bind",
                    addr,
                    port,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            ns.servers.push(child);
            ns.wait_listening(addr, port);
        }
        ns
    }

    /// Another local address, and an HTTP server on it.
    pub fn serve(&mut self, addr: &str, port: &str) {
        self.add_address(addr);
        self.spawn(&["python3", "-m", "http.server", "--bind", addr, port]);
        self.wait_listening(addr, port);
    }

    pub fn add_address(&self, addr: &str) {
        let prefix = if addr.contains(':') { 128 } else { 32 };
        let status = Command::new("ip")
            .args([
                "-n",
                &self.name,
                "addr",
                "add",
                &format!("{addr}/{prefix}"),
                "dev",
                "lo",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// dnsmasq (Debian) on the namespace's 127.0.0.1:53, answering `name` with `address`.
    pub fn dns(&mut self, name: &str, address: &str) {
        self.dns_records(name, &[address.to_string()]);
    }

    /// dnsmasq answering `name` with all of `addresses`.
    pub fn dns_records(&mut self, name: &str, addresses: &[String]) {
        crate::runc::ensure_packages(&[("/usr/sbin/dnsmasq", "dnsmasq")]);
        let records: Vec<String> = addresses
            .iter()
            .map(|a| format!("--host-record={name},{a}"))
            .collect();
        let mut command = vec![
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--port=53",
        ];
        command.extend(records.iter().map(String::as_str));
        self.spawn(&command);
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn spawn(&mut self, command: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
    }

    pub fn wait_listening(&self, addr: &str, port: &str) {
        let probe = format!("import socket; socket.create_connection(('{addr}', {port}), 1)");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.name, "python3", "-c", &probe])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "no server on {addr}:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn container(&self, id: &str, script: &str) -> Container {
        Container::with_spec(id, &[], &["/bin/sh", "-c", script], |spec| self.join(spec))
    }

    /// A container running the test venv's Python (boto3) on the glibc rootfs.
    pub fn python_container(&self, id: &str, script: &str, env: &[&str]) -> Container {
        let python = crate::python::env().python();
        let args = [python.to_str().unwrap(), "-c", script];
        Container::with_spec(id, &[], &args, |spec| {
            self.join(spec);
            crate::python::use_rootfs(spec);
            let vars = spec["process"]["env"].as_array_mut().unwrap();
            vars.extend(env.iter().map(|v| Value::String(v.to_string())));
        })
    }

    /// Puts a container into this network namespace.
    pub fn join(&self, spec: &mut Value) {
        let path = format!("/var/run/netns/{}", self.name);
        for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = Value::String(path.clone());
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
