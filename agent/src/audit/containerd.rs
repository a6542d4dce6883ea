//! Images on a node, read through containerd's API (images and content services): the same
//! blobs the runtime unpacked, streamed, nothing extracted and no registry asked.

use std::{
    collections::HashMap,
    io::{self, Read},
    path::Path,
    time::Duration,
};

use containerd_client::services::v1::{
    GetImageRequest, ListNamespacesRequest, ReadContentRequest, ReadContentResponse,
    content_client::ContentClient, images_client::ImagesClient,
    namespaces_client::NamespacesClient,
};
use tokio::runtime::Runtime;
use tonic::{Request, codec::Streaming, transport::Channel};

use super::image::{Descriptor, Incomplete};

pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
const TIMEOUT: Duration = Duration::from_secs(10);
/// Namespaces tried, in order, for a reference without one: Kubernetes' first.
const PREFERRED_NAMESPACES: [&str; 2] = ["k8s.io", "default"];

pub struct ContentStore {
    runtime: Runtime,
    channel: Channel,
    pub namespace: String,
    pub reference: String,
    pub target: Descriptor,
}

fn fail(what: impl std::fmt::Display) -> Incomplete {
    Incomplete(format!("containerd: {what}"))
}

fn in_namespace<T>(namespace: &str, message: T) -> Result<Request<T>, Incomplete> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "containerd-namespace",
        namespace
            .parse()
            .map_err(|_| fail(format!("bad namespace {namespace:?}")))?,
    );
    Ok(request)
}

impl ContentStore {
    /// `spec` is `[NAMESPACE/]REFERENCE` (what follows `containerd://`). A leading component
    /// that names an existing namespace is the namespace; otherwise the image is looked up in
    /// k8s.io, then default, then the other namespaces.
    pub fn open(spec: &str, socket: &Path) -> Result<ContentStore, Incomplete> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(fail)?;
        let channel = runtime
            .block_on(async {
                tokio::time::timeout(TIMEOUT, containerd_client::connect(socket)).await
            })
            .map_err(|_| fail(format!("{}: timed out", socket.display())))?
            .map_err(|e| fail(format!("{}: {e}", socket.display())))?;
        let namespaces: Vec<String> = runtime
            .block_on(NamespacesClient::new(channel.clone()).list(ListNamespacesRequest::default()))
            .map_err(|e| fail(format!("listing namespaces: {}", e.message())))?
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect();
        let (namespaces_to_try, reference) = match spec.split_once('/') {
            Some((first, rest)) if namespaces.iter().any(|n| n == first) => {
                (vec![first.to_string()], rest.to_string())
            }
            _ => {
                let mut order: Vec<String> = PREFERRED_NAMESPACES
                    .iter()
                    .map(|n| n.to_string())
                    .filter(|n| namespaces.contains(n))
                    .collect();
                let rest: Vec<String> = namespaces
                    .iter()
                    .filter(|n| !order.contains(n))
                    .cloned()
                    .collect();
                order.extend(rest);
                (order, spec.to_string())
            }
        };
        for namespace in namespaces_to_try {
            let request = in_namespace(
                &namespace,
                GetImageRequest {
                    name: reference.clone(),
                },
            )?;
            let found = runtime.block_on(ImagesClient::new(channel.clone()).get(request));
            let Ok(found) = found else { continue };
            let Some(target) = found.into_inner().image.and_then(|i| i.target) else {
                continue;
            };
            return Ok(ContentStore {
                runtime,
                channel,
                namespace,
                reference,
                target: Descriptor {
                    digest: target.digest,
                    platform: None,
                    annotations: target.annotations.into_iter().collect::<HashMap<_, _>>(),
                },
            });
        }
        Err(fail(format!(
            "no image {reference:?} in namespaces {namespaces:?}"
        )))
    }

    pub fn read(&self, digest: &str) -> Result<Box<dyn Read + Send + '_>, Incomplete> {
        let request = in_namespace(
            &self.namespace,
            ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
        )?;
        let stream = self
            .runtime
            .block_on(ContentClient::new(self.channel.clone()).read(request))
            .map_err(|e| fail(format!("{digest}: {}", e.message())))?
            .into_inner();
        Ok(Box::new(ContentReader {
            runtime: &self.runtime,
            stream,
            chunk: Vec::new(),
            position: 0,
        }))
    }
}

/// A blocking reader over the content service's stream of chunks.
struct ContentReader<'a> {
    runtime: &'a Runtime,
    stream: Streaming<ReadContentResponse>,
    chunk: Vec<u8>,
    position: usize,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.chunk.len() {
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(TIMEOUT, self.stream.message()).await })
                .map_err(|_| io::Error::other("containerd content read timed out"))?
                .map_err(|e| io::Error::other(e.message().to_string()))?;
            match next {
                Some(message) => {
                    self.chunk = message.data;
                    self.position = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.position);
        buf[..n].copy_from_slice(&self.chunk[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// The node's platform as OCI names it (linux/amd64, linux/arm64): the one containerd pulled.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}
