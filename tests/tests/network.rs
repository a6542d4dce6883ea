//! Credential-endpoint connects end to end, in a network namespace this test creates: the
//! instance-metadata address is a local address there, real HTTP servers listen on it, on
//! Vault's port and on an unrelated port, and runc containers joined to the namespace connect.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use credwatch_tests::{Agent, agent, netns::Netns, runc::Container};

/// The number in a `credwatch_endpoint_requests_total` series (0 when absent).
fn endpoint_requests(agent: &Agent, service: &str, credential: &str) -> f64 {
    agent.metric(&format!(
        "credwatch_endpoint_requests_total{{credential=\"{credential}\",service=\"{service}\"}}"
    ))
}
use serde_json::Value;

const FOOTPRINT: &str = r#"apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: fp-metadata-client}
spec:
  selector: {cgroup: "/cw-*-netok"}
  allow:
    - secret: instance-metadata
---
apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: fp-secrets-client}
spec:
  selector: {cgroup: "/cw-*-dnsok"}
  allow:
    - secret: aws-secretsmanager
---
apiVersion: credwatch.dev/v1alpha1
kind: SecretFootprint
metadata: {name: fp-boto3-client}
spec:
  selector: {cgroup: "/cw-*-boto3ok"}
  allow:
    - secret: aws-secretsmanager
"#;

fn prepare(work: &Path) -> String {
    std::fs::write(work.join("policies/footprint.yaml"), FOOTPRINT).unwrap();
    "    - name: e2e-unused\n      paths: [\"/nonexistent-e2e/**\"]\n".to_string()
}

/// The agent's probe mode for this test binary: the best this kernel offers.
/// `network_enter_exit.rs` runs these tests again with the fallback forced.
#[allow(dead_code)]
const PROBE_MODE: &str = "auto";

fn setup() -> &'static Agent {
    agent(prepare, crate::PROBE_MODE)
}

fn network_record(agent: &Agent, id: &str, service: &str) -> Value {
    agent.wait_record(&format!("{id} {service}"), |r| {
        r["container"]["id"] == id && r["kind"] == "network" && r["network"]["service"] == service
    })
}

#[test]
fn connects_to_credential_endpoints_are_recorded_and_judged() {
    let agent = setup();
    let netns = Netns::create(&format!("cw-{}", std::process::id()));
    let id = format!("cw-{}-net", std::process::id());
    let script = "wget -q -O /dev/null http://169.254.169.254/latest/meta-data/iam/security-credentials/; \
                  wget -q -O /dev/null http://127.0.0.1:8200/v1/secret/data/db; \
                  wget -q -O /dev/null http://127.0.0.1:8080/; exit 0";
    netns.container(&id, script).run_to_completion();

    let imds = network_record(agent, &id, "instance-metadata");
    assert_eq!(imds["secret"]["name"], "instance-metadata", "{imds:#}");
    assert_eq!(imds["network"]["address"], "169.254.169.254");
    assert_eq!(imds["network"]["port"], 80);
    assert_eq!(imds["network"]["family"], "ipv4");
    assert_eq!(imds["network"]["result"], 0);
    // The request made it a credential access: its line is in the record.
    assert_eq!(imds["network"]["request"], "credential", "{imds:#}");
    assert_eq!(imds["network"]["http"]["method"], "GET");
    assert_eq!(
        imds["network"]["http"]["path"],
        "/latest/meta-data/iam/security-credentials"
    );
    assert_eq!(imds["verdict"], "undeclared");
    assert_eq!(imds["process"]["args"][0], "wget", "{imds:#}");
    assert_eq!(imds["process"]["ancestors"][0]["args"][0], "/bin/sh");
    assert!(imds.get("file").is_none());

    let vault = network_record(agent, &id, "vault");
    assert_eq!(
        (
            vault["network"]["address"].as_str(),
            vault["network"]["port"].as_u64()
        ),
        (Some("127.0.0.1"), Some(8200))
    );

    // The unrelated connect (port 8080) never left the kernel.
    std::thread::sleep(Duration::from_millis(500));
    let records: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|r| r["container"]["id"] == id.as_str())
        .collect();
    assert_eq!(
        records.len(),
        2,
        "only the two endpoint connects: {records:#?}"
    );

    // A container whose footprint allows the metadata service.
    let ok_id = format!("cw-{}-netok", std::process::id());
    netns
        .container(
            &ok_id,
            "wget -q -O /dev/null http://169.254.169.254/latest/user-data; exit 0",
        )
        .run_to_completion();
    let allowed = network_record(agent, &ok_id, "instance-metadata");
    assert_eq!(allowed["verdict"], "allowed", "{allowed:#}");
    assert_eq!(allowed["policy"]["name"], "fp-metadata-client");
    let series = format!(
        "credwatch_credential_access_total{{container=\"{ok_id}\",kind=\"network\",namespace=\"\",secret=\"instance-metadata\",verdict=\"allowed\",workload=\"{workload}\"}}",
        // Off Kubernetes: the name without its generated parts (the test pid).
        workload = credwatch::containers::workload::off_kubernetes(Some(&ok_id), None)
    );
    assert_eq!(agent.metric(&series), 1.0, "{}", agent.metrics());
    assert_eq!(
        agent.metric(r#"credwatch_probe_attached{mode="tracepoint-enter-exit",probe="connect"}"#),
        1.0
    );
}

/// Cloud APIs share front-end addresses, so the host name must come from the container's own
/// DNS traffic: dnsmasq answers a production name with an address in the namespace, the
/// container resolves it and connects, and the record names the host.
#[test]
fn a_connect_to_an_address_learned_from_dns_is_named() {
    let agent = setup();
    let mut netns = Netns::create(&format!("cwd-{}", std::process::id()));
    netns.serve("10.99.0.10", "443");
    netns.dns("secretsmanager.us-east-1.amazonaws.com", "10.99.0.10");
    let id = format!("cw-{}-dns", std::process::id());
    // Connect right after resolving, as an SDK does: the kernel passes the connect up as
    // unconfirmed (the agent may not have learned the answer yet) and the agent decides.
    let script = "nslookup secretsmanager.us-east-1.amazonaws.com 127.0.0.1; \
                  wget -q -O /dev/null http://10.99.0.10:443/; exit 0";
    netns.container(&id, script).run_to_completion();
    let record = network_record(agent, &id, "aws-secretsmanager");
    assert_eq!(
        record["network"]["hostname"], "secretsmanager.us-east-1.amazonaws.com",
        "{record:#}"
    );
    assert_eq!(record["network"]["address"], "10.99.0.10");
    assert_eq!(record["network"]["port"], 443);
    assert_eq!(record["secret"]["name"], "aws-secretsmanager");
    assert_eq!(record["verdict"], "undeclared");
    assert_eq!(
        agent.metric(r#"credwatch_probe_attached{mode="cgroup_skb",probe="dns"}"#),
        1.0
    );

    // What one container's DNS answer taught applies to its own connects only (cloud APIs
    // share front-end addresses): the same address without a lookup of its own is not named.
    let other_id = format!("cw-{}-nodns", std::process::id());
    netns
        .container(
            &other_id,
            "wget -q -O /dev/null http://10.99.0.10:443/; exit 0",
        )
        .run_to_completion();

    // The same calls from a container whose footprint allows the secret manager.
    let ok_id = format!("cw-{}-dnsok", std::process::id());
    netns.container(&ok_id, script).run_to_completion();
    let allowed = network_record(agent, &ok_id, "aws-secretsmanager");
    assert_eq!(allowed["verdict"], "allowed", "{allowed:#}");
    assert_eq!(allowed["policy"]["name"], "fp-secrets-client");
    assert_eq!(
        allowed["network"]["hostname"],
        "secretsmanager.us-east-1.amazonaws.com"
    );
    // By now the container without a lookup would have been reported (records are in order).
    let unnamed: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|r| r["container"]["id"] == other_id.as_str())
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:#?}");

    // What a running container learned shows in the gauge (refreshed every 5 s). (That it goes
    // with the container is unit-tested: other tests learn in parallel in this agent.)
    let live_id = format!("cw-{}-dnslive", std::process::id());
    let live = netns.container(
        &live_id,
        "nslookup secretsmanager.us-east-1.amazonaws.com 127.0.0.1; sleep 60",
    );
    live.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.metric("credwatch_learned_endpoints") < 1.0 {
        assert!(Instant::now() < deadline, "{}", agent.metrics());
        std::thread::sleep(Duration::from_millis(250));
    }
    live.stop();
}

/// A container's KUBERNETES_SERVICE_HOST names the API server's address: connects to it are
/// `kubernetes-api` accesses (only allow-listed variables are read from the environment).
#[test]
fn the_api_server_address_from_the_environment_is_an_endpoint() {
    let agent = setup();
    let mut netns = Netns::create(&format!("cwk-{}", std::process::id()));
    netns.serve("10.99.0.20", "443");
    let id = format!("cw-{}-kenv", std::process::id());
    let path = format!("/var/run/netns/{}", netns.name);
    // The agent reads a new container's variables when it sees its first program; with other
    // tests loading it, that can take longer than a fixed wait: connect until one is named.
    let script = "for i in $(seq 40); do wget -q -O /dev/null http://10.99.0.20:443/api; \
                  sleep 0.5; done; exit 0";
    let c = Container::with_spec(&id, &[], &["/bin/sh", "-c", script], |spec| {
        for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = Value::String(path.clone());
            }
        }
        let env = spec["process"]["env"].as_array_mut().unwrap();
        env.push(Value::String("KUBERNETES_SERVICE_HOST=10.99.0.20".into()));
        env.push(Value::String("DB_PASSWORD=never-read-or-logged".into()));
    });
    c.start();
    let record = network_record(agent, &id, "kubernetes-api");
    c.stop();
    assert_eq!(record["network"]["address"], "10.99.0.20", "{record:#}");
    assert_eq!(record["network"]["hostname"], "$KUBERNETES_SERVICE_HOST");
    let log = std::fs::read_to_string(&agent.log).unwrap()
        + &std::fs::read_to_string(&agent.stderr).unwrap();
    assert!(
        !log.contains("never-read-or-logged"),
        "no other variable's value reaches the agent's output"
    );
}

/// An SDK resolves and connects at once: glibc's getaddrinfo with an unspecified family (paired
/// A/AAAA queries in one sendmmsg) answered by dnsmasq, then an immediate connect, in one
/// process. The connect can reach the kernel before the agent has learned the answer; the
/// kernel passes it up unconfirmed and the agent names it from the answer it has by then read.
#[test]
fn resolve_then_connect_at_once_is_still_named() {
    let addresses = ["10.99.0.11".to_string()];
    let record = resolve_and_connect("cwr", "ssm.us-west-2.amazonaws.com", &addresses, "");
    assert_eq!(record["secret"]["name"], "aws-ssm", "{record:#}");
}

/// The same over DNS-over-TCP (glibc's `options use-vc`; resolvers also fall back to TCP for
/// large answers): the answer is learned from the TCP segment.
#[test]
fn answers_over_tcp_are_learned() {
    let addresses = ["10.99.0.13".to_string()];
    let record = resolve_and_connect("cwt", "sts.us-east-2.amazonaws.com", &addresses, "use-vc");
    assert_eq!(record["secret"]["name"], "aws-sts", "{record:#}");
}

/// An answer larger than DNS's classic 512 bytes (50 addresses, 844 bytes over UDP with
/// glibc's `options edns0`) is learned whole.
#[test]
fn large_answers_are_learned() {
    let addresses: Vec<String> = (1..=50).map(|n| format!("10.99.1.{n}")).collect();
    let host = "secretsmanager.eu-west-1.amazonaws.com";
    let record = resolve_and_connect("cwl", host, &addresses, "edns0");
    assert_eq!(record["secret"]["name"], "aws-secretsmanager", "{record:#}");
}

/// In a new network namespace whose dnsmasq answers `host` with `addresses` (all local, with
/// HTTP on 443), Python resolves `host` through glibc (resolv.conf `options` extra) and
/// connects at once. Returns the agent's record of that connect, checked to name the host.
fn resolve_and_connect(prefix: &str, host: &str, addresses: &[String], options: &str) -> Value {
    let agent = setup();
    let name = format!("{prefix}-{}", std::process::id());
    let mut netns = Netns::create(&name);
    for address in addresses {
        netns.add_address(address);
    }
    netns.spawn(&["python3", "-m", "http.server", "--bind", "0.0.0.0", "443"]);
    netns.wait_listening(&addresses[0], "443");
    // `ip netns exec` bind-mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf.
    let etc = Path::new("/etc/netns").join(&name);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("resolv.conf"),
        format!("nameserver 127.0.0.1\noptions attempts:1 timeout:2 {options}\n"),
    )
    .unwrap();
    netns.dns_records(host, addresses);
    let client = format!(
        "import socket, os\n\
         infos = socket.getaddrinfo('{host}', 443, socket.AF_UNSPEC, socket.SOCK_STREAM)\n\
         addr = [i[4] for i in infos if i[0] == socket.AF_INET][0]\n\
         socket.create_connection(addr, 2).close()\n\
         print(os.getpid())\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &name, "python3", "-c", &client])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&etc);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let record = agent.wait_record(&format!("{host} resolved and connected"), |r| {
        r["process"]["pid"] == pid && r["kind"] == "network"
    });
    assert_eq!(record["network"]["hostname"], host, "{record:#}");
    let address = record["network"]["address"].as_str().unwrap_or_default();
    assert!(addresses.iter().any(|a| a == address), "{record:#}");
    record
}

/// Connects that bypass connect(2) — io_uring's IORING_OP_CONNECT and a TCP Fast Open
/// sendto(2) — reach the kernel's `cgroup/connect4` hook; the syscall tracepoints never see
/// them. A plain connect(2), seen by both the hook and the tracepoints, is reported once, with
/// its result.
#[test]
fn connects_that_bypass_the_connect_syscall_are_seen_once() {
    let agent = setup();
    let name = format!("cwu-{}", std::process::id());
    let mut netns = Netns::create(&name);
    // IMDS's IPv6 address too, for the connect6 hook.
    netns.add_address("fd00:ec2::254");
    netns.spawn(&[
        "python3",
        "-m",
        "http.server",
        "--bind",
        "fd00:ec2::254",
        "80",
    ]);
    netns.wait_listening("fd00:ec2::254", "80");
    let connector = credwatch_tests::helper_binary("credwatch-connector");
    // (how, address asked for, family, address as recorded)
    let cases = [
        ("io_uring", "169.254.169.254", "ipv4", "169.254.169.254"),
        ("fastopen", "169.254.169.254", "ipv4", "169.254.169.254"),
        ("connect", "169.254.169.254", "ipv4", "169.254.169.254"),
        ("io_uring", "fd00:ec2::254", "ipv6", "fd00:ec2::254"),
        ("connect", "fd00:ec2::254", "ipv6", "fd00:ec2::254"),
        // An IPv4 address through an IPv6 socket.
        (
            "io_uring",
            "::ffff:169.254.169.254",
            "ipv4-mapped",
            "169.254.169.254",
        ),
        (
            "connect",
            "::ffff:169.254.169.254",
            "ipv4-mapped",
            "169.254.169.254",
        ),
    ];
    for (how, target, family, recorded) in cases {
        let out = Command::new("ip")
            .args(["netns", "exec", &name])
            .arg(&connector)
            .args([how, target, "80"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{how}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |key: &str| -> i64 {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{how}: no {key} in {stdout}"))
        };
        let (pid, result) = (field("pid="), field("result="));
        assert!(
            result == 0 || result == -libc::EINPROGRESS as i64,
            "{how}: {stdout}"
        );
        let record = agent.wait_record(&format!("{how} connect"), |r| {
            r["process"]["pid"] == pid && r["kind"] == "network"
        });
        assert_eq!(
            record["network"]["service"], "instance-metadata",
            "{record:#}"
        );
        assert_eq!(record["network"]["address"], recorded, "{record:#}");
        assert_eq!(record["network"]["family"], family, "{record:#}");
        assert_eq!(record["network"]["port"], 80);
        if how == "connect" {
            assert_eq!(record["network"]["source"], "connect", "{record:#}");
            assert_eq!(record["network"]["result"], result);
        } else {
            assert_eq!(record["network"]["source"], "cgroup_hook", "{record:#}");
            assert!(record["network"]["result"].is_null());
        }
        std::thread::sleep(Duration::from_millis(300));
        let count = agent
            .records()
            .iter()
            .filter(|r| r["process"]["pid"] == pid && r["kind"] == "network")
            .count();
        assert_eq!(count, 1, "{how} {target}: one record per connect");
    }
    assert_eq!(
        agent.metric(r#"credwatch_probe_attached{mode="cgroup_sock_addr",probe="cgroup_connect"}"#),
        1.0
    );
}

/// A real AWS SDK in a container: boto3 (PyPI) builds Secrets Manager's production host name
/// itself and resolves it through glibc; dnsmasq answers with an address in the namespace,
/// where moto's server (PyPI) serves the Secrets Manager API over TLS on 443. The record names
/// the host from the container's own DNS answer; a container whose footprint allows the
/// secret manager is `allowed`.
#[test]
fn boto3_calling_secrets_manager_is_named_and_judged() {
    let agent = setup();
    let python = credwatch_tests::python::env();
    let mut netns = Netns::create(&format!("cwb-{}", std::process::id()));
    netns.add_address("10.99.0.12");
    let moto = python.bin("moto_server");
    netns.spawn(&[
        moto.to_str().unwrap(),
        "-H",
        "10.99.0.12",
        "-p",
        "443",
        "--ssl",
    ]);
    netns.wait_listening("10.99.0.12", "443");
    netns.dns("secretsmanager.us-east-1.amazonaws.com", "10.99.0.12");
    // moto's certificate is self-signed, hence verify=False; everything else is the SDK's own.
    let script = "import boto3, urllib3\n\
                  urllib3.disable_warnings()\n\
                  sm = boto3.client('secretsmanager', region_name='us-east-1', verify=False)\n\
                  assert sm.meta.endpoint_url == 'https://secretsmanager.us-east-1.amazonaws.com'\n\
                  try:\n    sm.create_secret(Name='db', SecretString='not-a-real-secret')\n\
                  except sm.exceptions.ResourceExistsException:\n    pass\n\
                  sm.get_secret_value(SecretId='db')\n";
    let env = [
        "AWS_ACCESS_KEY_ID=testing",
        "AWS_SECRET_ACCESS_KEY=testing",
        "HOME=/root",
    ];
    let id = format!("cw-{}-boto3", std::process::id());
    netns
        .python_container(&id, script, &env)
        .run_to_completion();
    let record = network_record(agent, &id, "aws-secretsmanager");
    assert_eq!(
        record["network"]["hostname"], "secretsmanager.us-east-1.amazonaws.com",
        "{record:#}"
    );
    assert_eq!(record["network"]["address"], "10.99.0.12");
    assert_eq!(record["network"]["port"], 443);
    assert_eq!(record["network"]["source"], "connect");
    assert_eq!(record["secret"]["name"], "aws-secretsmanager");
    assert_eq!(record["verdict"], "undeclared");
    let exe = record["process"]["exe"].as_str().unwrap_or_default();
    assert!(exe.contains("python"), "{record:#}");

    let ok_id = format!("cw-{}-boto3ok", std::process::id());
    netns
        .python_container(&ok_id, script, &env)
        .run_to_completion();
    let allowed = network_record(agent, &ok_id, "aws-secretsmanager");
    assert_eq!(allowed["verdict"], "allowed", "{allowed:#}");
    assert_eq!(allowed["policy"]["name"], "fp-boto3-client");
    assert_eq!(
        allowed["network"]["hostname"],
        "secretsmanager.us-east-1.amazonaws.com"
    );
}

/// The metadata service answers the region as readily as the node's credentials: the request
/// decides. A container asking for its region and its instance id is counted, not recorded; the
/// same container asking for the role's credentials is recorded with the request line, however
/// the path is disguised; and a credential request behind a benign one on the same keep-alive
/// connection (as SDKs do: IMDSv2 token, then credentials) is still recorded.
#[test]
fn metadata_requests_are_judged_by_what_they_ask_for() {
    let agent = setup();
    assert_eq!(
        agent.metric(r#"credwatch_probe_attached{mode="cgroup_skb",probe="endpoint_request"}"#),
        1.0
    );
    let mut netns = Netns::create(&format!("cwm-{}", std::process::id()));
    let benign_before = endpoint_requests(agent, "instance-metadata", "false");

    let quiet = format!("cw-{}-imdsquiet", std::process::id());
    let script = "wget -q -O /dev/null http://169.254.169.254/latest/meta-data/placement/region; \
                  wget -q -O /dev/null http://169.254.169.254/latest/meta-data/instance-id; exit 0";
    netns.container(&quiet, script).run_to_completion();

    let thief = format!("cw-{}-imdsthief", std::process::id());
    let script = "wget -q -O /dev/null http://169.254.169.254/latest/meta-data/placement/region; \
                  wget -q -O /dev/null 'http://169.254.169.254//latest/./meta-data/%69am/security-credentials/web?x=1'; \
                  exit 0";
    netns.container(&thief, script).run_to_completion();
    let record = network_record(agent, &thief, "instance-metadata");
    assert_eq!(record["network"]["request"], "credential", "{record:#}");
    assert_eq!(record["network"]["http"]["method"], "GET");
    // Resolved as the server resolves it; the query string is never kept.
    assert_eq!(
        record["network"]["http"]["path"], "/latest/meta-data/iam/security-credentials/web",
        "{record:#}"
    );
    // The benign requests: counted, not recorded (the thief's region read included).
    assert!(endpoint_requests(agent, "instance-metadata", "false") >= benign_before + 3.0);
    std::thread::sleep(crate_request_wait());
    let records = |id: &str| -> Vec<Value> {
        agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == id)
            .collect()
    };
    assert_eq!(
        records(&quiet),
        Vec::<Value>::new(),
        "benign reads are not recorded"
    );
    assert_eq!(records(&thief).len(), 1, "{:#?}", records(&thief));

    // Keep-alive: an HTTP/1.1 server on IMDS's IPv6 address, one connection, two requests.
    let root = std::env::temp_dir().join(format!("credwatch-imds-{}", std::process::id()));
    let role = root.join("latest/meta-data/iam/security-credentials");
    std::fs::create_dir_all(&role).unwrap();
    std::fs::write(root.join("latest/meta-data/instance-id"), "i-0123").unwrap();
    std::fs::write(role.join("web"), "{}").unwrap();
    netns.add_address("fd00:ec2::254");
    netns.spawn(&[
        "python3",
        "-m",
        "http.server",
        "--protocol",
        "HTTP/1.1",
        "--directory",
        root.to_str().unwrap(),
        "--bind",
        "fd00:ec2::254",
        "80",
    ]);
    netns.wait_listening("fd00:ec2::254", "80");
    let sdk = format!("cw-{}-imdskeepalive", std::process::id());
    let script = "import http.client\n\
                  c = http.client.HTTPConnection('fd00:ec2::254', 80)\n\
                  ports = set()\n\
                  for path in ['/latest/meta-data/instance-id', '/latest/meta-data/iam/security-credentials/web']:\n\
                  \x20   c.request('GET', path)\n\
                  \x20   assert c.getresponse().read()\n\
                  \x20   ports.add(c.sock.getsockname()[1])\n\
                  assert len(ports) == 1, ports\n";
    netns
        .python_container(&sdk, script, &[])
        .run_to_completion();
    let record = network_record(agent, &sdk, "instance-metadata");
    assert_eq!(record["network"]["address"], "fd00:ec2::254", "{record:#}");
    assert_eq!(record["network"]["request"], "credential", "{record:#}");
    assert_eq!(
        record["network"]["http"]["path"],
        "/latest/meta-data/iam/security-credentials/web"
    );
    std::thread::sleep(crate_request_wait());
    assert_eq!(records(&sdk).len(), 1, "{:#?}", records(&sdk));
    let _ = std::fs::remove_dir_all(&root);
}

/// What cannot be shown to be a benign request is recorded as a credential access: binary
/// garbage on port 80, a request line longer than the kernel copies, a connection that sends
/// nothing. None of it stalls the agent.
#[test]
fn hostile_requests_to_the_metadata_service_are_recorded_safely() {
    let agent = setup();
    let netns = Netns::create(&format!("cwh-{}", std::process::id()));
    let id = format!("cw-{}-imdshostile", std::process::id());
    let script = "import socket, os\n\
                  def send(data):\n\
                  \x20   s = socket.create_connection(('169.254.169.254', 80))\n\
                  \x20   s.sendall(data)\n\
                  \x20   s.close()\n\
                  send(bytes([0x16, 3, 1, 2, 0]) + os.urandom(2000))\n\
                  send(b'GET /' + b'a' * 8192 + b' HTTP/1.1\\r\\n\\r\\n')\n\
                  send(b'')\n\
                  send(b'GET /2012-01-12/meta-data/iam/security-credentials/web HTTP/1.0\\r\\n\\r\\n')\n\
                  send(b'GET HTTP://h/latest/meta-data/iam/security-credentials/web HTTP/1.0\\r\\n\\r\\n')\n";
    netns.python_container(&id, script, &[]).run_to_completion();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut why: Vec<(String, String)> = loop {
        let why: Vec<(String, String)> = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == id.as_str())
            .map(|r| {
                let field = |v: &Value| v.as_str().unwrap_or("-").to_string();
                (
                    field(&r["network"]["request"]),
                    field(&r["network"]["http"]["path"]),
                )
            })
            .collect();
        if why.len() >= 5 || Instant::now() > deadline {
            break why;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    why.sort();
    let expected = [
        // A dated API version is the same credentials path.
        (
            "credential",
            "/2012-01-12/meta-data/iam/security-credentials/web",
        ),
        ("not_seen", "-"),
        ("unreadable", "-"),
        ("unreadable", "-"),
        // An absolute-form target a server might read differently (`HTTP://`).
        (
            "unreadable",
            "/HTTP:/h/latest/meta-data/iam/security-credentials/web",
        ),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(why, expected);
    assert!(endpoint_requests(agent, "instance-metadata", "unreadable") >= 3.0);
    // Still answering.
    assert!(
        agent
            .metrics()
            .contains("credwatch_endpoint_requests_total")
    );
}

/// A silent connection is recorded once the agent has waited this long for its request.
fn crate_request_wait() -> Duration {
    credwatch::pipeline::REQUEST_WAIT + Duration::from_millis(500)
}

/// The sum of `credwatch_unnamed_connects_total` for container `id`.
fn unnamed_connects(agent: &Agent, id: &str) -> f64 {
    let label = format!("container=\"{id}\"");
    agent
        .metrics()
        .lines()
        .filter(|l| l.starts_with("credwatch_unnamed_connects_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Connections to an address no DNS answer named (an `/etc/hosts` entry, a hard-coded address):
/// the TLS ClientHello's server name names the endpoint, also when the ClientHello arrives in
/// two segments. A server name outside the catalogue names no credential endpoint; a
/// ClientHello without one is counted as unnamed for its container.
#[test]
fn tls_server_names_name_endpoints_without_dns() {
    let agent = setup();
    let mut netns = Netns::create(&format!("cws-{}", std::process::id()));
    // (plain HTTP behind the port: only the ClientHello matters, the handshake may fail)
    netns.serve("10.99.0.13", "443");
    let client = |id: &str, server_name: &str, split: bool| {
        let name = if server_name.is_empty() {
            "None".to_string()
        } else {
            format!("'{server_name}'")
        };
        let script = format!(
            "import socket, ssl, time\n\
             ctx = ssl.create_default_context()\n\
             ctx.check_hostname = False\n\
             ctx.verify_mode = ssl.CERT_NONE\n\
             incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()\n\
             tls = ctx.wrap_bio(incoming, outgoing, server_hostname={name})\n\
             try:\n    tls.do_handshake()\nexcept ssl.SSLWantReadError:\n    pass\n\
             hello = outgoing.read()\n\
             s = socket.create_connection(('10.99.0.13', 443))\n\
             s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
             parts = [hello[:40], hello[40:]] if {split} else [hello]\n\
             for part in parts:\n    s.sendall(part)\n    time.sleep(0.3)\n\
             s.close()\n",
            split = if split { "True" } else { "False" }
        );
        netns.python_container(id, &script, &[]).run_to_completion();
    };
    let pid = std::process::id();
    let (named, split, other, nameless) = (
        format!("cw-{pid}-sni"),
        format!("cw-{pid}-snisplit"),
        format!("cw-{pid}-sniother"),
        format!("cw-{pid}-sninone"),
    );
    client(&named, "secretsmanager.us-east-1.amazonaws.com", false);
    client(&split, "SecretsManager.eu-west-1.amazonaws.com", true);
    client(&other, "www.example.com", false);
    client(&nameless, "", false);

    let record = network_record(agent, &named, "aws-secretsmanager");
    assert_eq!(
        record["network"]["sni"], "secretsmanager.us-east-1.amazonaws.com",
        "{record:#}"
    );
    assert_eq!(record["network"]["hostname"], record["network"]["sni"]);
    assert_eq!(record["network"]["address"], "10.99.0.13");
    assert_eq!(record["network"]["port"], 443);
    assert_eq!(record["verdict"], "undeclared");
    let record = network_record(agent, &split, "aws-secretsmanager");
    assert_eq!(
        record["network"]["sni"], "secretsmanager.eu-west-1.amazonaws.com",
        "{record:#}"
    );
    // Neither of the others is a credential access; the nameless one is counted as unnamed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while unnamed_connects(agent, &nameless) < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        unnamed_connects(agent, &nameless),
        1.0,
        "{}",
        agent.metrics()
    );
    assert_eq!(unnamed_connects(agent, &other), 0.0);
    assert_eq!(unnamed_connects(agent, &named), 0.0);
    for id in [&other, &nameless] {
        let records: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == id.as_str())
            .collect();
        assert!(records.is_empty(), "{records:#?}");
    }
}

/// A container answers itself with thousands of crafted DNS responses (UDP from port 53 on its
/// own loopback) for a catalogue host, each with a new address, to push other containers'
/// learned addresses out and to flood the ring buffer. Another container that resolved the
/// same host before keeps its address (its connect is still named), the attacker is reported
/// for both budgets it went over, and nothing is lost in the kernel.
#[test]
fn crafted_dns_answers_blind_no_other_container() {
    const ANSWERS: usize = 15_000;
    let agent = setup();
    let lost_before = agent.metric(r#"credwatch_events_lost_total{stage="kernel_ringbuf"}"#);
    let mut netns = Netns::create(&format!("cwv-{}", std::process::id()));
    netns.serve("10.99.0.13", "443");
    netns.dns("secretsmanager.us-east-1.amazonaws.com", "10.99.0.13");
    let victim_id = format!("cw-{}-dnsvictim", std::process::id());
    let victim = netns.container(&victim_id, "sleep 120");
    victim.start();
    let exec = |script: &str| {
        let out = Command::new("runc")
            .args(["exec", &victim_id, "/bin/sh", "-c", script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // (dnsmasq refuses the AAAA question: nslookup's exit status says nothing.)
    let answer = exec("nslookup secretsmanager.us-east-1.amazonaws.com 127.0.0.1");
    assert!(answer.contains("Address: 10.99.0.13"), "{answer}");

    let attacker_netns = Netns::create(&format!("cwa-{}", std::process::id()));
    let attacker_id = format!("cw-{}-dnsflood", std::process::id());
    let script = format!(
        "import socket, struct\n\
         name = b''.join(bytes([len(l)]) + l for l in b'secretsmanager.us-east-1.amazonaws.com'.split(b'.')) + b'\\0'\n\
         rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(('127.0.0.1', 5300))\n\
         tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); tx.bind(('127.0.0.1', 53))\n\
         for i in range({ANSWERS}):\n\
         \x20   header = struct.pack('>6H', i & 0xffff, 0x8180, 1, 1, 0, 0)\n\
         \x20   question = name + struct.pack('>2H', 1, 1)\n\
         \x20   answer = b'\\xc0\\x0c' + struct.pack('>2HIH', 1, 1, 3600, 4) + bytes([10, 98, i >> 8 & 255, i & 255])\n\
         \x20   tx.sendto(header + question + answer, ('127.0.0.1', 5300))\n\
         \x20   rx.recv(2048)\n"
    );
    attacker_netns
        .python_container(&attacker_id, &script, &[])
        .run_to_completion();

    // The attacker is named for each budget it went over, once for its learned addresses.
    let over = |budget: &str| {
        agent.wait_record(&format!("{attacker_id} over its {budget} budget"), |r| {
            r["container"]["id"] == attacker_id.as_str()
                && r["kind"] == "budget"
                && r["budget"]["budget"] == budget
        })
    };
    let learned = over("dns_learned");
    assert_eq!(learned["verdict"], "over_budget", "{learned:#}");
    assert_eq!(learned["budget"]["limit"], 256, "{learned:#}");
    let answers = over("dns_answers");
    assert!(
        answers["budget"]["found"].as_u64().unwrap() > 0,
        "{answers:#}"
    );
    let exceeded = |budget: &str| {
        agent.metric(&format!(
            "credwatch_budget_exceeded_total{{budget=\"{budget}\",container=\"{attacker_id}\",namespace=\"\",workload=\"{}\"}}",
            credwatch::containers::workload::off_kubernetes(Some(&attacker_id), None)
        ))
    };
    assert!(exceeded("dns_learned") >= 1.0, "{}", agent.metrics());
    assert!(exceeded("dns_answers") >= 1.0, "{}", agent.metrics());

    // The victim's address survived the flood: its connect is named by its own lookup.
    exec("wget -q -O /dev/null http://10.99.0.13:443/; true");
    let record = network_record(agent, &victim_id, "aws-secretsmanager");
    assert_eq!(
        record["network"]["hostname"], "secretsmanager.us-east-1.amazonaws.com",
        "{record:#}"
    );
    victim.stop();
    assert_eq!(
        agent.metric(r#"credwatch_events_lost_total{stage="kernel_ringbuf"}"#),
        lost_before,
        "nothing lost in the kernel"
    );
}

/// A container connects to the ECS credential endpoint 13,000 times as fast as it can, past its
/// record burst (10,000): every connect is a record or counted in a summary (`kind:
/// "network"`, `verdict: "suppressed"`), another container's metadata requests meanwhile are
/// each recorded, and nothing is lost in the kernel.
#[test]
fn a_connect_flood_is_summarised_and_blinds_no_one() {
    const CONNECTS: u64 = 13_000;
    const READS: u64 = 10;
    let agent = setup();
    let lost_before = agent.metric(r#"credwatch_events_lost_total{stage="kernel_ringbuf"}"#);
    let flood_ns = Netns::create(&format!("cwf-{}", std::process::id()));
    flood_ns.add_address("169.254.170.2");
    let flood_id = format!("cw-{}-connflood", std::process::id());
    let script = format!(
        "import socket\n\
         server = socket.socket()\n\
         server.bind(('169.254.170.2', 80))\n\
         server.listen(64)\n\
         for i in range({CONNECTS}):\n\
         \x20   c = socket.socket(); c.connect(('169.254.170.2', 80)); c.close()\n\
         \x20   a, _ = server.accept(); a.close()\n"
    );
    let flood = flood_ns.python_container(&flood_id, &script, &[]);
    let bystander_ns = Netns::create(&format!("cwg-{}", std::process::id()));
    let bystander_id = format!("cw-{}-connbystander", std::process::id());
    let reads = format!(
        "for i in $(seq {READS}); do wget -q -O /dev/null \
         http://169.254.169.254/latest/meta-data/iam/security-credentials/; sleep 0.2; done; true"
    );
    let bystander = bystander_ns.container(&bystander_id, &reads);
    std::thread::scope(|s| {
        s.spawn(|| flood.run_to_completion());
        s.spawn(|| bystander.run_to_completion());
    });

    let accesses = |id: &str| -> (u64, u64) {
        let mine: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["container"]["id"] == id && r["kind"] == "network")
            .collect();
        let summarised = mine
            .iter()
            .filter(|r| r["verdict"] == "suppressed")
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum::<u64>();
        (mine.len() as u64, summarised)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (records, summarised) = accesses(&flood_id);
        let summaries = agent
            .records()
            .iter()
            .filter(|r| r["container"]["id"] == flood_id.as_str() && r["verdict"] == "suppressed")
            .count() as u64;
        let total = records - summaries + summarised;
        if total == CONNECTS {
            assert!(summaries > 0 && summarised > 0, "the burst was spent");
            break;
        }
        assert!(
            total < CONNECTS && Instant::now() < deadline,
            "{total} of {CONNECTS} connects recorded or summarised ({summarised} in {summaries} summaries)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let summary = agent
        .find_record(|r| r["container"]["id"] == flood_id.as_str() && r["verdict"] == "suppressed")
        .unwrap();
    assert_eq!(
        summary["secret"]["name"], "ecs-task-credentials",
        "{summary:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while accesses(&bystander_id).0 < READS {
        assert!(
            Instant::now() < deadline,
            "{} of {READS} bystander requests recorded",
            accesses(&bystander_id).0
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and read: the flood filled its own share of the connections the agent waits on,
    // not the bystander's (each request judged a credential request, none recorded unread).
    let unread: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|r| r["container"]["id"] == bystander_id.as_str() && r["kind"] == "network")
        .filter(|r| r["network"]["request"] != "credential")
        .collect();
    assert!(unread.is_empty(), "{unread:#?}");
    let over_share = format!(
        "credwatch_budget_exceeded_total{{budget=\"inspected_connections\",container=\"{flood_id}\",namespace=\"\",workload=\"{}\"}}",
        credwatch::containers::workload::off_kubernetes(Some(&flood_id), None)
    );
    assert!(agent.metric(&over_share) > 0.0, "{}", agent.metrics());
    assert_eq!(
        agent.metric(r#"credwatch_events_lost_total{stage="kernel_ringbuf"}"#),
        lost_before,
        "nothing lost in the kernel"
    );
}

/// A container configured with `HTTPS_PROXY`/`HTTP_PROXY` (Python's urllib honours them) calls
/// Secrets Manager through the proxy (`CONNECT`) and asks the metadata service for the region
/// and for credentials through it (absolute-form `GET`). The proxy's address names nothing;
/// what each connection asks the proxy for does: records name the target and the proxy.
#[test]
fn calls_through_an_http_proxy_are_named_by_their_target() {
    let agent = setup();
    let mut netns = Netns::create(&format!("cwp-{}", std::process::id()));
    // A proxy double: http.server answers CONNECT with 501 and absolute-form GETs with 404,
    // after the request that names the target was sent.
    netns.serve("10.99.0.30", "3128");
    let id = format!("cw-{}-proxied", std::process::id());
    let script = "import time, urllib.request\n\
                  time.sleep(3)\n\
                  for url in ['https://secretsmanager.us-east-1.amazonaws.com/',\n\
                  \x20           'http://169.254.169.254/latest/meta-data/placement/region',\n\
                  \x20           'http://169.254.169.254/latest/meta-data/iam/security-credentials/']:\n\
                  \x20   try:\n\
                  \x20       urllib.request.urlopen(url, timeout=5).read()\n\
                  \x20   except Exception as e:\n\
                  \x20       print(url, e)\n";
    let env = [
        "HTTPS_PROXY=http://10.99.0.30:3128",
        "HTTP_PROXY=http://10.99.0.30:3128",
    ];
    netns
        .python_container(&id, script, &env)
        .run_to_completion();
    let sm = network_record(agent, &id, "aws-secretsmanager");
    assert_eq!(
        sm["network"]["address"], "secretsmanager.us-east-1.amazonaws.com",
        "{sm:#}"
    );
    assert_eq!(sm["network"]["port"], 443);
    assert_eq!(
        sm["network"]["hostname"],
        "secretsmanager.us-east-1.amazonaws.com"
    );
    assert_eq!(sm["network"]["proxy"]["address"], "10.99.0.30", "{sm:#}");
    assert_eq!(sm["network"]["proxy"]["port"], 3128);
    let imds = network_record(agent, &id, "instance-metadata");
    assert_eq!(imds["network"]["request"], "credential", "{imds:#}");
    assert_eq!(
        imds["network"]["http"]["path"],
        "/latest/meta-data/iam/security-credentials"
    );
    assert_eq!(imds["network"]["address"], "169.254.169.254");
    assert_eq!(imds["network"]["proxy"]["port"], 3128);
    // The region was asked for first: counted, never recorded.
    let recorded: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|r| r["container"]["id"] == id.as_str() && r["kind"] == "network")
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:#?}");

    // A request line written in two pieces is read as the proxy reads it.
    let split_id = format!("cw-{}-proxysplit", std::process::id());
    let client = "import socket, time\n\
                  time.sleep(3)\n\
                  s = socket.create_connection(('10.99.0.30', 3128), 5)\n\
                  s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
                  s.sendall(b'GET http://169.254.169.254/lat')\n\
                  time.sleep(0.3)\n\
                  s.sendall(b'est/meta-data/iam/security-credentials/web HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\\r\\n')\n\
                  s.recv(4096)\n";
    let env = ["HTTP_PROXY=http://10.99.0.30:3128"];
    netns
        .python_container(&split_id, client, &env)
        .run_to_completion();
    let split = network_record(agent, &split_id, "instance-metadata");
    assert_eq!(split["network"]["request"], "credential", "{split:#}");
    assert_eq!(
        split["network"]["http"]["path"],
        "/latest/meta-data/iam/security-credentials/web"
    );

    // A tunnel to a target nothing names (a front), with the real name in the TLS ClientHello
    // sent through it: the server name names it. The proxy double says yes to any CONNECT.
    let yes = "import socket\n\
               s = socket.socket(); s.bind(('10.99.0.31', 3129)); s.listen(16); kept = []\n\
               while True:\n\
               \x20   c, _ = s.accept(); c.recv(4096); kept.append(c)\n\
               \x20   c.sendall(b'HTTP/1.1 200 Connection established\\r\\n\\r\\n')\n";
    netns.add_address("10.99.0.31");
    netns.spawn(&["python3", "-c", yes]);
    netns.wait_listening("10.99.0.31", "3129");
    let fronted_id = format!("cw-{}-fronted", std::process::id());
    let client = "import socket, ssl, time\n\
                  time.sleep(3)\n\
                  s = socket.create_connection(('10.99.0.31', 3129), 5)\n\
                  s.sendall(b'CONNECT cdn.example.net:443 HTTP/1.1\\r\\nHost: cdn.example.net:443\\r\\n\\r\\n')\n\
                  s.recv(4096)\n\
                  try:\n\
                  \x20   ssl.create_default_context().wrap_socket(s, server_hostname='secretsmanager.eu-west-1.amazonaws.com')\n\
                  except Exception as e:\n\
                  \x20   print(e)\n";
    let env = ["HTTPS_PROXY=http://10.99.0.31:3129"];
    netns
        .python_container(&fronted_id, client, &env)
        .run_to_completion();
    let fronted = network_record(agent, &fronted_id, "aws-secretsmanager");
    assert_eq!(
        fronted["network"]["sni"], "secretsmanager.eu-west-1.amazonaws.com",
        "{fronted:#}"
    );
    assert_eq!(fronted["network"]["address"], "cdn.example.net");
    assert_eq!(
        fronted["network"]["hostname"],
        "secretsmanager.eu-west-1.amazonaws.com"
    );
    assert_eq!(fronted["network"]["proxy"]["address"], "10.99.0.31");
}

/// A connection whose first payloads are read is forgotten once its socket is released, also
/// when it never sent a byte (a refused connect sends no FIN): the egress program then lets
/// every packet through at once again (`credwatch_inspected_connections` back to 0). A
/// connect to a host-name endpoint's port (443) at an address nothing named is read for its
/// ClientHello.
#[test]
fn a_refused_connection_stops_being_read_when_its_socket_is_released() {
    let agent = setup();
    let gauge = "credwatch_inspected_connections ";
    assert!(agent.metrics().contains(gauge), "{}", agent.metrics());
    let wait_for = |what: &str, done: &dyn Fn(f64) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(agent.metric(gauge)) {
            assert!(Instant::now() < deadline, "{what}: {}", agent.metric(gauge));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // First, that such a connection is read at all: held open, it is counted.
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:443").ok();
        let held = std::net::TcpStream::connect("127.0.0.1:443").expect("connect to :443");
        wait_for("a held connection to :443 is never counted", &|n| n >= 1.0);
        drop((held, listener));
    }
    for _ in 0..3 {
        // Nothing listens on the loopback's 443 here: refused, or (should something listen)
        // connected and closed; either way the socket is released.
        let refused = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:443".parse().unwrap(),
            Duration::from_secs(2),
        );
        drop(refused);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.metric(gauge) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "still counted as read: {}",
            agent.metric(gauge)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
