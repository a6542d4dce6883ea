//! The runtime's own APIs on the node's runtime socket: the containerd API (image and labels of
//! containers started with `ctr` or any containerd client) and the CRI (pod name, namespace, uid
//! and labels of Kubernetes pods). Queried on a worker thread, so the event loop never waits on
//! a socket; answers are collected with `answers()`.

use std::{collections::BTreeMap, path::PathBuf, sync::mpsc, time::Duration};

use containerd_client::services::v1::{GetContainerRequest, containers_client::ContainersClient};
use k8s_cri::v1::{
    ContainerFilter, ListContainersRequest, PodSandboxStatusRequest,
    runtime_service_client::RuntimeServiceClient,
};
use log::{debug, info, warn};
use tonic::{Request, transport::Channel};

use super::Pod;

/// Sockets tried when `--cri-socket` is not given.
pub const DEFAULT_SOCKETS: [&str; 2] =
    ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub cgroup_id: u64,
    pub container_id: String,
    /// containerd namespace; `k8s.io` containers are asked through the CRI.
    pub namespace: String,
    pub cri: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ApiAnswer {
    pub cgroup_id: u64,
    pub ok: bool,
    /// The runtime behind the socket that answered.
    pub runtime: Option<&'static str>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub pod: Option<Pod>,
}

pub struct RuntimeApi {
    requests: mpsc::Sender<ApiRequest>,
    answers: mpsc::Receiver<ApiAnswer>,
}

impl RuntimeApi {
    /// Starts the worker. Without `socket`, it connects to the first of `DEFAULT_SOCKETS` that
    /// exists when it is first needed (the runtime may start after the agent).
    pub fn start(socket: Option<PathBuf>) -> Option<Self> {
        match &socket {
            Some(s) => info!("runtime API: {}", s.display()),
            None => info!("runtime API: first of {DEFAULT_SOCKETS:?} that exists"),
        }
        let (requests, incoming) = mpsc::channel::<ApiRequest>();
        let (outgoing, answers) = mpsc::channel::<ApiAnswer>();
        std::thread::Builder::new()
            .name("runtime-api".into())
            .spawn(move || worker(socket, incoming, outgoing))
            .ok()?;
        Some(RuntimeApi { requests, answers })
    }

    pub fn request(&self, request: ApiRequest) {
        let _ = self.requests.send(request);
    }

    pub fn answers(&self) -> Vec<ApiAnswer> {
        self.answers.try_iter().collect()
    }
}

fn worker(
    socket: Option<PathBuf>,
    incoming: mpsc::Receiver<ApiRequest>,
    outgoing: mpsc::Sender<ApiAnswer>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut channel: Option<Channel> = None;
    for request in incoming {
        let answer = runtime.block_on(async {
            if channel.is_none()
                && let Some(path) = socket.clone().or_else(detect_socket)
            {
                channel = tokio::time::timeout(TIMEOUT, containerd_client::connect(&path))
                    .await
                    .ok()
                    .and_then(Result::ok);
                debug!(
                    "runtime API: connected to {}: {}",
                    path.display(),
                    channel.is_some()
                );
            }
            let runtime_name = socket
                .clone()
                .or_else(detect_socket)
                .map(|p| runtime_of(&p));
            let Some(ch) = channel.clone() else {
                return ApiAnswer {
                    cgroup_id: request.cgroup_id,
                    ..Default::default()
                };
            };
            let result = tokio::time::timeout(TIMEOUT, query(ch, &request)).await;
            match result {
                Ok(Ok(answer)) => ApiAnswer {
                    runtime: runtime_name,
                    ..answer
                },
                Ok(Err(err)) => {
                    debug!("runtime API: {}: {err}", request.container_id);
                    ApiAnswer {
                        cgroup_id: request.cgroup_id,
                        ..Default::default()
                    }
                }
                Err(_) => {
                    warn!("runtime API: {} timed out", request.container_id);
                    channel = None;
                    ApiAnswer {
                        cgroup_id: request.cgroup_id,
                        ..Default::default()
                    }
                }
            }
        });
        if outgoing.send(answer).is_err() {
            return;
        }
    }
}

/// "containerd" or "cri-o", from the socket's path.
fn runtime_of(socket: &std::path::Path) -> &'static str {
    if socket.to_string_lossy().contains("crio") {
        "cri-o"
    } else {
        "containerd"
    }
}

fn detect_socket() -> Option<PathBuf> {
    DEFAULT_SOCKETS
        .iter()
        .map(PathBuf::from)
        .find(|p: &PathBuf| p.exists())
}

async fn query(channel: Channel, request: &ApiRequest) -> Result<ApiAnswer, tonic::Status> {
    let mut answer = ApiAnswer {
        cgroup_id: request.cgroup_id,
        ok: true,
        ..Default::default()
    };
    if request.cri {
        let mut cri = RuntimeServiceClient::new(channel);
        let filter = ContainerFilter {
            id: request.container_id.clone(),
            ..Default::default()
        };
        let listed = cri
            .list_containers(ListContainersRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner();
        let Some(container) = listed.containers.into_iter().next() else {
            return Err(tonic::Status::not_found("container not listed by the CRI"));
        };
        answer.name = container.metadata.map(|m| m.name);
        answer.image = container
            .annotations
            .get("io.kubernetes.cri.image-name")
            .cloned()
            .or_else(|| container.image.map(|i| i.image));
        let status = cri
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: container.pod_sandbox_id,
                verbose: false,
            })
            .await?
            .into_inner();
        if let Some(sandbox) = status.status {
            let meta = sandbox.metadata.unwrap_or_default();
            answer.pod = Some(Pod {
                name: Some(meta.name),
                namespace: Some(meta.namespace),
                uid: Some(meta.uid),
                labels: sandbox.labels.into_iter().collect::<BTreeMap<_, _>>(),
            });
        }
    } else {
        let mut containers = ContainersClient::new(channel);
        let mut req = Request::new(GetContainerRequest {
            id: request.container_id.clone(),
        });
        req.metadata_mut().insert(
            "containerd-namespace",
            request
                .namespace
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("namespace"))?,
        );
        let container = containers.get(req).await?.into_inner().container;
        if let Some(c) = container {
            answer.image = (!c.image.is_empty()).then_some(c.image);
        }
    }
    Ok(answer)
}
